#!/usr/bin/env python3
"""`just bench-tasks`: what the task world itself costs. One server serves the default model two
ways: `/v1/classify` (the preprocess guest, the model, the postprocess guest; no rules, so that
both do the same work) and `/v1/tasks/classify` (`guests/task-classify`: the same decoding code,
the same model through `engines.run`, softmax and top-k, in one guest). `tessera-loadgen` loads
them in alternation, the order flipped every round: ROUNDS rounds (5) of c = 1 and c = 4, DUR
seconds (8) per cell, one PNG of the default model's test set. Prints every cell and, per
concurrency, the task/pipeline ratios of each round and their medians.
"""
import json
import os
import subprocess
import sys

from protocols import IMAGE, ROOT, ensure_image, ratios_text, run_header, wait_ready

ROUNDS = int(os.environ.get("ROUNDS", "5"))
DUR = os.environ.get("DUR", "8")
OUT = ROOT / "target/bench-tasks"


def main() -> None:
    ensure_image()
    print(run_header("just bench-tasks"), flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    guests = ROOT / "target/guests"
    config = OUT / "tessera.toml"
    config.write_text(f"models_dir = {json.dumps(str(ROOT / 'models'))}\n[guests]\n"
                      f"preprocess = {json.dumps(str(guests / 'preprocess.wasm'))}\n"
                      f"postprocess = {json.dumps(str(guests / 'postprocess.wasm'))}\nrules = []\n"
                      f"[tasks.classify]\npath = {json.dumps(str(guests / 'task-classify.wasm'))}\nmodels = [\"shapes\"]\n")
    server = subprocess.Popen([str(ROOT / "target/release/tessera"), "--config", str(config), "serve", "--addr",
                               "127.0.0.1:0", "--grpc-addr", "off", "--admin-addr", "off", "--no-watch"],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    http = server.stdout.readline().strip().removeprefix("tessera listening on ")
    wait_ready(http)
    paths = {"pipeline": "/v1/classify", "task": "/v1/tasks/classify"}
    ratios = {}
    try:
        for rnd in range(1, ROUNDS + 1):
            for c in (1, 4):
                cells = {}
                order = list(paths.items()) if rnd % 2 else list(reversed(paths.items()))
                for name, path in order:
                    out = subprocess.run([str(ROOT / "target/release/tessera-loadgen"), "--url", f"{http}{path}",
                                          "--image", str(IMAGE), "--duration-s", DUR, "--warmup-s", "1",
                                          "--server-pid", str(server.pid), "--label", name, "--concurrency", str(c)],
                                         capture_output=True, text=True, check=True)
                    cells[name] = cell = json.loads(out.stdout)
                    print(f"round {rnd} c={c} {name:<8}: {cell['rps']:6.1f} rps  p50 {cell['p50_ms']:5.2f} ms  "
                          f"p99 {cell['p99_ms']:5.1f} ms  errors {sum(cell['errors'].values())}", flush=True)
                r = ratios.setdefault(c, {"rps": [], "p50": []})
                r["rps"].append(cells["task"]["rps"] / cells["pipeline"]["rps"])
                r["p50"].append(cells["task"]["p50_ms"] / cells["pipeline"]["p50_ms"])
        for c, r in ratios.items():
            print(f"task/pipeline c={c}: " + ratios_text(r))
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    sys.exit(main())
