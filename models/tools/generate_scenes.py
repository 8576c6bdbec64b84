#!/usr/bin/env python3
"""Deterministic generator of Tessera's "shapes-detect" scenes: images with boxes as labels.

Each scene is a textured background (generate_shapes.background) with one to five shapes of
the eight classes, each at its own position, size, rotation and colour, overlapping little.
A shape's box is the tight box of its rendered pixels (a rotated star's, a crescent's), in
the pixels of the image as written: `[x_min, y_min, x_max, y_max]`, x_max and y_max exclusive.
Image sizes and encodings (PNG or JPEG) vary; the same seed gives the same bytes for the
pinned numpy/Pillow (see requirements.txt).

    python models/tools/generate_scenes.py --seed 1 --count 4000 --out build/scenes-train

writes the images and `labels.jsonl`, one line per image:
`{"file": "00000.png", "width": 320, "height": 240, "objects": [{"label": "star", "box": [x0, y0, x1, y1]}]}`.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import multiprocessing
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from generate_shapes import CLASSES, background, contrasting_colour, shape_mask

SIZES = [(256, 256), (320, 240), (240, 320), (300, 300), (400, 300), (288, 352), (512, 384), (640, 480)]
MAX_OBJECTS = 5


def place(rng: np.random.Generator, size: tuple[int, int], taken: list[tuple[float, float, float]]):
    """A centre and radius for a new shape that stays inside the image and keeps apart from the
    shapes already `taken` (centres at least 0.9 × the sum of radii apart); None if none fits."""
    w, h = size
    short = min(w, h)
    for _ in range(60):
        radius = rng.uniform(0.08, 0.22) * short
        cx = rng.uniform(radius + 2, w - radius - 2)
        cy = rng.uniform(radius + 2, h - radius - 2)
        if all(math.hypot(cx - x, cy - y) > 0.9 * (radius + r) for x, y, r in taken):
            return cx, cy, radius
    return None


def render(rng: np.random.Generator) -> tuple[bytes, str, tuple[int, int], list[dict]]:
    size = SIZES[int(rng.integers(0, len(SIZES)))]
    w, h = size
    img = background(rng, size)
    objects, taken = [], []
    for _ in range(int(rng.integers(1, MAX_OBJECTS + 1))):
        spot = place(rng, size, taken)
        if spot is None:
            continue
        cx, cy, radius = spot
        taken.append(spot)
        cls = CLASSES[int(rng.integers(0, len(CLASSES)))]
        rotation = rng.uniform(0, 2 * math.pi)
        alpha = np.asarray(shape_mask(cls, size, cx, cy, radius, rotation), dtype=np.float32)[..., None] / 255.0
        # The colour contrasts with the background under the shape, not the whole image's.
        y0, y1 = max(int(cy - radius), 0), min(int(cy + radius) + 1, h)
        x0, x1 = max(int(cx - radius), 0), min(int(cx + radius) + 1, w)
        colour = contrasting_colour(rng, img[y0:y1, x0:x1].reshape(-1, 3).mean(axis=0))
        fg = colour[None, None, :] + rng.normal(0, rng.uniform(0, 10), img.shape)
        img = img * (1 - alpha) + fg * alpha
        ys, xs = np.nonzero(alpha[..., 0] >= 0.5)
        objects.append({"label": cls, "box": [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]})
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    if rng.uniform() < 0.2:
        pil = pil.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
    buf = io.BytesIO()
    if rng.uniform() < 0.35:
        pil.save(buf, format="JPEG", quality=int(rng.integers(75, 96)))
        return buf.getvalue(), "jpg", size, objects
    pil.save(buf, format="PNG")
    return buf.getvalue(), "png", size, objects


def scene(job: tuple[int, int, Path]) -> dict:
    """Scene `i` of set `seed`, written to `out`: its own generator, so scenes render in parallel
    and the set is the same whatever the number of processes."""
    seed, i, out = job
    data, ext, (w, h), objects = render(np.random.default_rng([seed, i]))
    name = f"{i:05d}.{ext}"
    (out / name).write_bytes(data)
    return {"file": name, "width": w, "height": h, "objects": objects}


def generate(seed: int, count: int, out: Path) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    with multiprocessing.Pool(os.cpu_count()) as pool:
        rows = pool.map(scene, [(seed, i, out) for i in range(count)], chunksize=16)
    with open(out / "labels.jsonl", "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, required=True, help="RNG seed: training and held-out sets use different seeds")
    p.add_argument("--count", type=int, required=True, help="number of scenes")
    p.add_argument("--out", type=Path, required=True, help="output directory (gets the images and labels.jsonl)")
    args = p.parse_args()
    rows = generate(args.seed, args.count, args.out)
    print(f"wrote {len(rows)} scenes ({sum(len(r['objects']) for r in rows)} objects) to {args.out}")


if __name__ == "__main__":
    main()
