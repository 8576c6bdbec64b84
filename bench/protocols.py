#!/usr/bin/env python3
"""`just bench-protocols`: what a request costs over each protocol, through one `tessera serve`
(the default model and guests), alternated so the machine's drift hits every protocol alike:
ROUNDS rounds x concurrency 1 and 4 x (HTTP `/v1/classify`, the seed's gRPC `Recognize`, KServe
OIP v2 REST `/v2/models/shapes/infer` with the image as a BYTES input in the binary extension),
DUR seconds per cell, one `tessera-loadgen` load shape. Prints each cell and the gRPC/HTTP and
OIP/HTTP ratios of each round, then their medians.
"""
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROUNDS = int(os.environ.get("ROUNDS", "3"))
DUR = os.environ.get("DUR", "8")
IMAGE = ROOT / "target/test-data/bench-protocols/crescent-00000.png"


def run_header(command: str) -> str:
    """What a table needs above it (docs/PERFORMANCE.md): the command, the date, the commit (and
    whether the tree had changes) and the CPU with the vector extensions our kernels choose by."""
    import datetime
    import platform

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    dirty = " (with uncommitted changes)" if git("status", "--porcelain", "--untracked-files=no") else ""
    model, flags = "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == "unknown CPU":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    isa = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8", "amx_bf16") if f in flags]
    return (f"`{command}`, {datetime.date.today().isoformat()}, commit {git('rev-parse', '--short', 'HEAD')}{dirty}, "
            f"{model} ({os.cpu_count()} CPUs; {' '.join(isa) or 'no AVX2'}; {platform.machine()})")


def ratios_text(ratios: dict) -> str:
    """`{metric: [one ratio per round]}` as `metric median (round round ...)`, comma-separated: how
    every A/B script here prints its result."""
    return ", ".join(f"{k} {statistics.median(v):.2f} ({' '.join(f'{x:.2f}' for x in v)})" for k, v in ratios.items())


def ensure_image() -> None:
    """Makes IMAGE with the project's shapes generator if it is missing."""
    if not IMAGE.exists():
        subprocess.run([str(ROOT / ".venv/bin/python"), str(ROOT / "models/tools/generate_shapes.py"), "--seed", "9001",
                        "--per-class", "1", "--out", str(IMAGE.parent)], check=True, stdout=subprocess.DEVNULL)


def wait_ready(http: str) -> None:
    """Polls `{http}/readyz` until it answers 200 (at most ~2 minutes)."""
    for _ in range(600):
        try:
            with urllib.request.urlopen(f"{http}/readyz", timeout=1):
                return
        except OSError:
            time.sleep(0.2)


def main() -> None:
    ensure_image()
    print(run_header("just bench-protocols"), flush=True)
    server = subprocess.Popen([str(ROOT / "target/release/tessera"), "serve", "--addr", "127.0.0.1:0",
                               "--grpc-addr", "127.0.0.1:0", "--no-watch"], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
    try:
        http = server.stdout.readline().strip().removeprefix("tessera listening on ")
        grpc = server.stdout.readline().strip().removeprefix("tessera listening on ")
        wait_ready(http)
        ratios = {}
        for rnd in range(1, ROUNDS + 1):
            for c in (1, 4):
                cells = {}
                for name, url in (("http", f"{http}/v1/classify"), ("grpc", grpc),
                                  ("oip", f"{http}/v2/models/shapes/infer")):
                    out = subprocess.run([str(ROOT / "target/release/tessera-loadgen"), "--url", url, "--image",
                                          str(IMAGE), "--duration-s", DUR, "--warmup-s", "1", "--server-pid",
                                          str(server.pid), "--label", name, "--concurrency", str(c)],
                                         capture_output=True, text=True, check=True)
                    cells[name] = cell = json.loads(out.stdout)
                    print(f"round {rnd} c={c} {name:<4}: {cell['rps']:6.1f} rps  p50 {cell['p50_ms']:5.1f} ms  "
                          f"p99 {cell['p99_ms']:5.1f} ms  cpu/img {cell['cpu_s_per_image']}  "
                          f"errors {sum(cell['errors'].values())}", flush=True)
                h = cells["http"]
                for name in ("grpc", "oip"):
                    g = cells[name]
                    if sum(g["errors"].values()) or set(g["top1"]) != set(h["top1"]):
                        raise SystemExit(f"{name} answered differently from http: {g['errors']} {g['top1']}")
                    r = ratios.setdefault((name, c), {"rps": [], "p50": [], "cpu": []})
                    r["rps"].append(g["rps"] / h["rps"])
                    r["p50"].append(g["p50_ms"] / h["p50_ms"])
                    r["cpu"].append(g["cpu_s_per_image"] / h["cpu_s_per_image"])
        for (name, c), r in ratios.items():
            print(f"{name}/HTTP c={c}: " + ratios_text(r))
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    sys.exit(main())
