#!/usr/bin/env python3
"""`just bench-peers`: Tessera against the services a user would otherwise run, in one run.

Systems, each started fresh for its cells and stopped after:
- `seed-torch`: the seed's Python service faithfully (grpcio on the unchanged proto,
  ThreadPoolExecutor(10), torchvision preprocessing, PyTorch eager), when build/venv-torch has
  torch (`--no-torch` skips it: the wheel is ~5.6 GB);
- `seed-ort`: the same service on onnxruntime (2 intra-op threads): what a user would pick today;
- `tessera-<fp32|int8>-<mode>`: the real `tessera serve` binary over HTTP, tract fp32 / int8 in each mode;
- `tessera-ort`: the same binary with the model on its onnxruntime engine (fp32);
- `tessera-fp32-grpc`: tract fp32 (adaptive) through Tessera's gRPC port, driven by the same
  seed-proto client as the seed's systems (ResNet-50 and the default model, c = 1 and 4).

One load shape for all (`tessera-loadgen`): closed loop at c = 1, 4, 16 and open loop at fixed
rates, the full matrix for ResNet-50 on a 224 px JPEG, a subset for the default model, ResNet-18,
1080p and 12 MP photos. Per cell: rps, p50/p90/p99, errors, server CPU s/image, peak RSS, and for
Tessera the per-stage `timings_ms` of the first answers after start and of settled ones. Top-1
agreement: 16 distinct photos sent once to every system of a model, compared by class index.

Writes docs/bench-peers/results.json, docs/bench-peers/summary.md (every figure also as a ratio
to seed-torch and seed-ort from the same run) and docs/bench-peers/latency-vs-load.png.

    build/venv-peers/bin/python bench/peers/run.py [--quick] [--no-torch]

`--batching` runs only the dynamic batching matrix instead (Tessera's onnxruntime engine with
batching off, max 4 without delay and max 8 with 2 ms, beside seed-ort and tract fp32, at c = 4, 8,
16 on ResNet-50 and -18) and writes docs/bench-peers/batching.json and batching.md.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
from protocols import run_header  # noqa: E402  (bench/ is not a package)
PROTO = ROOT / "proto" / "image_recognition.proto"
LOADGEN = ROOT / "target" / "release" / "tessera-loadgen"
TESSERA = ROOT / "target" / "release" / "tessera"
WORK = ROOT / "build" / "bench-peers"
OUT = ROOT / "docs" / "bench-peers"
VENV_PEERS = ROOT / "build" / "venv-peers" / "bin" / "python"
VENV_TORCH = ROOT / "build" / "venv-torch" / "bin" / "python"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def photo(w: int, h: int, seed: int) -> bytes:
    """A photo-like JPEG: smooth colour fields, edges and noise; quality 90."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    f = rng.uniform(3, 11, 6)
    img = np.stack([128 + 100 * np.sin(x / w * f[0] + y / h * f[1]),
                    128 + 90 * np.cos(x / w * f[2] - y / h * f[3]),
                    128 + 80 * np.sin((x / w + y / h) * f[4])], -1)
    img += np.where(((x * f[5] / w).astype(int) + (y * 5 / h).astype(int)) % 2 == 0, 25, -25)[..., None]
    img += rng.normal(0, 10, img.shape)
    out = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(out, format="JPEG", quality=90)
    return out.getvalue()


def model_repo(name: str, onnx: Path, labels: list[str], engine: str = "tract", batch: tuple[int, int] | None = None
               ) -> Path:
    """A one-model Tessera repository around `onnx` (ImageNet preprocessing) on `engine`;
    `batch`: (max_batch_size, max_queue_delay_microseconds)."""
    repo = WORK / "repos" / name
    (repo / name / "1").mkdir(parents=True, exist_ok=True)
    target = repo / name / "1" / "model.onnx"
    if not target.exists():
        target.symlink_to(onnx.resolve())
    (repo / name / "labels.txt").write_text("\n".join(labels) + "\n")
    (repo / name / "model.toml").write_text(
        'input_shape = [1, 3, 224, 224]\nresize = 256\nmean = [0.485, 0.456, 0.406]\n'
        f'std = [0.229, 0.224, 0.225]\nlabels = "labels.txt"\nengine = "{engine}"\n'
        + (f"max_batch_size = {batch[0]}\nmax_queue_delay_microseconds = {batch[1]}\n" if batch else ""))
    return repo


class Server:
    """One system under test, started fresh; `url` is what the load generator targets."""

    def __init__(self, name: str, argv: list[str], url: str, ready, log: Path):
        self.name, self.url = name, url
        self.agree_url = url
        self.log = open(log, "w")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.monotonic() + 300
        while not ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {self.proc.returncode}; see {log}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{name} not ready after 300 s; see {log}")
            time.sleep(0.2)
        self.ready_s = time.monotonic() - self.started

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def start_seed(name: str, python: Path, backend: str, onnx: Path, arch: str) -> Server:
    port = free_port()
    log = WORK / f"{name}.log"
    argv = [str(python), str(ROOT / "bench/peers/seed_service.py"), "--proto", str(PROTO), "--model", str(onnx),
            "--backend", backend, "--arch", arch, "--threads", "2", "--port", str(port)]

    def ready() -> bool:
        return "listening on" in log.read_text() if log.exists() else False

    return Server(name, argv, f"grpc://127.0.0.1:{port}", ready, log)


def start_tessera(name: str, repo: Path, mode: str, grpc: bool = False) -> Server:
    """Tessera on `repo`; with `grpc` the load goes through its gRPC port (the seed's service,
    the same client as the seed's systems), else through HTTP."""
    port, grpc_port = free_port(), free_port()
    argv = [str(TESSERA), "serve", "--models", str(repo), "--addr", f"127.0.0.1:{port}", "--no-watch",
            "--inference-mode", mode, "--grpc-addr", f"127.0.0.1:{grpc_port}" if grpc else "off",
            # The peers queue every client; so does Tessera here (the default sheds past 2 per
            # core, docs/RELIABILITY.md), so that c = 16 measures the same thing for all.
            "--max-concurrent-requests", "64"]

    def ready() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    http = f"http://127.0.0.1:{port}/v1/classify"
    server = Server(name, argv, f"grpc://127.0.0.1:{grpc_port}" if grpc else http, ready, WORK / f"{name}.log")
    # Top-1 agreement reads class indices, which Tessera's HTTP answer has (the seed's gRPC
    # message only has labels); the model's answer does not depend on the protocol.
    server.agree_url = http
    return server


def load(server: Server, image: Path, seconds: float, concurrency: int | None = None,
         rate: float | None = None) -> dict:
    argv = [str(LOADGEN), "--url", server.url, "--image", str(image), "--duration-s", str(seconds),
            "--server-pid", str(server.proc.pid), "--label", server.name]
    argv += ["--concurrency", str(concurrency)] if concurrency else ["--rate", str(rate)]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=seconds + 120)
    cell = json.loads(out.stdout)
    print(f"  {server.name:<26} {image.name:<14} {'c=' + str(concurrency) if concurrency else f'{rate} rps':>8}: "
          f"{cell['rps']:6.1f} rps  p50 {cell['p50_ms']:7.1f}  p99 {cell['p99_ms']:7.1f} ms  "
          f"errors {sum(cell['errors'].values())}  cpu/img {cell['cpu_s_per_image']}", flush=True)
    return cell


def top1_indices(server: Server, images: list[bytes]) -> list[int]:
    """Class index of each image's top-1, sent one by one."""
    out = []
    if server.agree_url.startswith("grpc://"):
        import grpc

        sys.path.insert(0, str(WORK / "proto"))
        import image_recognition_pb2 as pb2
        import image_recognition_pb2_grpc as pb2_grpc

        with grpc.insecure_channel(server.agree_url.removeprefix("grpc://")) as channel:
            stub = pb2_grpc.ImageRecognitionServiceStub(channel)
            for data in images:
                resp = stub.Recognize(pb2.ImageRequest(image_data=data, image_type="jpg"), timeout=30)
                out.append(int(re.sub(r"\D", "", resp.label)))
    else:
        for data in images:
            req = urllib.request.Request(server.agree_url + "?top_k=1&", data=data, headers={"Content-Type": "image/jpeg"})
            req.add_header("x-request-timeout-ms", "30000")
            with urllib.request.urlopen(req, timeout=60) as r:
                out.append(json.load(r)["top_k"][0]["index"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="5 s cells, fewer systems and cells (~5 min)")
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch peer")
    ap.add_argument("--batching", action="store_true",
                    help="only the dynamic batching matrix (onnxruntime engine off/on vs seed-ort and tract, "
                         "c = 4/8/16, ResNet-50 and -18); writes batching.json and batching.md")
    ap.add_argument("--only", default="", help="comma-separated MODEL/SYSTEM keys (e.g. resnet50/tessera-fp32-adaptive) "
                    "to run again; their figures replace those in the existing results.json")
    args = ap.parse_args()
    secs = 5.0 if args.quick else 15.0
    torch = not args.no_torch and VENV_TORCH.exists()
    if not args.no_torch and not torch:
        print("build/venv-torch is missing: running without the PyTorch peer (see the justfile's bench-peers)")
    if shutil.which("top"):
        print(subprocess.run(["top", "-bn1"], capture_output=True, text=True).stdout.splitlines()[0])
    WORK.mkdir(parents=True, exist_ok=True)
    OUT.mkdir(parents=True, exist_ok=True)
    (WORK / "proto").mkdir(exist_ok=True)
    from grpc_tools import protoc

    protoc.main(["protoc", f"-I{PROTO.parent}", f"--python_out={WORK / 'proto'}",
                 f"--grpc_python_out={WORK / 'proto'}", str(PROTO)])

    images = {}
    for name, (w, h) in {"photo-224": (224, 224), "photo-1080p": (1920, 1080), "photo-12mp": (4000, 3000)}.items():
        path = WORK / f"{name}.jpg"
        path.write_bytes(photo(w, h, seed=7))
        images[name] = path
    agreement_set = [photo(224, 224, seed=100 + i) for i in range(16)]

    imagenet = [f"class_{i}" for i in range(1000)]
    models = {
        "resnet50": (ROOT / "build/models/resnet50/1/model.onnx", "resnet50"),
        "resnet50-int8": (ROOT / "build/models/resnet50-int8/1/model.onnx", "resnet50"),
        "resnet18": (ROOT / "build/models/resnet18/1/model.onnx", "resnet18"),
        "resnet18-int8": (ROOT / "build/models/resnet18-int8/1/model.onnx", "resnet18"),
    }
    repos = {name: model_repo(name, path, imagenet) for name, (path, _) in models.items()}
    # Tessera's onnxruntime engine (the .venv wheel's library, found by the binary itself).
    for name in ["resnet50", "resnet18"]:
        repos[f"{name}-ort"] = model_repo(f"{name}-ort", models[name][0], imagenet, engine="onnxruntime")
    repos["shapes"] = ROOT / "models"
    shapes_dir = WORK / "shapes-images"
    if not shapes_dir.exists():
        subprocess.run([str(ROOT / ".venv/bin/python"), str(ROOT / "models/tools/generate_shapes.py"), "--seed", "31",
                        "--per-class", "2", "--out", str(shapes_dir)], check=True, capture_output=True)
    shapes_set = [p.read_bytes() for p in sorted(shapes_dir.rglob("*")) if p.suffix in (".png", ".jpg")][:16]

    closed = [1, 4] if args.quick else [1, 4, 16]
    rates = [4.0, 12.0] if args.quick else [4.0, 8.0, 16.0, 24.0]
    modes = ["adaptive"] if args.quick else ["adaptive", "throughput", "latency"]

    # (system name, how to start it, model family for agreement, cells)
    plan = []

    def cells_full(img):
        return [("closed", c, img) for c in closed] + [("open", r, img) for r in rates]

    r50_peers = [("seed-ort", lambda: start_seed("seed-ort", VENV_PEERS, "onnxruntime", models["resnet50"][0], "resnet50"))]
    if torch:
        r50_peers.insert(0, ("seed-torch", lambda: start_seed("seed-torch", VENV_TORCH, "torch", models["resnet50"][0],
                                                              "resnet50")))
    photo_cells = [("closed", 4, "photo-1080p"), ("closed", 4, "photo-12mp")]
    for name, start in r50_peers:
        plan.append(("resnet50", name, start, cells_full("photo-224") + photo_cells))
    for engine, repo in [("fp32", "resnet50"), ("int8", "resnet50-int8")]:
        for mode in modes:
            sysname = f"tessera-{engine}-{mode}"
            extra = photo_cells if mode == "adaptive" else []
            plan.append(("resnet50", sysname, lambda r=repo, m=mode, s=sysname: start_tessera(s, repos[r], m),
                         cells_full("photo-224") + extra))
    plan.append(("resnet50", "tessera-ort", lambda: start_tessera("tessera-ort", repos["resnet50-ort"], "adaptive"),
                 cells_full("photo-224") + photo_cells))
    # The same server over the seed's gRPC service: the very client that drives the seed's systems.
    plan.append(("resnet50", "tessera-fp32-grpc",
                 lambda: start_tessera("tessera-fp32-grpc", repos["resnet50"], "adaptive", grpc=True),
                 [("closed", c, "photo-224") for c in [1, 4]]))
    r18 = [("closed", c, "photo-224") for c in [1, 4]]
    plan.append(("resnet18", "seed-ort", lambda: start_seed("seed-ort", VENV_PEERS, "onnxruntime",
                                                            models["resnet18"][0], "resnet18"), r18))
    if torch and not args.quick:
        plan.append(("resnet18", "seed-torch", lambda: start_seed("seed-torch", VENV_TORCH, "torch",
                                                                  models["resnet18"][0], "resnet18"), r18))
    for engine, repo in [("fp32", "resnet18"), ("int8", "resnet18-int8")]:
        plan.append(("resnet18", f"tessera-{engine}-adaptive",
                     lambda r=repo, e=engine: start_tessera(f"tessera-{e}-adaptive", repos[r], "adaptive"), r18))
    plan.append(("resnet18", "tessera-ort",
                 lambda: start_tessera("tessera-ort", repos["resnet18-ort"], "adaptive"), r18))
    plan.append(("shapes", "seed-ort", lambda: start_seed("seed-ort", VENV_PEERS, "onnxruntime",
                                                          ROOT / "models/shapes/1/model.onnx", "resnet18"), r18))
    plan.append(("shapes", "tessera-fp32-adaptive",
                 lambda: start_tessera("tessera-fp32-adaptive", repos["shapes"], "adaptive"), r18))
    plan.append(("shapes", "tessera-fp32-grpc",
                 lambda: start_tessera("tessera-fp32-grpc", repos["shapes"], "adaptive", grpc=True), r18))

    if args.batching:
        secs = 10.0
        plan = []
        batch_cells = [("closed", c, "photo-224") for c in [4, 8, 16]]
        for name in ["resnet50", "resnet18"]:
            path = models[name][0]
            plan.append((name, "seed-ort", lambda p=path, n=name: start_seed("seed-ort", VENV_PEERS, "onnxruntime", p, n),
                         batch_cells))
            plan.append((name, "tessera-fp32-adaptive",
                         lambda n=name: start_tessera("tessera-fp32-adaptive", repos[n], "adaptive"), batch_cells))
            for label, batch in [("tessera-ort", None), ("tessera-ort-b4", (4, 0)), ("tessera-ort-b8-2ms", (8, 2000))]:
                repo = model_repo(f"{name}-{label}", path, imagenet, engine="onnxruntime", batch=batch)
                plan.append((name, label, lambda r=repo, s=label: start_tessera(s, r, "adaptive"), batch_cells))
    results = {"quick": args.quick, "seconds_per_cell": secs, "cells": [], "systems": {}, "agreement": {}}
    only = {k for k in args.only.split(",") if k}
    run = 0
    if only:
        results = json.loads((OUT / "results.json").read_text())
        tag_legacy_runs(results)
        results["cells"] = [c for c in results["cells"] if f"{c['model']}/{c['system']}" not in only]
        plan = [p for p in plan if f"{p[0]}/{p[1]}" in only]
        results.setdefault("rerun", []).extend(sorted(only))
        run = 1 + max((c["run"] for c in results["cells"]), default=0)
    # What each run's rows need above them: command, date, commit, CPU (docs/PERFORMANCE.md).
    results.setdefault("headers", {})[str(run)] = run_header("just bench-peers " + " ".join(sys.argv[1:]))
    for model, name, start, cells in plan:
        print(f"{model} / {name}", flush=True)
        server = start()
        key = f"{model}/{name}"
        try:
            agree_images = agreement_set if model != "shapes" else shapes_set
            first = None
            for kind, x, img in cells:
                cell = load(server, images[img], secs, concurrency=x if kind == "closed" else None,
                            rate=x if kind == "open" else None)
                cell.update(model=model, system=name, image=img, run=run)
                results["cells"].append(cell)
                first = first or cell.get("timings_ms_first")
            results["systems"][key] = {"ready_s": round(server.ready_s, 2), "timings_ms_first": first}
            results["agreement"][key] = top1_indices(server, agree_images)
        finally:
            server.stop()
    if args.batching:
        (OUT / "batching.json").write_text(json.dumps(results, indent=1) + "\n")
        write_batching(results)
        return
    (OUT / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    write_summary(results)
    plot(results)
    print(f"wrote {OUT}/results.json, summary.md, latency-vs-load.png")


def write_batching(results: dict) -> None:
    """docs/bench-peers/batching.md: rps (p50, p99) per system and concurrency, and the ratio
    to seed-ort's rps in the same run."""
    lines = ["# Dynamic batching (`bench/peers/run.py --batching`)", "",
             f"Closed loop, 224 px JPEG, {results['seconds_per_cell']:.0f} s per cell. "
             "rps (p50 / p99 ms), ×: rps / seed-ort's at the same concurrency.", ""]
    for model in ["resnet50", "resnet18"]:
        cells = [c for c in results["cells"] if c["model"] == model]
        systems = list(dict.fromkeys(c["system"] for c in cells))
        conc = sorted({c["concurrency"] for c in cells})
        lines += [f"## {model}", "", "| system | " + " | ".join(f"c={c}" for c in conc) + " |",
                  "|---|" + "---|" * len(conc)]
        for system in systems:
            row = []
            for c in conc:
                cell = next((x for x in cells if x["system"] == system and x["concurrency"] == c), None)
                ref = next((x for x in cells if x["system"] == "seed-ort" and x["concurrency"] == c), None)
                if cell is None:
                    row.append("-")
                    continue
                ratio = f" {cell['rps'] / ref['rps']:.2f}×" if ref and ref["rps"] else ""
                errs = sum(cell["errors"].values())
                row.append(f"{cell['rps']:.1f} ({cell['p50_ms']:.0f} / {cell['p99_ms']:.0f}){ratio}"
                           + (f", {errs} errors" if errs else ""))
            lines.append(f"| {system} | " + " | ".join(row) + " |")
        lines.append("")
    (OUT / "batching.md").write_text("\n".join(lines))
    print("\n".join(lines))


def tag_legacy_runs(results: dict) -> None:
    """Gives cells written before cells carried their run a `run`: 0 for the full run, then one per
    `--only` run merged afterwards, in order. `rerun` holds each of those runs' keys sorted, one run
    after the other, so a run starts wherever the sorted order breaks; a key's cells come from the
    last run that named it."""
    if all("run" in c for c in results["cells"]):
        return
    runs: list[list[str]] = []
    for key in results.get("rerun", []):
        if not runs or key <= runs[-1][-1]:
            runs.append([])
        runs[-1].append(key)
    last = {key: i + 1 for i, keys in enumerate(runs) for key in keys}
    for c in results["cells"]:
        c.setdefault("run", last.get(f"{c['model']}/{c['system']}", 0))


def write_summary(results: dict) -> None:
    tag_legacy_runs(results)
    cells = results["cells"]

    def errors(cell) -> str:
        return ", ".join(f"{k} ×{v}" for k, v in cell["errors"].items()) or "0"

    def ref(cell, system):
        """The reference system's cell under the same load in the same run: a ratio never pairs
        figures of two runs."""
        for c in cells:
            if (c["model"], c["image"], c["mode"], c["concurrency"], c["rate"], c["system"], c["run"]) == (
                    cell["model"], cell["image"], cell["mode"], cell["concurrency"], cell["rate"], system,
                    cell["run"]):
                return c
        return None

    lines = [f"# bench-peers results ({'quick' if results['quick'] else 'full'} run, "
             f"{results['seconds_per_cell']:.0f} s per cell)", ""]
    runs = sorted({c["run"] for c in cells})
    headers = results.get("headers", {})
    lines += [f"Run {r}: " + headers.get(str(r), "command, date, commit and CPU not recorded (before 2026-12-07)")
              for r in runs] + [""]
    if runs != [0]:
        lines += ["The rows come from more than one run: `run` 0 is the full run, each higher number a run of "
                  "some systems merged afterwards (`--only`), after a change (a run whose rows were all "
                  "replaced by a later one is not listed):", ""]
        for r in runs:
            keys = sorted({f"{c['model']}/{c['system']}" for c in cells if c["run"] == r})
            lines.append(f"- run {r}: {', '.join(keys)}")
        lines.append("")
    lines += [
             "Ratios are to the cell of `seed-torch` / `seed-ort` under the same load **in the same run**; "
             "– where that run did not run the reference (rps: higher is better; p50: lower is better).", "",
             "| model | image | load | system | run | rps | p50 ms | p90 ms | p99 ms | errors | CPU s/img | "
             "peak RSS MiB | rps / torch | rps / ort | p50 / ort |", "|" + "---|" * 15]
    for c in cells:
        load = f"c={c['concurrency']}" if c["mode"] == "closed" else f"{c['rate']:g} rps open"
        torch, ort = ref(c, "seed-torch"), ref(c, "seed-ort")

        def ratio(a, b, key):
            return f"{a[key] / b[key]:.2f}×" if b and b[key] and a[key] == a[key] else "–"

        lines.append(f"| {c['model']} | {c['image']} | {load} | {c['system']} | {c['run']} | {c['rps']} | {c['p50_ms']} | "
                     f"{c['p90_ms']} | {c['p99_ms']} | {errors(c)} | {c['cpu_s_per_image']} | "
                     f"{c['server_peak_rss_mib']} | {ratio(c, torch, 'rps')} | {ratio(c, ort, 'rps')} | "
                     f"{ratio(c, ort, 'p50_ms')} |")
    lines += ["", "## Top-1 agreement (16 photos; 16 shapes images for the default model), by class index, "
              "against seed-ort of the same model", ""]
    for key, idx in results["agreement"].items():
        model = key.split("/")[0]
        base = results["agreement"].get(f"{model}/seed-ort")
        same = sum(a == b for a, b in zip(idx, base)) if base else 0
        lines.append(f"- {key}: {same}/{len(idx)}")
    lines += ["", "## Tessera per-stage timings_ms (first answers after start; settled = mean over the c=4 cell)",
              ""]
    for key, s in results["systems"].items():
        if "tessera" not in key:
            continue
        model, name = key.split("/")
        settled = next((c["timings_ms_settled"] for c in cells
                        if c["model"] == model and c["system"] == name and c["concurrency"] == 4
                        and c["image"] == "photo-224"), {})
        lines.append(f"- {key} (ready in {s['ready_s']} s): first {s['timings_ms_first']}; settled {settled}")
    (OUT / "summary.md").write_text("\n".join(lines) + "\n")


def plot(results: dict) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plot")
        return
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    open_cells = [c for c in results["cells"] if c["mode"] == "open" and c["model"] == "resnet50"]
    for system in sorted({c["system"] for c in open_cells}):
        pts = sorted((c["rate"], c["p50_ms"], c["p99_ms"], c["rps"]) for c in open_cells if c["system"] == system)
        axes[0].plot([p[0] for p in pts], [p[2] for p in pts], marker="o", label=system)
        axes[1].plot([p[0] for p in pts], [p[3] for p in pts], marker="o", label=system)
    axes[0].set(xlabel="offered load (requests/s, open loop)", ylabel="p99 latency (ms)", yscale="log",
                title="ResNet-50, 224 px JPEG: p99 vs offered load")
    axes[1].set(xlabel="offered load (requests/s, open loop)", ylabel="answered (requests/s)",
                title="answered vs offered")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(OUT / "latency-vs-load.png", dpi=110)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
