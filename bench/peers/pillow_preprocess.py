#!/usr/bin/env python3
"""Pillow's preprocessing of JPEG files, timed: the seed's path (full decode, Resize(256) with
PIL's antialiased bilinear, CenterCrop(224), normalize) and the same with `draft()` (libjpeg's
DCT-domain 1/2-1/8 scaling to at least 256 px per side first). Prints one JSON object per file:
{"image", "full_ms", "draft_ms"} (medians of --runs) and every run's time in "full_all" /
"draft_all" (so a caller running it in rounds can take the median over all of them).

    python bench/peers/pillow_preprocess.py --runs 20 a.jpg b.jpg
"""
from __future__ import annotations

import argparse
import io
import json
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def preprocess(data: bytes, draft: bool) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    if draft:
        image.draft("RGB", (256, 256))
    image = image.convert("RGB")
    w, h = image.size
    size = (256, int(256 * h / w)) if w <= h else (int(256 * w / h), 256)
    image = image.resize(size, Image.BILINEAR)
    w, h = image.size
    left, top = int(round((w - 224) / 2.0)), int(round((h - 224) / 2.0))
    x = np.asarray(image.crop((left, top, left + 224, top + 224)), dtype=np.float32) / 255.0
    return np.ascontiguousarray(((x - MEAN) / STD).transpose(2, 0, 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("images", nargs="+", type=Path)
    args = ap.parse_args()
    for path in args.images:
        data = path.read_bytes()
        times = {False: [], True: []}
        for _ in range(args.runs):
            for draft in (False, True):  # interleaved: both see the same machine
                t = time.perf_counter()
                preprocess(data, draft)
                times[draft].append((time.perf_counter() - t) * 1e3)
        print(json.dumps({"image": str(path), "full_ms": statistics.median(times[False]),
                          "draft_ms": statistics.median(times[True]), "full_all": times[False],
                          "draft_all": times[True]}), flush=True)


if __name__ == "__main__":
    main()
