#!/usr/bin/env python3
"""`just overload`: the real `tessera serve` past its capacity, open loop (never in CI).

1. capacity: closed loop, CLIENTS clients, the answered images per second;
2. 70 %: open loop at 0.7 x capacity: the admitted requests' p99, the baseline;
3. 2x: open loop at 2 x capacity: the excess must be refused with 503 + Retry-After, fast
   (p99 of the 503s under 10 ms), the admitted keep p99 <= 2x the 70 % p99, nothing else fails,
   and the server is still up and answering afterwards.

One server, started fresh, the shipped default model and guests, loopback only, bounded in time.
Writes docs/reliability/overload.json and prints the verdict; exits 1 if a target is missed.

    .venv/bin/python bench/reliability/overload.py [--seconds 20] [--image photo.jpg]
"""
from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TESSERA = ROOT / "target" / "release" / "tessera"
LOADGEN = ROOT / "target" / "release" / "tessera-loadgen"
OUT = ROOT / "docs" / "reliability"
WORK = ROOT / "target" / "reliability"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def photo(path: Path, w: int = 640, h: int = 480) -> Path:
    """A photo-sized JPEG of one of the default model's shapes (a star on a textured field)."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(7)
    field = rng.normal(120, 30, (h, w, 3)).clip(0, 255).astype("uint8")
    img = Image.fromarray(field)
    draw = ImageDraw.Draw(img)
    cx, cy, r = w // 2, h // 2, min(w, h) // 3
    points = []
    for i in range(10):
        import math
        a = math.pi / 2 + i * math.pi / 5
        rr = r if i % 2 == 0 else r * 0.45
        points.append((cx + rr * math.cos(a), cy - rr * math.sin(a)))
    draw.polygon(points, fill=(230, 40, 40))
    img.save(path, quality=90)
    return path


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def serve(port: int, log: Path, extra: list[str]) -> subprocess.Popen:
    proc = subprocess.Popen(
        [str(TESSERA), "serve", "--addr", f"127.0.0.1:{port}", "--grpc-addr", "off", "--admin-addr", "off", *extra],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(log, "w"))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"tessera exited with {proc.returncode}; see {log}")
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1).status == 200:
                return proc
        except OSError:
            pass
        time.sleep(0.2)
    proc.kill()
    sys.exit(f"tessera not ready after 120 s; see {log}")


def load(url: str, image: Path, pid: int, seconds: float, **shape) -> dict:
    # The load generator shares the 2 cores with the server; a remote client would not. At
    # nice -5 (when allowed) its own scheduling delays stay out of the server's latencies.
    argv = (["nice", "-n", "-5"] if os.geteuid() == 0 else []) + [str(LOADGEN), "--url", url, "--image", str(image), "--duration-s", str(seconds),
            "--warmup-s", "3", "--server-pid", str(pid), "--max-in-flight", "4096"]
    for k, v in shape.items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    return json.loads(subprocess.run(argv, check=True, capture_output=True, text=True).stdout)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--clients", type=int, default=8, help="closed-loop clients for the capacity run")
    ap.add_argument("--image", type=Path)
    ap.add_argument("--serve-arg", action="append", default=[], help="extra `tessera serve` flags")
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    OUT.mkdir(parents=True, exist_ok=True)
    image = args.image or photo(WORK / "star-640x480.jpg")
    port = free_port()
    proc = serve(port, WORK / "overload-server.log", args.serve_arg)
    url = f"http://127.0.0.1:{port}/v1/classify"
    try:
        rss_start = rss_mib(proc.pid)
        capacity = load(url, image, proc.pid, args.seconds, concurrency=args.clients)
        rps = capacity["rps"]
        at70 = load(url, image, proc.pid, args.seconds, rate=round(0.7 * rps, 1))
        at200 = load(url, image, proc.pid, args.seconds, rate=round(2 * rps, 1))
        after = load(url, image, proc.pid, 5, concurrency=1)
        alive = proc.poll() is None
        rss_end = rss_mib(proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)

    refused = {k: v for k, v in at200["errors"].items() if k.startswith("http_503")}
    other = {k: v for k, v in at200["errors"].items() if not k.startswith("http_503")}
    refused_p99 = max((at200["error_latency_ms"][k]["p99"] for k in refused), default=float("nan"))
    checks = {
        "excess refused with 503 (some were)": sum(refused.values()) > 0,
        "503 p99 < 10 ms": refused_p99 < 10,
        "admitted p99 at 2x <= 2 x p99 at 70 %": at200["p99_ms"] <= 2 * at70["p99_ms"],
        "no other failure at 2x": not other,
        "no failure at 70 %": not at70["errors"],
        "server up and answering after": alive and after["ok"] > 0 and not after["errors"],
    }
    result = {
        "command": "just overload",
        "image": str(image.relative_to(ROOT)) if image.is_relative_to(ROOT) else str(image),
        "capacity": capacity, "at_70_percent": at70, "at_2x": at200, "after": after,
        "rss_mib": {"start": round(rss_start, 1), "end": round(rss_end, 1)},
        "refused_p99_ms": refused_p99, "checks": checks,
    }
    (OUT / "overload.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"capacity (closed loop, c = {args.clients}): {rps} img/s, p99 {capacity['p99_ms']} ms")
    for name, r in [("70 %", at70), ("2x", at200)]:
        print(f"{name:>5}: offered {r['rate']}/s, answered {r['rps']}/s, admitted p50 {r['p50_ms']} p99 {r['p99_ms']} ms, "
              f"errors {r['errors']}, error latency {r['error_latency_ms']}")
    print(f"RSS {rss_start:.0f} -> {rss_end:.0f} MiB; after: {after['ok']} ok, errors {after['errors']}")
    for name, ok in checks.items():
        print(f"  {'ok  ' if ok else 'MISS'} {name}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
