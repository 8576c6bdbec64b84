#!/usr/bin/env python3
"""`just bench-ab BASELINE`: the served default model, this build against another `tessera` binary
(BASELINE: an older build, e.g. one compiled from the commit before a refactor), A/B. Both serve
HTTP only (`--grpc-addr off --admin-addr off --no-watch`, flags every version since issue 10
has), and `tessera-loadgen` loads them in alternation, the order flipped every round, so the
machine's drift hits both alike: ROUNDS rounds (5) of c = 1 and c = 4, DUR seconds (8) per cell,
`/v1/classify` with one PNG of the default model's test set. Prints every cell and, per
concurrency, the after/before ratios of each round and their medians. SERVE_ARGS adds arguments
to both servers' `serve` (e.g. `--rule target/guests/rules-python.wasm`).
"""
import json
import os
import subprocess
import sys

from protocols import IMAGE, ROOT, ensure_image, ratios_text, run_header, wait_ready

ROUNDS = int(os.environ.get("ROUNDS", "5"))
DUR = os.environ.get("DUR", "8")


def serve(binary: str) -> tuple[subprocess.Popen, str]:
    argv = [binary, "serve", "--addr", "127.0.0.1:0", "--grpc-addr", "off", "--admin-addr", "off", "--no-watch",
            *os.environ.get("SERVE_ARGS", "").split()]
    s = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    http = s.stdout.readline().strip().removeprefix("tessera listening on ")
    wait_ready(http)
    return s, http


def main() -> None:
    ensure_image()
    print(run_header(f"BASELINE={os.environ['BASELINE']} just bench-ab"), flush=True)
    servers = {"after": serve(str(ROOT / "target/release/tessera")), "before": serve(os.environ["BASELINE"])}
    ratios = {}
    try:
        for rnd in range(1, ROUNDS + 1):
            for c in (1, 4):
                cells = {}
                order = list(servers.items()) if rnd % 2 else list(reversed(servers.items()))
                for name, (server, http) in order:
                    out = subprocess.run([str(ROOT / "target/release/tessera-loadgen"), "--url", f"{http}/v1/classify", "--image", str(IMAGE),
                                          "--duration-s", DUR, "--warmup-s", "1", "--server-pid", str(server.pid), "--label", name,
                                          "--concurrency", str(c)], capture_output=True, text=True, check=True)
                    cells[name] = cell = json.loads(out.stdout)
                    print(f"round {rnd} c={c} {name:<6}: {cell['rps']:6.1f} rps  p50 {cell['p50_ms']:5.2f} ms  p99 {cell['p99_ms']:5.1f} ms  errors {sum(cell['errors'].values())}", flush=True)
                r = ratios.setdefault(c, {"rps": [], "p50": []})
                r["rps"].append(cells["after"]["rps"] / cells["before"]["rps"])
                r["p50"].append(cells["after"]["p50_ms"] / cells["before"]["p50_ms"])
        for c, r in ratios.items():
            print(f"after/before c={c}: " + ratios_text(r))
    finally:
        for s, _ in servers.values():
            s.terminate()
            s.wait()


if __name__ == "__main__":
    sys.exit(main())
