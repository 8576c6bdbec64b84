#!/usr/bin/env python3
"""`just edge-aarch64`: the runtime-only server cross-built for aarch64, run under qemu-user beside
the x86_64 build it must agree with (never in CI; `./run edge-aarch64` installs the tools).

- The guests are compiled by the x86_64 full build with `tessera compile --target
  aarch64-unknown-linux-gnu` (baseline ARMv8): the aarch64 binary has no compiler.
- `tessera classify`, aarch64 under qemu against x86_64 natively (the same guests as .wasm, compiled
  there), on a held-out set of labelled shapes images, for the default model and its int8 version:
  the same top-1 on every image, every class's score within SCORE_TOLERANCE.
- The raw logits: both builds serve, and the same FP32 tensors (the images, resized, cropped and
  normalised here) go through OIP `/v2/models/{m}/infer` on each, where the model alone runs; the
  largest |Δ logit| must stay within LOGIT_TOLERANCE.
- A 39-bit address space (qemu's -R 512 GiB, as on Raspberry Pi OS): the default guest pool is
  refused at start, naming `limits.guest_memory_reservation_bytes`; with it at 256 MiB (and the
  guests compiled with that config) the same images classify as on x86_64.
- The library's unit tests (the int8 byte-identity checks among them), built for aarch64, under qemu.

qemu-user runs one process and cannot exec another architecture's binary, so the model load
probe (a child `tessera` process) runs through a wrapper that starts it under qemu, as binfmt_misc
would. qemu-user does not enforce the probe's address-space limit (it ignores a guest's
RLIMIT_AS), so that bound is not exercised here. Writes docs/edge/aarch64.json.

    .venv/bin/python bench/edge/aarch64.py [--per-class 3]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from check import free_port, wait_ready  # noqa: E402 (bench/edge/check.py, beside this file)

ROOT = Path(__file__).resolve().parents[2]
WORK = ROOT / "target" / "edge-aarch64"
OUT = ROOT / "docs" / "edge"
TRIPLE = "aarch64-unknown-linux-gnu"
ARM = ROOT / f"target/{TRIPLE}/release/tessera"
X86 = ROOT / "target/release/tessera"
QEMU = ["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu"]
GUESTS = ["preprocess", "postprocess", "rules-threshold"]
MODELS = ["shapes", "shapes-int8"]
# A seed neither training (1) nor validation (1001) nor the tests' held-out sets use.
SEED = 7331
# Softmax scores of the same image, aarch64 against x86_64, on every class.
SCORE_TOLERANCE = 1e-5
# Raw logits of the same tensor, on every class (they span about 10-20). Not zero: the kernels
# differ (tract's arm64 ones against ours or the `gemm` crate's on x86_64), so float sums run in
# another order; int8 sums are exact, but dequantized and pooled in float. The first run saw
# 1e-6 at most (docs/EDGE.md): a hundred times that is still far below a decision's margin.
LOGIT_TOLERANCE = {"shapes": 1e-4, "shapes-int8": 1e-4}
# A 39-bit address space, and the guest pool's reservation per memory that fits in it
# (`limits.guest_memory_bytes`'s default).
VA_39_BIT = 512 << 30
SMALL_RESERVATION = 256 << 20
# Generous: qemu emulates every instruction; the models are small but tract's kernels are SIMD.
DEADLINE_MS = 600_000


def probe_wrapper(name: str, qemu: list[str]) -> Path:
    """The load probe's wrapper: the child `tessera` runs under qemu as the parent does."""
    probe = WORK / name
    probe.write_text(f'#!/bin/sh\nexec {" ".join(qemu)} "{ARM}" "$@"\n')
    probe.chmod(0o755)
    return probe


def config(name: str, guests: str, probe: Path | None = None, limits: str = "") -> Path:
    """A config serving the repository's models with guests `WORK/<guest><guests>`."""
    path = WORK / f"{name}.toml"
    # The x86_64 build compiles the .wasm guests once, into a cache; the aarch64 one compiles nothing.
    cache = WORK / "compile-cache" if guests == ".wasm" else "off"
    probe_line = f'[inference]\nload_probe = "{probe}"\n' if probe else ""
    path.write_text(
        f'models_dir = "{ROOT / "models"}"\ncompile_cache_dir = "{cache}"\nwatch = false\n{probe_line}'
        f'[limits]\ndeadline_ms = {DEADLINE_MS}\nmodel_load_timeout_ms = {DEADLINE_MS}\n{limits}'
        f'[guests]\npreprocess = "{WORK / ("preprocess" + guests)}"\npostprocess = "{WORK / ("postprocess" + guests)}"\n'
        f'[[guests.rules]]\npath = "{WORK / ("rules-threshold" + guests)}"\n')
    return path


def compile_guests(suffix: str, compile_config: Path | None = None) -> None:
    """The guests as aarch64 .cwasm (`WORK/<guest><suffix>`), compiled by the x86_64 full build."""
    extra = ["--config", str(compile_config)] if compile_config else []
    for g in GUESTS:
        subprocess.run([str(X86), "compile", "--no-compile-cache", "--target", TRIPLE, *extra,
                        str(ROOT / f"target/guests/{g}.wasm"), "-o", str(WORK / f"{g}{suffix}")],
                       check=True, stdout=subprocess.DEVNULL)


def setup(per_class: int) -> tuple[Path, Path, list[tuple[Path, str]]]:
    """The aarch64 guests, the two configs and the labelled images."""
    WORK.mkdir(parents=True, exist_ok=True)
    compile_guests(".cwasm")
    for g in GUESTS:
        wasm = WORK / f"{g}.wasm"
        wasm.unlink(missing_ok=True)
        wasm.symlink_to(ROOT / f"target/guests/{g}.wasm")
    arm = config("aarch64", ".cwasm", probe_wrapper("tessera-probe", QEMU))
    x86 = config("x86_64", ".wasm")
    images = WORK / f"shapes-{SEED}-{per_class}"
    if not (images / "labels.csv").is_file():
        subprocess.run([sys.executable, str(ROOT / "models/tools/generate_shapes.py"), "--seed", str(SEED),
                        "--per-class", str(per_class), "--out", str(images)], check=True)
    rows = (images / "labels.csv").read_text().splitlines()[1:]
    cases = [(images / f, label) for f, label in (row.split(",", 1) for row in rows)]
    return arm, x86, cases


def classify(command: list[str], config: Path, model: str, image: Path) -> tuple[dict, float]:
    started = time.perf_counter()
    done = subprocess.run(command + ["classify", "--config", str(config), "--model", model, "--top-k", "8",
                                     "--no-watch", str(image)], capture_output=True, text=True, timeout=900)
    took = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[-1:])} classify {image.name} ({model}): {done.stderr[-2000:]}")
    return json.loads(done.stdout), took


def compare_classify(arm_config: Path, x86_config: Path, cases: list[tuple[Path, str]]) -> dict:
    result = {}
    for model in MODELS:
        rows = []
        for image, label in cases:
            a, a_s = classify(QEMU + [str(ARM)], arm_config, model, image)
            x, x_s = classify([str(X86)], x86_config, model, image)
            scores_a = {t["label"]: t["score"] for t in a["top_k"]}
            scores_x = {t["label"]: t["score"] for t in x["top_k"]}
            assert scores_a.keys() == scores_x.keys(), (scores_a, scores_x)
            diff = max(abs(scores_a[k] - scores_x[k]) for k in scores_a)
            rows.append({"image": image.name, "label": label, "aarch64": a["label"], "x86_64": x["label"],
                         "max_score_diff": diff, "aarch64_accepted": a["decision"]["accepted"],
                         "x86_64_accepted": x["decision"]["accepted"], "aarch64_s": round(a_s, 2),
                         "x86_64_s": round(x_s, 3), "aarch64_timings_ms": a["timings_ms"]})
            print(f"classify {model} {image.name}: {label} -> aarch64 {a['label']} / x86_64 {x['label']}, "
                  f"max |Δscore| {diff:.2e}, {a_s:.1f} s under qemu", flush=True)
        result[model] = {
            "images": len(rows),
            "same_top1": sum(r["aarch64"] == r["x86_64"] for r in rows),
            "same_decision": sum(r["aarch64_accepted"] == r["x86_64_accepted"] for r in rows),
            "correct_aarch64": sum(r["aarch64"] == r["label"] for r in rows),
            "correct_x86_64": sum(r["x86_64"] == r["label"] for r in rows),
            "max_score_diff": max(r["max_score_diff"] for r in rows),
            "rows": rows,
        }
    return result


def tensor(image: Path) -> np.ndarray:
    """The model's input for `image`: shorter side to 256, centre 224×224, ImageNet-normalised
    (what model.toml asks of the preprocess guest; here only to give both builds the same input)."""
    img = Image.open(image).convert("RGB")
    w, h = img.size
    scale = 256 / min(w, h)
    img = img.resize((max(224, round(w * scale)), max(224, round(h * scale))), Image.BILINEAR)
    w, h = img.size
    left, top = (w - 224) // 2, (h - 224) // 2
    x = np.asarray(img.crop((left, top, left + 224, top + 224)), dtype=np.float32) / 255.0
    x = (x - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
    return x.transpose(2, 0, 1)[None].astype(np.float32)


class Server:
    def __init__(self, command: list[str], config: Path, name: str):
        self.port = free_port()
        self.log = open(WORK / f"serve-{name}.log", "w")
        started = time.perf_counter()
        self.proc = subprocess.Popen(command + ["serve", "--config", str(config), "--addr", f"127.0.0.1:{self.port}",
                                                "--grpc-addr", "off", "--admin-addr", "off"],
                                     stdout=subprocess.DEVNULL, stderr=self.log)
        try:
            wait_ready(self.proc, self.port, started + 600, 0.05, f"{name} (see {self.log.name})")
        except BaseException:
            self.stop()
            raise
        self.ready_s = time.perf_counter() - started

    def infer(self, model: str, x: np.ndarray) -> np.ndarray:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/v2/models/{model}", timeout=60) as r:
            name = json.load(r)["inputs"][0]["name"]
        body = json.dumps({"inputs": [{"name": name, "shape": list(x.shape), "datatype": "FP32",
                                       "data": x.ravel().tolist()}]}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/v2/models/{model}/infer", data=body,
                                     headers={"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=900) as r:
            return np.array(json.load(r)["outputs"][0]["data"], dtype=np.float64)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)
        self.log.close()


def compare_logits(arm_config: Path, x86_config: Path, cases: list[tuple[Path, str]]) -> dict:
    arm = Server(QEMU + [str(ARM)], arm_config, "aarch64")
    try:
        x86 = Server([str(X86)], x86_config, "x86_64")
        try:
            result = {"aarch64_ready_s": round(arm.ready_s, 2), "x86_64_ready_s": round(x86.ready_s, 3)}
            for model in MODELS:
                diffs, spans, same = [], [], 0
                for image, _ in cases:
                    x = tensor(image)
                    a, b = arm.infer(model, x), x86.infer(model, x)
                    diffs.append(float(np.max(np.abs(a - b))))
                    spans.append(float(np.max(b) - np.min(b)))
                    same += int(np.argmax(a) == np.argmax(b))
                result[model] = {"tensors": len(cases), "same_argmax": same, "max_abs_logit_diff": max(diffs),
                                 "median_abs_logit_diff": float(np.median(diffs)), "tolerance": LOGIT_TOLERANCE[model],
                                 "smallest_logit_span": min(spans)}
                print(f"logits {model}: max |Δ| {max(diffs):.3g} (tolerance {LOGIT_TOLERANCE[model]}), "
                      f"argmax equal on {same}/{len(cases)}", flush=True)
            return result
        finally:
            x86.stop()
    finally:
        arm.stop()


def small_address_space(cases: list[tuple[Path, str]], expected: dict) -> dict:
    """The aarch64 build in a 39-bit address space (qemu's -R: 512 GiB, what Raspberry Pi OS's
    kernels give a process): the default guest pool (about 1 TiB) cannot be reserved and the start
    says so; with `guest_memory_reservation_bytes = guest_memory_bytes`, and guests compiled with
    that setting, it classifies as x86_64 does (`expected`: x86_64's labels per model and image)."""
    qemu = QEMU + ["-R", str(VA_39_BIT)]
    probe = probe_wrapper("tessera-probe-39bit", qemu)
    limits = f"guest_memory_reservation_bytes = {SMALL_RESERVATION}\n"
    compile_config = WORK / "small-compile.toml"
    compile_config.write_text(f"[limits]\n{limits}")
    compile_guests(".small.cwasm", compile_config)
    default = config("aarch64-39bit-default", ".cwasm", probe)
    small = config("aarch64-39bit-small", ".small.cwasm", probe, limits)
    image = cases[0][0]
    refused = subprocess.run(qemu + [str(ARM), "classify", "--config", str(default), str(image)],
                             capture_output=True, text=True, timeout=900, env=os.environ | {"RUST_BACKTRACE": "0"})
    result = {"reserved_va_bytes": VA_39_BIT, "default_pool_refused": refused.returncode != 0,
              "default_pool_error": next((line for line in refused.stderr.splitlines() if line.startswith("Error:")), "")}
    print(f"39-bit, default pool: exit {refused.returncode}: {result['default_pool_error']}", flush=True)
    for model in MODELS:
        same = 0
        for image, _ in cases:
            body, _ = classify(qemu + [str(ARM)], small, model, image)
            same += int(body["label"] == expected[model][image.name])
        result[model] = {"images": len(cases), "same_top1_as_x86_64": same}
        print(f"39-bit, small pool, {model}: top-1 as x86_64 on {same}/{len(cases)}", flush=True)
    return result


def unit_tests() -> dict:
    """The library's unit tests in the runtime-only feature set (our tract patches' byte-identity
    checks among them), built for aarch64 and run under qemu by cargo's runner (.cargo/config.toml)."""
    command = ["cargo", "test", "--release", "--target", TRIPLE, "-p", "tessera", "--lib", "--no-default-features",
               "--features", "tract-patches", "--", "--nocapture", "--test-threads", "2"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=3600)
    (WORK / "unit-tests.log").write_text(done.stdout + done.stderr)
    summary = [line for line in done.stdout.splitlines() if line.startswith("test result:")]
    said = [line.strip() for line in done.stdout.splitlines() if "on this CPU" in line]
    print("\n".join(summary + said), flush=True)
    return {"command": " ".join(command), "passed": done.returncode == 0, "summary": summary, "packing_notes": said}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-class", type=int, default=3)
    args = ap.parse_args()
    for path in (ARM, X86):
        if not path.is_file():
            sys.exit(f"{path} is missing: `just edge-aarch64` builds it")
    arm_config, x86_config, cases = setup(args.per_class)
    stripped = WORK / "tessera.stripped"
    subprocess.run(["aarch64-linux-gnu-objcopy", "--strip-all", str(ARM), str(stripped)], check=True)
    qemu = subprocess.run(QEMU[:1] + ["--version"], capture_output=True, text=True).stdout.splitlines()[0]
    record = {
        "command": "just edge-aarch64", "qemu": qemu, "host": os.uname().machine, "target": TRIPLE,
        "stripped_bytes": stripped.stat().st_size, "score_tolerance": SCORE_TOLERANCE,
        "classify": compare_classify(arm_config, x86_config, cases),
        "logits": compare_logits(arm_config, x86_config, cases),
    }
    expected = {m: {r["image"]: r["x86_64"] for r in record["classify"][m]["rows"]} for m in MODELS}
    record |= {
        "address_space_39_bit": small_address_space(cases, expected),
        "unit_tests": unit_tests(),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "aarch64.json").write_text(json.dumps(record, indent=2) + "\n")
    failures = []
    for model in MODELS:
        c, lg = record["classify"][model], record["logits"][model]
        print(f"{model}: top-1 equal on {c['same_top1']}/{c['images']} images (correct: aarch64 {c['correct_aarch64']}, "
              f"x86_64 {c['correct_x86_64']}), max |Δscore| {c['max_score_diff']:.2e}, "
              f"max |Δlogit| {lg['max_abs_logit_diff']:.3g}")
        if c["same_top1"] != c["images"] or c["same_decision"] != c["images"]:
            failures.append(f"{model}: top-1 or decision differs")
        if c["max_score_diff"] > SCORE_TOLERANCE:
            failures.append(f"{model}: a score differs by {c['max_score_diff']:.2e} > {SCORE_TOLERANCE}")
        if lg["max_abs_logit_diff"] > LOGIT_TOLERANCE[model] or lg["same_argmax"] != lg["tensors"]:
            failures.append(f"{model}: logits differ by {lg['max_abs_logit_diff']:.3g} > {LOGIT_TOLERANCE[model]}")
    small = record["address_space_39_bit"]
    if not small["default_pool_refused"] or "guest_memory_reservation_bytes" not in small["default_pool_error"]:
        failures.append("39-bit: the default pool was not refused with the setting named")
    if any(small[m]["same_top1_as_x86_64"] != small[m]["images"] for m in MODELS):
        failures.append("39-bit: the small pool classified differently")
    if not record["unit_tests"]["passed"]:
        failures.append(f"unit tests under qemu failed: see {WORK / 'unit-tests.log'}")
    if failures:
        sys.exit("\n".join(failures))


if __name__ == "__main__":
    main()
