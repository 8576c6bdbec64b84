#!/usr/bin/env python3
"""`just edge-pool`: what the small guest pool costs (docs/EDGE.md, "The guest pool in a 39-bit
address space"), served A/B through the real binary on this machine.

`limits.guest_memory_reservation_bytes` at its default (4 GiB: guest code without bounds checks)
against 256 MiB (what fits a 39-bit address space: guest code checks bounds), each with the
default guests precompiled for it. ROUNDS rounds, the two alternated within each, of one
`tessera serve`: WARM warm-up requests, then N sequential requests of a 640×480 JPEG, reading
each response's `timings_ms` and each guest's `call_ms`. Prints per round the medians and the
ratio small / default; writes docs/edge/pool.json. Loopback only.

    .venv/bin/python bench/edge/pool.py [--rounds 3] [--requests 100]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reliability"))
from check import free_port, wait_ready  # noqa: E402
from overload import photo  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
WORK = ROOT / "target" / "edge-pool"
OUT = ROOT / "docs" / "edge"
X86 = ROOT / "target/release/tessera"
GUESTS = ["preprocess", "postprocess", "rules-threshold"]
POOLS = {"default": 4 << 30, "small": 256 << 20}
WARM = 10


def setup() -> dict[str, Path]:
    """For each pool: the guests compiled for it and a config serving the default models."""
    WORK.mkdir(parents=True, exist_ok=True)
    configs = {}
    for pool, reservation in POOLS.items():
        limits = f"[limits]\nguest_memory_reservation_bytes = {reservation}\n"
        compile_config = WORK / f"{pool}-compile.toml"
        compile_config.write_text(limits)
        for g in GUESTS:
            subprocess.run([str(X86), "compile", "--no-compile-cache", "--config", str(compile_config),
                            str(ROOT / f"target/guests/{g}.wasm"), "-o", str(WORK / f"{g}.{pool}.cwasm")],
                           check=True, stdout=subprocess.DEVNULL)
        config = WORK / f"{pool}.toml"
        config.write_text(
            f'models_dir = "{ROOT / "models"}"\ncompile_cache_dir = "off"\nwatch = false\n{limits}'
            f'[guests]\npreprocess = "{WORK / f"preprocess.{pool}.cwasm"}"\n'
            f'postprocess = "{WORK / f"postprocess.{pool}.cwasm"}"\n'
            f'[[guests.rules]]\npath = "{WORK / f"rules-threshold.{pool}.cwasm"}"\n')
        configs[pool] = config
    return configs


def run(config: Path, image: bytes, requests: int) -> dict:
    port = free_port()
    log = open(WORK / f"{config.stem}.log", "w")
    proc = subprocess.Popen([str(X86), "serve", "--config", str(config), "--addr", f"127.0.0.1:{port}",
                             "--grpc-addr", "off", "--admin-addr", "off"], stdout=subprocess.DEVNULL, stderr=log)
    try:
        wait_ready(proc, port, time.perf_counter() + 60, 0.01, f"{config.stem} (see {log.name})")
        stages: dict[str, list[float]] = {}
        for i in range(WARM + requests):
            req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/classify", data=image,
                                         headers={"content-type": "image/jpeg"})
            with urllib.request.urlopen(req, timeout=30) as r:
                body = json.load(r)
            assert body["label"] == "star", body
            if i < WARM:
                continue
            for g in body["guests"]:
                stages.setdefault(f"{g['stage']} call", []).append(g["call_ms"])
            stages.setdefault("total", []).append(body["timings_ms"]["total"])
        return {k: statistics.median(v) for k, v in stages.items()}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=100)
    args = ap.parse_args()
    configs = setup()
    image = photo(WORK / "photo.jpg").read_bytes()
    rounds = []
    for r in range(args.rounds):
        medians = {pool: run(config, image, args.requests) for pool, config in configs.items()}
        ratios = {k: round(medians["small"][k] / medians["default"][k], 3) for k in medians["default"]}
        rounds.append({"medians_ms": medians, "ratio_small_to_default": ratios})
        print(f"round {r + 1}: " + ", ".join(
            f"{k} {medians['default'][k]:.2f} -> {medians['small'][k]:.2f} ms ({ratios[k]}x)" for k in ratios),
            flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "pool.json").write_text(json.dumps({
        "command": "just edge-pool", "reservations": POOLS, "requests_per_round": args.requests,
        "warm_up": WARM, "rounds": rounds}, indent=2) + "\n")


if __name__ == "__main__":
    main()
