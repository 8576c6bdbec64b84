#!/usr/bin/env python3
"""`just bench-detect`: the detection task served by Tessera against the same detector in the
Python service a team would write (bench/peers/detect_service.py: FastAPI, Pillow, onnxruntime
with 2 threads, the same post-processing in numpy), in one run, alternated.

Tessera serves the embedded default (`tessera serve`, no config: the `detect` task over
models/shapes-detect, its Rust guest). `tessera-loadgen` loads `POST /v1/tasks/detect` of each in
alternation, the order flipped every round: ROUNDS rounds (5) of c = 1 and c = 4, DUR seconds (8)
per cell, one held-out scene (a 512x384 PNG of the project's scene generator). First, both
answer SCENES held-out scenes once and their detections are compared (labels, boxes within
0.5 px). Prints every cell, then per concurrency the Tessera/peer ratios of each round (rps:
above 1 is Tessera faster; p50: below 1 is Tessera faster) and their medians.
"""
import json
import os
import subprocess
import sys
import urllib.request

from protocols import ROOT, ratios_text, run_header, wait_ready

ROUNDS = int(os.environ.get("ROUNDS", "5"))
DUR = os.environ.get("DUR", "8")
SCENES = 24
SEED = 737_373
DATA = ROOT / f"target/test-data/scenes-{SEED}-200"
PEER_PYTHON = ROOT / "build/venv-peers/bin/python"


def scenes() -> list:
    """The held-out scenes the tests use (made by the generator if missing): their labels.jsonl rows."""
    if not (DATA / "labels.jsonl").exists():
        subprocess.run([str(ROOT / ".venv/bin/python"), str(ROOT / "models/tools/generate_scenes.py"), "--seed",
                        str(SEED), "--count", "200", "--out", str(DATA)], check=True, stdout=subprocess.DEVNULL)
    return [json.loads(line) for line in (DATA / "labels.jsonl").read_text().splitlines()]


def detect(url: str, path) -> list:
    request = urllib.request.Request(url, data=path.read_bytes(), headers={"content-type": "image/png"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())["answer"]["detections"]


def same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        x["label"] == y["label"] and all(abs(p - q) <= 0.5 for p, q in zip(x["box"], y["box"])) for x, y in zip(a, b))


def main() -> None:
    rows = scenes()
    files = [DATA / r["file"] for r in rows]
    image = DATA / next(r["file"] for r in rows if r["file"].endswith(".png") and r["width"] == 512)
    print(run_header("just bench-detect"), flush=True)
    print(f"image: {image.relative_to(ROOT)} ({image.stat().st_size} bytes)", flush=True)
    tessera = subprocess.Popen([str(ROOT / "target/release/tessera"), "serve", "--addr", "127.0.0.1:0", "--grpc-addr",
                                "off", "--admin-addr", "off", "--no-watch"],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    peer = subprocess.Popen([str(PEER_PYTHON), str(ROOT / "bench/peers/detect_service.py"), "--port", "0"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        http = tessera.stdout.readline().strip().removeprefix("tessera listening on ")
        wait_ready(http)
        peer_http = "http://127.0.0.1:" + peer.stdout.readline().strip().removeprefix("listening on ")
        urls = {"tessera": f"{http}/v1/tasks/detect", "python-ort": f"{peer_http}/v1/tasks/detect"}
        pids = {"tessera": tessera.pid, "python-ort": peer.pid}
        agree = sum(same(detect(urls["tessera"], f), detect(urls["python-ort"], f)) for f in files[:SCENES])
        print(f"same detections (labels, boxes within 0.5 px) on {agree}/{SCENES} held-out scenes", flush=True)
        ratios = {}
        for rnd in range(1, ROUNDS + 1):
            for c in (1, 4):
                cells = {}
                order = list(urls) if rnd % 2 else list(reversed(urls))
                for name in order:
                    out = subprocess.run([str(ROOT / "target/release/tessera-loadgen"), "--url", urls[name], "--image",
                                          str(image), "--duration-s", DUR, "--warmup-s", "1", "--server-pid",
                                          str(pids[name]), "--label", name, "--concurrency", str(c)],
                                         capture_output=True, text=True, check=True)
                    cells[name] = cell = json.loads(out.stdout)
                    cpu = cell.get("cpu_s_per_image")
                    print(f"round {rnd} c={c} {name:<10}: {cell['rps']:6.1f} rps  p50 {cell['p50_ms']:6.2f} ms  "
                          f"p99 {cell['p99_ms']:6.1f} ms  errors {sum(cell['errors'].values())}"
                          + (f"  server cpu {1e3 * cpu:.2f} ms/image" if cpu else ""), flush=True)
                    if name == "tessera" and rnd == ROUNDS and cell.get("timings_ms_settled"):
                        print(f"  tessera settled timings_ms: {json.dumps(cell['timings_ms_settled'])}", flush=True)
                r = ratios.setdefault(c, {"rps": [], "p50": []})
                r["rps"].append(cells["tessera"]["rps"] / cells["python-ort"]["rps"])
                r["p50"].append(cells["tessera"]["p50_ms"] / cells["python-ort"]["p50_ms"])
        for c, r in ratios.items():
            print(f"tessera/python-ort c={c}: " + ratios_text(r))
    finally:
        for p in (tessera, peer):
            p.terminate()
            p.wait()


if __name__ == "__main__":
    sys.exit(main())
