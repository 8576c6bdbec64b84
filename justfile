# Tessera recipes. The README's two commands are `./run serve` and `./run test`, which
# install what is missing (see ./run) and then call these.

set shell := ["bash", "-euo", "pipefail", "-c"]

guest_target := "wasm32-unknown-unknown"
wasm_out := "target/" + guest_target + "/release"
guest_dir := "target/guests"
python := ".venv/bin/python"
wasm_tools := ".venv/bin/wasm-tools"
# The runtime-only build an edge node runs (docs/EDGE.md): tessera-cli without its default features,
# so HTTP only (no gRPC, no trace exporter), no compiler (guests as .cwasm only), no onnxruntime.
runtime_only_features := "tract-patches"

# Every host crate (the server, its C API, the tests, the native builds of the guests, the
# bindings tool): all but the wasm32-only test guests and the bench load tool.
host_pkgs := "--workspace --exclude tessera-probe-rules --exclude tessera-probe-task --exclude tessera-probe-nn --exclude tessera-probe-wasi --exclude tessera-probe-preprocess --exclude tessera-loadgen"
# The guests the embedded default serves (config.rs, GuestsConfig::default), and the other Rust ones.
default_guest_pkgs := "-p tessera-preprocess -p tessera-postprocess -p tessera-rules-threshold"
guest_pkgs := default_guest_pkgs + " -p tessera-rules-rust -p tessera-probe-rules -p tessera-probe-task"
# `./run test` lints while it builds: clippy-driver compiles the workspace's own crates (lints,
# then code, in one pass; cargo still builds every dependency with plain rustc, and hashes our
# crates apart from plain builds, so the two coexist in target/). Seven `cargo clippy` passes in
# check mode re-checked wasmtime and tract per feature set; this costs the lints alone.
# CLIPPY_ARGS is what `cargo clippy -- -D warnings` hands clippy-driver. clippy-driver turns
# MIR optimizations off for what it compiles (LLVM still optimizes at -O3): the tests run that
# build; benchmarks and `serve` use the plain one.
lint_env := "RUSTC_WORKSPACE_WRAPPER=clippy-driver CLIPPY_ARGS=-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"

default:
    @just --list

# `./run test` installs the pip, npm and apt packages beside the first builds (TESSERA_SETUP_STATUS
# names the file its installer writes its exit status to when done); this waits for them.
[private]
setup-wait:
    #!/usr/bin/env bash
    set -euo pipefail
    status=${TESSERA_SETUP_STATUS:-}
    [ -n "$status" ] || exit 0
    until [ -f "$status" ]; do sleep 1; done
    exit "$(cat "$status")"

# The guests the embedded default serves, into target/guests/ (what `serve` needs): the
# classification pipeline's three and the detection task.
guests-default: (guests-rust default_guest_pkgs) guests-tasks

# Build every guest component (production guests and test fixtures) into target/guests/.
guests: (guests-rust guest_pkgs) guests-tasks guests-task-probes guests-wasi guests-polyglot

# Task guests (`world task`), built apart from the preprocess guest whose code they use as a
# library: in one cargo build its `component` feature would be on for them too, and a task
# would export `preprocess` beside its own `run`.
[private]
guests-tasks:
    cargo build --release --target {{guest_target}} -p tessera-task-classify -p tessera-task-detect -p tessera-images
    mkdir -p {{guest_dir}}
    for name in task_classify task_detect images; do \
      {{wasm_tools}} component new {{wasm_out}}/tessera_$name.wasm -o {{guest_dir}}/${name//_/-}.wasm; \
    done

# The task probes that use the preprocess code as a library (test fixtures; same features as
# guests-tasks, so nothing is compiled twice).
[private]
guests-task-probes:
    cargo build --release --target {{guest_target}} -p tessera-probe-nn
    mkdir -p {{guest_dir}}
    {{wasm_tools}} component new {{wasm_out}}/tessera_probe_nn.wasm -o {{guest_dir}}/probe-nn.wasm

# Rust guests for wasm32-unknown-unknown, each made a component by wasm-tools.
[private]
guests-rust PKGS:
    cargo build --release --target {{guest_target}} {{PKGS}}
    mkdir -p {{guest_dir}}
    for pkg in {{PKGS}}; do \
      [ "$pkg" = -p ] && continue; name=${pkg#tessera-}; \
      {{wasm_tools}} component new {{wasm_out}}/${pkg//-/_}.wasm -o {{guest_dir}}/$name.wasm; \
    done

# Guests whose standard library imports WASI, as other languages' runtimes do (a rules probe and
# a preprocess probe): wasm32-wasip2 builds a component directly.
[private]
guests-wasi:
    cargo build --release --target wasm32-wasip2 -p tessera-probe-wasi -p tessera-probe-preprocess
    mkdir -p {{guest_dir}}
    cp target/wasm32-wasip2/release/tessera_probe_wasi.wasm {{guest_dir}}/probe-wasi.wasm
    cp target/wasm32-wasip2/release/tessera_probe_preprocess.wasm {{guest_dir}}/probe-preprocess.wasm

# The reference rule set in other languages (guests/conformance/RULES.md), each with its own
# toolchain, pinned in the project's files (requirements.txt, guests/rules-js/package-lock.json,
# Debian packages in ./run). Each guest rebuilds only when its sources, the WIT or its tool's pin
# changed.
[private]
guests-polyglot: guests-scripted guests-c-go

# Python and JavaScript: an interpreter pre-initialised by wizer (20-30 s a guest), no cargo.
[private]
guests-scripted:
    #!/usr/bin/env bash
    set -euo pipefail
    stale() { local out=$1; shift; [ ! -f "$out" ] || [ -n "$(find "$@" -type f -newer "$out" -not -path '*/node_modules/*' -not -name '*.pyc' | head -1)" ]; }
    out={{guest_dir}}
    mkdir -p $out target/guest-build
    if stale $out/rules-python.wasm guests/rules-python wit requirements.txt; then
      componentize-py -d wit -w rules componentize app -p guests/rules-python -o $out/rules-python.wasm >/dev/null
      echo "built $out/rules-python.wasm"
    fi
    if stale $out/probe-python.wasm tests/guests/probe-python wit requirements.txt; then
      componentize-py -d wit -w rules componentize app -p tests/guests/probe-python -o $out/probe-python.wasm >/dev/null
      echo "built $out/probe-python.wasm"
    fi
    # The Python detection task, composed with the Rust image code (guests-tasks' images.wasm).
    if stale $out/task-detect-python.wasm guests/task-detect-python $out/images.wasm wit requirements.txt; then
      componentize-py -d wit -w task-with-images componentize app -p guests/task-detect-python \
        -o target/guest-build/task-detect-python.wasm >/dev/null
      {{wasm_tools}} compose target/guest-build/task-detect-python.wasm -d $out/images.wasm -o $out/task-detect-python.wasm
      echo "built $out/task-detect-python.wasm"
    fi
    if stale $out/rules-js.wasm guests/rules-js/rules.js guests/rules-js/package-lock.json wit; then
      guests/rules-js/node_modules/.bin/componentize-js guests/rules-js/rules.js --wit wit --world-name rules -o $out/rules-js.wasm
      echo "built $out/rules-js.wasm"
    fi
    if stale $out/probe-js.wasm tests/guests/probe-js guests/rules-js/package-lock.json wit; then
      guests/rules-js/node_modules/.bin/componentize-js tests/guests/probe-js/probe.js --wit wit --world-name rules -o $out/probe-js.wasm
      echo "built $out/probe-js.wasm"
    fi

# C and Go: bindings from wit-bindgen's generators, a preview1 core module, then a component
# through wasmtime's preview1 reactor adapter (all from crates through tessera-bindgen).
[private]
guests-c-go:
    #!/usr/bin/env bash
    set -euo pipefail
    stale() { local out=$1; shift; [ ! -f "$out" ] || [ -n "$(find "$@" -type f -newer "$out" -not -path '*/node_modules/*' -not -name '*.pyc' | head -1)" ]; }
    out={{guest_dir}}
    work=target/guest-build
    mkdir -p $out
    if stale $out/rules-c.wasm guests/rules-c wit guests/bindgen || stale $out/probe-c.wasm tests/guests/probe-c wit guests/bindgen \
        || stale $out/rules-go.wasm guests/rules-go wit guests/bindgen requirements.txt \
        || stale $out/probe-go.wasm tests/guests/probe-go wit guests/bindgen requirements.txt; then
      # Built with the whole host workspace's features (not `-p tessera-bindgen` alone, whose
      # own smaller set would compile the crates it shares with wasmtime a second time).
      cargo build --release --quiet {{host_pkgs}} --bin tessera-bindgen
      rm -rf $work && mkdir -p $work
      target/release/tessera-bindgen adapter $work/wasi_snapshot_preview1.reactor.wasm
      # wit-bindgen's generated C is not ours to lint; our file builds with every warning an error.
      target/release/tessera-bindgen c wit rules $work/c
      clang --target=wasm32-wasi -O2 -Wall -Wextra -Werror -I $work/c -c guests/rules-c/decide.c -o $work/c/decide.o
      clang --target=wasm32-wasi -O2 -c $work/c/rules.c -o $work/c/bindings.o
      clang --target=wasm32-wasi -mexec-model=reactor -o $work/rules-c.core.wasm \
        $work/c/decide.o $work/c/bindings.o $work/c/rules_component_type.o
      {{wasm_tools}} component new $work/rules-c.core.wasm --adapt $work/wasi_snapshot_preview1.reactor.wasm -o $out/rules-c.wasm
      echo "built $out/rules-c.wasm"
      clang --target=wasm32-wasi -O2 -Wall -Wextra -Werror -I $work/c -c tests/guests/probe-c/probe.c -o $work/c/probe.o
      clang --target=wasm32-wasi -mexec-model=reactor -o $work/probe-c.core.wasm \
        $work/c/probe.o $work/c/bindings.o $work/c/rules_component_type.o
      {{wasm_tools}} component new $work/probe-c.core.wasm --adapt $work/wasi_snapshot_preview1.reactor.wasm -o $out/probe-c.wasm
      echo "built $out/probe-c.wasm"
      # Go: the generated module around our package; go.bytecodealliance.org/pkg, which no
      # reachable proxy serves, from the copy inside the wit-bindgen-go crate. The pkg reaches
      # runtime.sbrk through go:linkname, which Go >= 1.23 refuses unless -checklinkname=0.
      # The hostile probe (tests/guests/probe-go) is built the same way, beside it.
      pkg=$(cargo metadata --format-version 1 --locked | {{python}} -c 'import json, sys, os; print(next(os.path.dirname(p["manifest_path"]) for p in json.load(sys.stdin)["packages"] if p["name"] == "wit-bindgen-go") + "/src/pkg")')
      for guest in rules-go:guests/rules-go probe-go:tests/guests/probe-go; do
        name=${guest%%:*} src=${guest#*:}
        target/release/tessera-bindgen go wit rules $work/$name
        cp -r $src/. $work/$name/
        printf '\nreplace go.bytecodealliance.org/pkg => %s\n' "$pkg" >> $work/$name/go.mod
        (cd $work/$name && GOOS=wasip1 GOARCH=wasm GOPROXY=off GOFLAGS=-mod=mod GOTOOLCHAIN=local \
          GOCACHE=$PWD/../go-cache GOPATH=$PWD/../go-path go build -buildmode=c-shared -ldflags=-checklinkname=0 -o ../$name.core.wasm .)
        {{wasm_tools}} component embed wit --world rules $work/$name.core.wasm -o $work/$name.embed.wasm
        {{wasm_tools}} component new $work/$name.embed.wasm --adapt $work/wasi_snapshot_preview1.reactor.wasm -o $out/$name.wasm
        echo "built $out/$name.wasm"
      done
    fi

# Build the host binary and every test/bench target (release: the one profile this workspace
# uses). Building all targets of the workspace at once gives the binary the same feature
# resolution `cargo test` uses, so the tests reuse these artifacts instead of rebuilding them.
build: guests
    cargo build --release {{host_pkgs}} --all-targets

# The runtime-only server, built beside the full one (same profile and target dir: only wasmtime's
# crates and tessera are built twice, see host/Cargo.toml) and kept as
# target/release/tessera-runtime-only. The last build puts the full binary back at
# target/release/tessera; nothing is rebuilt for that.
runtime-only: build
    cargo build --release -p tessera-cli --no-default-features --features {{runtime_only_features}}
    cp target/release/tessera target/release/tessera-runtime-only
    cargo build --release -p tessera-cli --bin tessera

# Footprint of the edge builds side by side (docs/EDGE.md; never in CI): stripped size, start to
# ready with .cwasm guests, peak RSS serving ResNet-18 int8. The `edge` profile (LTO, size) is
# built only here, into target/edge/.
edge-check: runtime-only models && edge-aarch64
    cargo build --profile edge -p tessera-cli --no-default-features --features {{runtime_only_features}}
    {{python}} bench/edge/check.py

# What the small guest pool (a 39-bit address space's) costs guest code, served A/B against the
# default (docs/EDGE.md).
edge-pool: build
    {{python}} bench/edge/pool.py

# The runtime-only server cross-built for aarch64 and run under qemu-user against the x86_64 build
# (docs/EDGE.md, "aarch64"; never in CI): classify and logits on both, our tract unit tests under
# qemu. `./run edge-aarch64` installs the cross gcc, the rustup target and qemu-user 10.
edge-aarch64: build
    cargo build --release --target aarch64-unknown-linux-gnu -p tessera-cli --no-default-features --features {{runtime_only_features}}
    # The code behind `cfg(not(target_arch = "x86_64"))` is linted nowhere else.
    cargo clippy --release --target aarch64-unknown-linux-gnu -p tessera -p tessera-server -p tessera-cli --no-default-features --features tessera-cli/{{runtime_only_features}} --lib --bins --tests -- -D warnings
    {{python}} bench/edge/aarch64.py

# Builds only what serving needs: the three default guests and the `tessera` binary.
# Serve the repository's models with the default guests (flags pass through, e.g. --addr).
serve *ARGS: guests-default
    cargo build --release -p tessera-cli --bin tessera
    target/release/tessera serve {{ARGS}}

# Every crate of ours is built once per feature set that ships, linted while it builds (lint_env):
# the host workspace with all its targets, the runtime-only server, the library alone and the C API
# without the compiler (one build: capi builds the library with those features), the wasm32 guests
# and the wasip2 probe. The Python and JavaScript guests build beside the host. Each host build
# lists its units in target/build-units/; tests/tools/build_units.py fails when one of them
# compiled a dependency the full build already has (see host/Cargo.toml).
# Every check: formatting, the import picture (tests/tools/imports.py), the library's
# dependencies (no HTTP, gRPC or CLI crate), lints, unit and end-to-end tests (the e2e tests run
# the release binary).
test:
    #!/usr/bin/env bash
    set -euo pipefail
    export {{lint_env}}
    step() { printf '\n== %s  [%s]\n' "$1" "$(date +%T)"; }
    step fmt
    cargo fmt --all -- --check
    step "imports: no circle, no arrow back up (ARCHITECTURE.md's layers)"
    {{python}} tests/tools/imports.py host/src ARCHITECTURE.md
    {{python}} tests/tools/imports.py server/src ARCHITECTURE.md --block "layers server"
    step "the library depends on no server crate"
    server_crates='^(hyper|hyper-util|http|http-body|http-body-util|tonic|tonic-[a-z]+|multer|tower|opentelemetry[a-z_-]*|tracing-subscriber|tracing-opentelemetry|clap|tikv-jemallocator) v'
    # Listed first, so that a failing `cargo tree` (a lock file out of date) fails the step
    # rather than leaving grep nothing to find.
    deps=$(cargo tree --locked -p tessera -e normal,build --prefix none --format '{p}')
    if sort -u <<< "$deps" | grep -E "$server_crates"; then
      echo "the tessera library depends on the crates above: they belong to tessera-server or tessera-cli"; exit 1
    fi
    step "wasm32 guests"
    just guests-rust "{{guest_pkgs}}"
    just guests-tasks
    just guests-task-probes
    just guests-wasi
    step "waiting for ./run's installs"
    just setup-wait
    gofmt="$(go env GOROOT)/bin/gofmt"; test -z "$($gofmt -l guests/rules-go tests/guests/probe-go)" || { $gofmt -d guests/rules-go tests/guests/probe-go; exit 1; }
    step "python and javascript guests (in the background)"
    mkdir -p target/build-units
    just guests-scripted > target/build-units/guests-scripted.log 2>&1 &
    scripted=$!
    step "host workspace, all targets"
    units=target/build-units
    cargo build --release {{host_pkgs}} --all-targets --message-format=json-render-diagnostics > $units/full.jsonl
    step "c and go guests"
    just guests-c-go
    step "runtime-only server"
    cargo build --release -p tessera-cli --no-default-features --features {{runtime_only_features}} \
      --message-format=json-render-diagnostics > $units/runtime-only.jsonl
    cp target/release/tessera target/release/tessera-runtime-only
    step "library alone and C API without the compiler"
    cargo build --release -p tessera-capi --no-default-features --features tract-patches \
      --message-format=json-render-diagnostics > $units/capi.jsonl
    step "serve's binary"
    cargo build --release -p tessera-cli --bin tessera --message-format=json-render-diagnostics > $units/serve.jsonl
    step "one build of each dependency"
    # wasmtime's crates are built again without Cranelift on purpose; tessera's own per feature set.
    {{python}} tests/tools/build_units.py $units/full.jsonl \
      runtime-only=$units/runtime-only.jsonl:wasmtime,pulley-interpreter,tessera \
      capi-without-compiler=$units/capi.jsonl:wasmtime,pulley-interpreter,tessera \
      serve=$units/serve.jsonl
    # The builds above left their tessera and libtessera_capi.so in target/release/; the full
    # build, all fresh, puts its own back for the tests.
    cargo build --release --quiet {{host_pkgs}} --all-targets
    if ! wait $scripted; then cat $units/guests-scripted.log; exit 1; fi
    cat $units/guests-scripted.log
    step "tests"
    cargo test --release {{host_pkgs}}
    # Our patched jpeg-decoder (third_party/, not a workspace member) against upstream's decoder.
    env -u RUSTC_WORKSPACE_WRAPPER -u CLIPPY_ARGS \
      cargo test --release --manifest-path third_party/jpeg-decoder/Cargo.toml --no-default-features --target-dir target --lib
    step done

# Seeded torchvision-architecture ResNet-18/50 graphs for benchmarks (not committed; see
# models/tools/make_resnet.py). They land in build/models/<arch>/1/model.onnx.
# Seeded ResNet-18/50 and MobileNetV2 (the depthwise model), fp32, int8 for tract (QOperator) and
# int8 for onnxruntime (QDQ), for the engine benchmark (not committed).
# Random calibration and --speed-only: seeded weights have no accuracy to keep (no int8 graph of
# them passes quantize.py's 99 % agreement gate); accuracy is tested on the trained model.
models:
    for arch in resnet18 resnet50 mobilenetv2; do \
      [ -f build/models/$arch/1/model.onnx ] || {{python}} models/tools/make_resnet.py --arch $arch --out build/models/$arch/1/model.onnx; \
      [ -f build/models/$arch-int8/1/model.onnx ] || {{python}} models/tools/quantize.py --model build/models/$arch/1/model.onnx \
        --out build/models/$arch-int8/1/model.onnx --calibration random --count 16 --speed-only; \
      [ -f build/models/$arch-qdq/1/model.onnx ] || {{python}} models/tools/quantize.py --model build/models/$arch/1/model.onnx \
        --out build/models/$arch-qdq/1/model.onnx --format qdq --calibration random --count 16 --speed-only; \
    done
    # The default model's QDQ graph (onnxruntime's int8), under the accuracy gate: it is trained.
    [ -f build/models/shapes-qdq/1/model.onnx ] || {{python}} models/tools/quantize.py --model models/shapes/1/model.onnx \
      --out build/models/shapes-qdq/1/model.onnx --format qdq --calibration shapes

# Re-make the committed int8 default model (models/shapes-int8) from models/shapes.
quantize: build
    {{python}} models/tools/quantize.py --model models/shapes/1/model.onnx --out models/shapes-int8/1/model.onnx \
      --calibration shapes --held-out 504

# Every engine (tract fp32/int8, Tessera's onnxruntime fp32/int8) against Python onnxruntime on the
# default model, seeded ResNet-18/50 and MobileNetV2, both modes; see docs/PERFORMANCE.md.
# `BENCH_MODELS=mobilenetv2 just bench-engine` runs one model.
bench-engine: build models
    cargo bench --profile release {{host_pkgs}} --bench engine

# The preprocess guest on photo-sized JPEGs: WASM vs native vs Pillow (full and draft), and the
# slow-thread check; see docs/PERFORMANCE.md.
bench-photos: build
    cargo bench --profile release {{host_pkgs}} --bench photos

# Tessera against the seed's Python service (PyTorch eager and onnxruntime) through the real
# binaries, one load shape for all; writes docs/bench-peers/. Never in CI: ~25 min plus the first
# PyTorch download (--quick: ~5 min; --no-torch skips the ~5.6 GB PyTorch wheel and its peer).
# See docs/PERFORMANCE.md.
bench-peers *ARGS: build models
    cargo build --release -p tessera-loadgen
    bench/peers/venv.sh build/venv-peers bench/peers/requirements.txt
    case " {{ARGS}} " in *" --no-torch "*) ;; *) bench/peers/venv.sh build/venv-torch bench/peers/requirements-torch.txt ;; esac
    build/venv-peers/bin/python bench/peers/run.py {{ARGS}}

# What a request costs over each protocol (HTTP, gRPC, OIP REST) through one server on the default model,
# alternated in rounds (ROUNDS=3, DUR=8 s per cell); see docs/PERFORMANCE.md.
bench-protocols: build
    cargo build --release -p tessera-loadgen
    {{python}} bench/protocols.py

# This build's server against BASELINE (another tessera binary, e.g. built from the commit before a
# refactor): the served default model over HTTP, c=1 and c=4, alternated (bench/ab.py; ROUNDS=5,
# DUR=8). Not `build`: the A/B needs only the binary and the load generator.
bench-ab BASELINE:
    cargo build --release -p tessera-cli --bin tessera
    cargo build --release -p tessera-loadgen
    BASELINE={{BASELINE}} {{python}} bench/ab.py

# What exporting traces costs a request: one server exporting every span over OTLP to a
# collector in the script, one not, alternated (bench/telemetry.py; see docs/PERFORMANCE.md).
bench-telemetry: build
    cargo build --release -p tessera-loadgen
    {{python}} bench/telemetry.py

# The reference rules in each language through the real binary, side by side with the Rust one:
# component size, compile time, .cwasm load, warm instantiate and call, share of a request
# (bench/guests.py; ROUNDS=3, N=200 requests per server); see docs/PERFORMANCE.md.
bench-guests: build
    {{python}} bench/guests.py

# What the task world costs: the default classification as one task guest vs /v1/classify on one
# server, alternated (bench/tasks.py; docs/PERFORMANCE.md).
bench-tasks: build
    cargo build --release -p tessera-loadgen
    {{python}} bench/tasks.py

# The detection task (the embedded default's `detect`) against the same detector in a Python
# service (FastAPI, Pillow, onnxruntime, numpy post-processing), alternated (bench/detect.py;
# docs/PERFORMANCE.md, "Detection").
bench-detect: build
    cargo build --release -p tessera-loadgen
    bench/peers/venv.sh build/venv-peers bench/peers/requirements.txt
    {{python}} bench/detect.py

# Whether hostile guests leave the server slower: normal requests after every language's probes
# against a server that never saw them, alternated (bench/hostile.py; docs/PERFORMANCE.md).
bench-hostile: build
    {{python}} bench/hostile.py

# Retrain the default model (needs torch: pip install -r models/tools/requirements-train.txt).
train *ARGS: build
    {{python}} models/tools/train.py {{ARGS}}

# Retrain the detector models/shapes-detect (torch as for `train`; ~10 min on 2 cores: 10 epochs
# of ~52 s on an AMD EPYC, plus generating 4,400 scenes).
train-detect *ARGS:
    {{python}} models/tools/train_detect.py {{ARGS}}

# Benchmarks (criterion) and the HTTP load test; see docs/PERFORMANCE.md.
bench: build
    command -v hey >/dev/null || (apt-get update -qq && apt-get install -y -qq hey)
    cargo bench --profile release {{host_pkgs}} --bench pipeline

# Fuzz what Tessera parses from untrusted input (never in CI): the preprocess crate's decode
# (native), the HTTP request path, OIP REST and gRPC messages, the seed's gRPC message, the TOML
# files. Each TARGET runs SECONDS (default 600) on the pinned nightly, from its committed corpus
# in fuzz/corpus/<target>/ (new inputs land in target/fuzz-corpus/, crashes in
# fuzz/artifacts/); `./run test` replays the committed corpus on stable.
fuzz_toolchain := "nightly-2026-05-20"
fuzz_targets := "decode http_request oip_rest oip_grpc tessera_grpc config_files"

fuzz TARGETS=fuzz_targets SECONDS="600":
    rustup toolchain list | grep -q '^{{fuzz_toolchain}}' || rustup toolchain install {{fuzz_toolchain}} --profile minimal
    [ -x target/tools/bin/cargo-fuzz ] || cargo install --locked cargo-fuzz@0.13.2 --root target/tools
    for t in {{TARGETS}}; do \
      features=$([ "$t" = decode ] || echo "--features host"); \
      mkdir -p target/fuzz-corpus/$t; \
      PATH="$PWD/target/tools/bin:$PATH" cargo +{{fuzz_toolchain}} fuzz run $features --target-dir target/fuzz $t \
        target/fuzz-corpus/$t fuzz/corpus/$t -- -max_total_time={{SECONDS}} -timeout=10 -rss_limit_mb=4096 -print_final_stats=1; \
    done

# The server past its capacity, open loop: the excess refused fast, the admitted on time
# (bench/reliability/overload.py; docs/RELIABILITY.md). Never in CI.
overload *ARGS: build
    cargo build --release -p tessera-loadgen
    {{python}} bench/reliability/overload.py {{ARGS}}

# 30 minutes (or --minutes N) at 70 % of capacity with mixed good and bad inputs, a trapping
# rules guest, a model version added and one removed and a guest replaced every cycle
# (bench/reliability/soak.py; docs/RELIABILITY.md). Never in CI.
soak *ARGS: build
    cargo build --release -p tessera-loadgen
    {{python}} bench/reliability/soak.py {{ARGS}}
