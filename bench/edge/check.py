#!/usr/bin/env python3
"""`just edge-check`: what the runtime-only build costs an edge node, measured (never in CI).

Three builds of `tessera serve`, side by side in one run:
- full: the default features (`target/release/tessera`, what `./run build` makes);
- runtime-only: HTTP only, no gRPC, no trace exporter, no compiler, release profile
  (`target/release/tessera-runtime-only`, `just runtime-only`);
- edge: the same features through the `edge` profile (LTO, opt-level "s", panic = "abort",
  stripped; `target/edge/tessera`).

For each: the stripped binary's size; then, in rounds that alternate the builds, start to ready
(spawn → `/readyz` 200) serving the repository's default models with the default guests
precompiled to .cwasm for a baseline CPU, and the peak RSS (VmHWM) after serving ResNet-18 int8
(`just models`) a photo-sized JPEG, REQUESTS requests from 2 clients, with p50 latency (the
deadline raised to 60 s: tract's int8 kernels on a CPU without AVX-512 VNNI take seconds). Loopback only, bounded in time. Writes
docs/edge/footprint.json and prints a table.

    .venv/bin/python bench/edge/check.py [--rounds 3] [--requests 200]
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WORK = ROOT / "target" / "edge-check"
OUT = ROOT / "docs" / "edge"
BUILDS = {
    "full": ROOT / "target/release/tessera",
    "runtime-only": ROOT / "target/release/tessera-runtime-only",
    "edge": ROOT / "target/edge/tessera",
}
GUESTS = ["preprocess", "postprocess", "rules-threshold"]
MODEL = "resnet18-int8"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stripped_size(binary: Path) -> int:
    """The size of `binary` with its symbols stripped (a copy; the edge profile strips already)."""
    copy = WORK / f"{binary.parent.name}-{binary.name}.stripped"
    subprocess.run(["objcopy", "--strip-all", str(binary), str(copy)], check=True)
    return copy.stat().st_size


def setup() -> tuple[Path, Path]:
    """The guests as .cwasm for x86-64-v2; configs for the default models and for ResNet-18 int8."""
    WORK.mkdir(parents=True, exist_ok=True)
    triple = f"{os.uname().machine}-unknown-linux-gnu"
    cpu = "x86-64-v2" if os.uname().machine == "x86_64" else "baseline"
    for g in GUESTS:
        subprocess.run([str(BUILDS["full"]), "compile", "--no-compile-cache", "--target", triple, "--cpu", cpu,
                        str(ROOT / f"target/guests/{g}.wasm"), "-o", str(WORK / f"{g}.cwasm")],
                       check=True, stdout=subprocess.DEVNULL)
    onnx = ROOT / f"build/models/{MODEL}/1/model.onnx"
    if not onnx.is_file():
        sys.exit(f"{onnx} is missing: run `just models` first")
    repo = WORK / "models"
    (repo / MODEL / "1").mkdir(parents=True, exist_ok=True)
    link = repo / MODEL / "1" / "model.onnx"
    if not link.exists():
        link.symlink_to(onnx)
    (repo / MODEL / "labels.txt").write_text("".join(f"class {i}\n" for i in range(1000)))
    (repo / MODEL / "model.toml").write_text(
        'input_shape = [1, 3, 224, 224]\nresize = 256\nmean = [0.485, 0.456, 0.406]\n'
        'std = [0.229, 0.224, 0.225]\nlabels = "labels.txt"\n')
    guests = (f'[guests]\npreprocess = "{WORK / "preprocess.cwasm"}"\npostprocess = "{WORK / "postprocess.cwasm"}"\n'
              f'[[guests.rules]]\npath = "{WORK / "rules-threshold.cwasm"}"\nconfig = {{ "min-confidence" = "0.0" }}\n')
    default = WORK / "default.toml"
    default.write_text(f'models_dir = "{ROOT / "models"}"\ncompile_cache_dir = "off"\nwatch = false\n' + guests)
    resnet = WORK / "resnet18-int8.toml"
    resnet.write_text(f'models_dir = "{repo}"\ncompile_cache_dir = "off"\nwatch = false\n'
                      f'[limits]\ndeadline_ms = 60000\n' + guests)
    return default, resnet


def photo() -> bytes:
    """A 640×480 JPEG (the overload test's star photo)."""
    sys.path.insert(0, str(ROOT / "bench/reliability"))
    from overload import photo as make  # noqa: PLC0415

    return make(WORK / "photo.jpg").read_bytes()


def vm_hwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def wait_ready(proc: subprocess.Popen, port: int, deadline: float, poll_s: float, what: str) -> None:
    """Polls `/readyz` on `port` until 200; raises if `proc` exits or `deadline` (perf_counter) passes."""
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.perf_counter() > deadline:
            raise RuntimeError(f"{what} did not become ready")
        time.sleep(poll_s)


def start(name: str, config: Path) -> tuple[subprocess.Popen, int, float, object]:
    """Starts `name` serving `config`; returns it, its port, seconds to ready and its log."""
    port = free_port()
    log = open(WORK / f"{name}.log", "w")
    started = time.perf_counter()
    proc = subprocess.Popen([str(BUILDS[name]), "serve", "--config", str(config), "--addr", f"127.0.0.1:{port}",
                             "--grpc-addr", "off", "--admin-addr", "off"],
                            stdout=subprocess.DEVNULL, stderr=log)
    try:
        wait_ready(proc, port, started + 60, 0.002, f"{name} (see {WORK / (name + '.log')})")
    except BaseException:
        stop(proc, log)
        raise
    return proc, port, time.perf_counter() - started, log


def stop(proc: subprocess.Popen, log) -> None:
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


def ready_s(name: str, config: Path) -> float:
    proc, _, took, log = start(name, config)
    stop(proc, log)
    return took


def serve_resnet(name: str, config: Path, image: bytes, requests: int) -> dict:
    proc, port, _, log = start(name, config)
    try:
        latencies: list[float] = []
        errors: list[str] = []
        counter = iter(range(requests))
        lock = threading.Lock()

        def client() -> None:
            while True:
                with lock:
                    if next(counter, None) is None:
                        return
                req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/classify?model={MODEL}", data=image,
                                             headers={"content-type": "image/jpeg"})
                t0 = time.perf_counter()
                try:
                    with urllib.request.urlopen(req, timeout=30) as r:
                        body = json.load(r)
                        assert body["model"]["name"] == MODEL
                except Exception as e:  # noqa: BLE001 (counted and reported)
                    errors.append(repr(e))
                    continue
                latencies.append((time.perf_counter() - t0) * 1000)

        threads = [threading.Thread(target=client) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return {"peak_rss_mib": vm_hwm_mib(proc.pid), "p50_ms": statistics.median(latencies) if latencies else None,
                "answered": len(latencies), "errors": errors[:3], "error_count": len(errors)}
    finally:
        stop(proc, log)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=20)
    args = ap.parse_args()
    for name, path in BUILDS.items():
        if not path.is_file():
            sys.exit(f"{path} is missing: `just edge-check` builds it")
    default, resnet = setup()
    image = photo()
    sizes = {name: stripped_size(path) for name, path in BUILDS.items()}
    runs: dict[str, list[dict]] = {name: [] for name in BUILDS}
    for r in range(args.rounds):
        for name in BUILDS:
            result = serve_resnet(name, resnet, image, args.requests)
            result["ready_s"] = statistics.median(ready_s(name, default) for _ in range(3))
            runs[name].append(result)
            print(f"round {r + 1} {name}: ready {result['ready_s']:.3f} s, peak RSS {result['peak_rss_mib']:.1f} MiB, "
                  f"p50 {result['p50_ms']:.1f} ms, {result['answered']} answered, {result['error_count']} errors",
                  flush=True)
    summary = {}
    for name in BUILDS:
        rs = runs[name]
        summary[name] = {
            "stripped_bytes": sizes[name],
            "stripped_mb": round(sizes[name] / 1e6, 1),
            "size_ratio_to_full": round(sizes[name] / sizes["full"], 3),
            "ready_s_median": round(statistics.median(x["ready_s"] for x in rs), 3),
            "peak_rss_mib_max": round(max(x["peak_rss_mib"] for x in rs), 1),
            "p50_ms_median": round(statistics.median(x["p50_ms"] for x in rs if x["p50_ms"]), 1),
            "errors": sum(x["error_count"] for x in rs),
        }
    OUT.mkdir(parents=True, exist_ok=True)
    record = {"command": "just edge-check", "model": MODEL, "requests_per_round": args.requests,
              "rounds": args.rounds, "machine": os.uname().machine, "builds": summary, "runs": runs}
    (OUT / "footprint.json").write_text(json.dumps(record, indent=2) + "\n")
    print("\n| build | stripped | / full | start to ready | peak RSS | p50 |")
    print("|---|---|---|---|---|---|")
    for name, s in summary.items():
        print(f"| {name} | {s['stripped_mb']} MB | {s['size_ratio_to_full']}× | {s['ready_s_median']} s | "
              f"{s['peak_rss_mib_max']} MiB | {s['p50_ms_median']} ms |")
    if any(s["errors"] for s in summary.values()):
        sys.exit("some requests failed")


if __name__ == "__main__":
    main()
