#!/usr/bin/env python3
"""`just soak`: the real `tessera serve` for a bounded time (default 30 minutes) at 70 % of its
capacity with mixed traffic and hot swaps (never in CI).

Traffic, open loop at 0.7 x the capacity measured first (closed loop on the mid-size photo):
good photos of three sizes and a PNG (each must keep the label it got at the start), the
bad-input corpus (truncated and garbage JPEGs, an empty body, a text body, image headers over
the decode limits: each must get its documented 4xx code), and a second model whose pipeline's
rules guest traps on request (500 guest_trap) or accepts.

Every cycle (default 60 s): resources sampled first (RSS as the median of nine readings over
4 s, file descriptors, threads: the same point of every cycle), a new version of the default model copied in, 20 s later the old one
removed, 20 s later the rules guest's file replaced (the watcher reloads both).

Passes when: no unexpected answer (status, error code or label), every new version answered
some request, RSS at the end within 5 % of RSS at the settle point (minute 5, or a sixth of a
shorter run), file descriptors and threads flat after the settle point. Writes
docs/reliability/soak.json; exits 1 on a miss.

    .venv/bin/python bench/reliability/soak.py [--minutes 30] [--cycle-s 60]
"""
from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import random
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TESSERA = ROOT / "target" / "release" / "tessera"
LOADGEN = ROOT / "target" / "release" / "tessera-loadgen"
GUESTS = ROOT / "target" / "guests"
OUT = ROOT / "docs" / "reliability"
WORK = ROOT / "target" / "reliability" / "soak"

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overload import free_port, photo  # noqa: E402


def install(src: Path, dst: Path) -> None:
    """Copy through a temporary file and a rename, as a deployment should."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".partial")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def png_header(w: int, h: int, depth: int = 16, colour: int = 6) -> bytes:
    """A PNG that claims w x h pixels and carries none (IHDR, an empty IDAT, IEND)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


def inputs() -> list[dict]:
    """Every kind of request with what it must get (`label: None` = the label it got first)."""
    from PIL import Image

    out = []
    for w, h in [(320, 240), (1024, 768), (2000, 1500)]:
        path = photo(WORK / f"star-{w}x{h}.jpg", w, h)
        out.append({"name": f"jpeg {w}x{h}", "body": path.read_bytes(), "type": "image/jpeg", "status": 200})
    png = WORK / "star.png"
    Image.open(WORK / "star-320x240.jpg").save(png)
    out.append({"name": "png 320x240", "body": png.read_bytes(), "type": "image/png", "status": 200})
    jpeg = (WORK / "star-1024x768.jpg").read_bytes()
    rng = random.Random(3)
    bad = [
        ("truncated jpeg", jpeg[: len(jpeg) // 2], "image/jpeg", 400, "invalid_image"),
        ("garbage", bytes(rng.getrandbits(8) for _ in range(4096)), "application/octet-stream", 400, "invalid_image"),
        ("empty", b"", "image/jpeg", 400, "invalid_image"),
        ("text", b"hello", "text/plain", 415, "unsupported_media_type"),
        ("36 MP rgba16 png header", png_header(6000, 6000), "image/png", 422, "image_too_large"),
        ("100 MP png header", png_header(10000, 10000, 8, 2), "image/png", 422, "image_too_large"),
    ]
    for name, body, kind, status, code in bad:
        out.append({"name": name, "body": body, "type": kind, "status": status, "code": code, "weight": 0.5})
    small = (WORK / "star-320x240.jpg").read_bytes()
    out.append({"name": "trapping rules guest", "body": small, "type": "image/jpeg", "model": "shapes-trap",
                "headers": {"x-probe": "trap"}, "status": 500, "code": "guest_trap"})
    out.append({"name": "trap model, accepted", "body": small, "type": "image/jpeg", "model": "shapes-trap",
                "status": 200})
    return out


def setup() -> Path:
    """A models directory (shapes v1 and shapes-trap), guests copied where they can be swapped,
    and a config with a pipeline whose rules guest is the trapping probe."""
    if WORK.exists():
        shutil.rmtree(WORK)
    models = WORK / "models"
    for name in ["shapes", "shapes-trap"]:
        for f in ["model.toml", "labels.txt", "1/model.onnx"]:
            install(ROOT / "models" / "shapes" / f, models / name / f)
    guests = WORK / "guests"
    for g in ["preprocess", "postprocess", "rules-threshold", "probe-rules"]:
        install(GUESTS / f"{g}.wasm", guests / f"{g}.wasm")
    config = WORK / "tessera.toml"
    config.write_text(f"""models_dir = "{models}"
default_model = "shapes"
compile_cache_dir = "{ROOT / 'target' / 'cache' / 'components'}"

[guests]
preprocess = "{guests / 'preprocess.wasm'}"
postprocess = "{guests / 'postprocess.wasm'}"

[[guests.rules]]
path = "{guests / 'rules-threshold.wasm'}"
config = {{ "min-confidence" = "0.0" }}

[pipelines.trapping]
models = ["shapes-trap"]

[[pipelines.trapping.rules]]
path = "{guests / 'probe-rules.wasm'}"
""")
    return config


def resources(pid: int) -> dict:
    # RSS moves by tens of MiB with what is in flight at the instant (a 2000x1500 photo's decode
    # is ~20 MiB of guest memory): the median of nine readings over 4 s is the sample.
    readings = []
    for i in range(9):
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
        readings.append(int(next(l for l in status if l.startswith("VmRSS:")).split()[1]))
        if i < 8:
            time.sleep(0.5)
    get = lambda key: int(next(l for l in status if l.startswith(key)).split()[1])  # noqa: E731
    fds = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
    sockets = sum(1 for target in fds if target.startswith("socket:"))
    # Sockets follow the clients (each worker thread opens its keep-alive connection when it
    # first gets work); files, pipes and the watcher's descriptors are the server's own.
    return {"rss_mib": round(sorted(readings)[4] / 1024, 1), "threads": get("Threads:"),
            "fds": len(fds) - sockets, "sockets": sockets}


class Client:
    """Open-loop requests over keep-alive connections, one per worker thread."""

    def __init__(self, port: int):
        self.port = port
        self.local = threading.local()
        self.lock = threading.Lock()
        self.results: list[dict] = []

    def conn(self) -> http.client.HTTPConnection:
        if not hasattr(self.local, "conn"):
            self.local.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        return self.local.conn

    def send(self, case: dict, scheduled: float) -> None:
        query = f"?model={case['model']}" if "model" in case else ""
        headers = {"Content-Type": case["type"], **case.get("headers", {})}
        result = {"case": case["name"], "at": scheduled}
        self.exchange(case, query, headers, scheduled, result)
        if result.get("status") == 503 and result.get("retry_after"):
            # A well-behaved client honours Retry-After; the refusal is counted, the retry's
            # answer is the one judged.
            time.sleep(min(float(result["retry_after"]), 1.0))
            result["refused_first"] = True
            self.exchange(case, query, headers, scheduled, result)
        with self.lock:
            self.results.append(result)

    def exchange(self, case: dict, query: str, headers: dict, scheduled: float, result: dict) -> None:
        for attempt in range(2):
            try:
                c = self.conn()
                c.request("POST", "/v1/classify" + query, body=case["body"], headers=headers)
                r = c.getresponse()
                body = r.read()
                result.update(status=r.status, latency_ms=(time.monotonic() - scheduled) * 1e3)
                doc = json.loads(body) if body else {}
                result["code"] = doc.get("error", {}).get("code")
                result["label"] = doc.get("label")
                result["version"] = doc.get("model", {}).get("version")
                result["retry_after"] = r.getheader("Retry-After")
                if r.getheader("Connection", "").lower() == "close":
                    self.local.conn.close()
                    del self.local.conn
                break
            except (OSError, http.client.HTTPException) as e:
                # A connection the server closed between requests is retried once; twice is a failure.
                if hasattr(self.local, "conn"):
                    self.local.conn.close()
                    del self.local.conn
                result.update(status=None, error=f"{type(e).__name__}: {e}")


def capacity(port: int, image: Path, pid: int) -> float:
    argv = [str(LOADGEN), "--url", f"http://127.0.0.1:{port}/v1/classify", "--image", str(image),
            "--concurrency", "8", "--duration-s", "10", "--warmup-s", "2", "--server-pid", str(pid)]
    return json.loads(subprocess.run(argv, check=True, capture_output=True, text=True).stdout)["rps"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--cycle-s", type=float, default=60.0)
    ap.add_argument("--load", type=float, default=0.7, help="share of the measured capacity offered")
    ap.add_argument("--no-guest-swap", action="store_true", help="swap model versions only")
    args = ap.parse_args()
    config = setup()
    cases = inputs()
    port = free_port()
    log = WORK / "server.log"
    proc = subprocess.Popen([str(TESSERA), "--config", str(config), "serve", "--addr", f"127.0.0.1:{port}",
                             "--grpc-addr", "off", "--admin-addr", "off"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(log, "w"))
    for _ in range(600):
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1).status == 200:
                break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        sys.exit(f"not ready; see {log}")
    client = Client(port)
    try:
        # The label each good input gets, before any swap.
        expected_label = {}
        for case in cases:
            if case["status"] == 200:
                client.send(case, time.monotonic())
                expected_label[case["name"]] = client.results[-1].get("label")
        client.results.clear()
        cap = capacity(port, WORK / "star-1024x768.jpg", proc.pid)
        rate = args.load * cap
        print(f"capacity {cap} img/s (1024x768 photo, closed loop c = 8); offering {rate:.1f} req/s "
              f"for {args.minutes} min, a swap cycle every {args.cycle_s:.0f} s", flush=True)

        weights = [c.get("weight", 1.0) for c in cases]
        rng = random.Random(11)
        samples, swaps = [], []
        stop = threading.Event()
        pool = ThreadPoolExecutor(max_workers=48)

        def traffic() -> None:
            interval, nxt = 1.0 / rate, time.monotonic()
            while not stop.is_set():
                nxt += interval
                delay = nxt - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                pool.submit(client.send, rng.choices(cases, weights)[0], time.monotonic())

        feeder = threading.Thread(target=traffic, daemon=True)
        start = time.monotonic()
        feeder.start()
        end = start + args.minutes * 60
        version = 1
        models = WORK / "models" / "shapes"
        onnx = ROOT / "models" / "shapes" / "1" / "model.onnx"
        rules = WORK / "guests" / "rules-threshold.wasm"
        while time.monotonic() + args.cycle_s <= end + 1:
            cycle = time.monotonic()
            samples.append({"t_s": round(cycle - start, 1), **resources(proc.pid)})
            version += 1
            install(onnx, models / str(version) / "model.onnx")
            swaps.append({"t_s": round(time.monotonic() - start, 1), "added": version})
            time.sleep(args.cycle_s / 3)
            shutil.rmtree(models / str(version - 1))
            swaps.append({"t_s": round(time.monotonic() - start, 1), "removed": version - 1})
            time.sleep(args.cycle_s / 3)
            if not args.no_guest_swap:
                install(GUESTS / "rules-threshold.wasm", rules)
                swaps.append({"t_s": round(time.monotonic() - start, 1), "guest": rules.name})
            time.sleep(max(0.0, cycle + args.cycle_s - time.monotonic()))
        samples.append({"t_s": round(time.monotonic() - start, 1), **resources(proc.pid)})
        stop.set()
        feeder.join()
        pool.shutdown(wait=True)
        alive = proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(30)

    by_name = {c["name"]: c for c in cases}
    unexpected, versions, latencies = [], set(), []
    for r in client.results:
        case = by_name[r["case"]]
        ok = r.get("status") == case["status"] and r.get("code") == case.get("code")
        if ok and case["status"] == 200:
            ok = r.get("label") == expected_label[case["name"]]
            if case.get("model") is None:
                versions.add(r.get("version"))
        if not ok:
            unexpected.append(r)
        if r.get("latency_ms") is not None:
            latencies.append(r["latency_ms"])
    latencies.sort()
    settle_s = min(300.0, args.minutes * 60 / 6)
    settled = [s for s in samples if s["t_s"] >= settle_s] or samples[-1:]
    rss_drift = (samples[-1]["rss_mib"] - settled[0]["rss_mib"]) / settled[0]["rss_mib"]
    spread = lambda key: max(s[key] for s in settled) - min(s[key] for s in settled)  # noqa: E731
    added = [s["added"] for s in swaps if "added" in s]
    checks = {
        "no unexpected answer": not unexpected,
        "every new version answered": all(str(v) in versions for v in added),
        "RSS drift < 5 % after settling": abs(rss_drift) < 0.05,
        "file descriptors other than sockets flat (spread <= 2)": spread("fds") <= 2,
        "threads flat (spread <= 2)": spread("threads") <= 2,
        "server up at the end": alive,
    }
    counts: dict[str, dict[str, int]] = {}
    for r in client.results:
        key = str(r.get("status")) + (f" {r['code']}" if r.get("code") else "")
        counts.setdefault(r["case"], {}).setdefault(key, 0)
        counts[r["case"]][key] += 1
    # When in the swap cycle refusals happen (0 s: a version added, 1/3: the old one removed,
    # 2/3: the guest swapped), in tenths of the cycle: clustered after an event, or spread out.
    refusal_phase = [0] * 10
    for r in client.results:
        if r.get("refused_first"):
            refusal_phase[min(9, int(((r["at"] - start) % args.cycle_s) / args.cycle_s * 10))] += 1
    result = {
        "command": f"just soak --minutes {args.minutes:g}", "capacity_rps": cap, "offered_rps": round(rate, 1),
        "requests": len(client.results), "answers": counts,
        "refused_then_retried": sum(1 for r in client.results if r.get("refused_first")),
        "refusals_by_tenth_of_cycle": refusal_phase, "versions_seen": sorted(versions, key=lambda v: int(v or 0)),
        "versions_added": added, "swaps": swaps, "samples": samples, "settle_s": settle_s,
        "rss_drift": round(rss_drift, 4), "latency_ms": {
            "p50": round(latencies[len(latencies) // 2], 1) if latencies else None,
            "p99": round(latencies[min(len(latencies) - 1, math.ceil(len(latencies) * 0.99) - 1)], 1) if latencies else None},
        "unexpected": unexpected[:20], "checks": checks,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "soak.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"{len(client.results)} requests, {len(unexpected)} unexpected, {result['refused_then_retried']} refused "
          f"(503) and retried after Retry-After; versions added {added}, seen {result['versions_seen']}")
    print(f"resources per cycle (s, RSS MiB, fds, sockets, threads): "
          f"{[(s['t_s'], s['rss_mib'], s['fds'], s['sockets'], s['threads']) for s in samples]}")
    print(f"refusals by tenth of the swap cycle (a version added at 0, removed at 3.3, guest swap at 6.7): "
          f"{refusal_phase}")
    print(f"RSS drift after {settle_s:.0f} s: {rss_drift * 100:+.2f} %; latency p50 {result['latency_ms']['p50']} "
          f"p99 {result['latency_ms']['p99']} ms")
    for name, ok in checks.items():
        print(f"  {'ok  ' if ok else 'MISS'} {name}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
