#!/usr/bin/env python3
"""Deterministic generator of Tessera's labelled "shapes" image set.

Eight classes of coloured geometric shapes on textured backgrounds, with random position,
scale, rotation, colours, noise, image size and encoding (PNG or JPEG). Every shape stays
inside the central crop the server takes (shorter side -> 256, centre 224), so the label is
always visible to the model. The same seed gives the same bytes for the pinned numpy/Pillow
(see requirements.txt).

    python models/tools/generate_shapes.py --seed 1 --per-class 500 --out build/shapes-train
"""
from __future__ import annotations

import argparse
import csv
import io
import math
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASSES = ["circle", "square", "triangle", "star", "cross", "ring", "crescent", "hexagon"]
SIZES = [(256, 256), (320, 240), (240, 320), (300, 300), (400, 300), (288, 352), (512, 384)]
SUPERSAMPLE = 3
ROOT = Path(__file__).resolve().parents[2]


def regular_polygon(n: int, radius: float, rotation: float, cx: float, cy: float):
    return [
        (cx + radius * math.cos(rotation + 2 * math.pi * k / n), cy + radius * math.sin(rotation + 2 * math.pi * k / n))
        for k in range(n)
    ]


def star(radius: float, rotation: float, cx: float, cy: float):
    pts = []
    for k in range(10):
        r = radius if k % 2 == 0 else radius * 0.42
        a = rotation + math.pi * k / 5
        pts.append((cx + r * math.cos(a), cy + r * math.sin(a)))
    return pts


def cross(radius: float, rotation: float, cx: float, cy: float):
    w = 0.36 * radius
    base = [(-w, -radius), (w, -radius), (w, -w), (radius, -w), (radius, w), (w, w),
            (w, radius), (-w, radius), (-w, w), (-radius, w), (-radius, -w), (-w, -w)]
    c, s = math.cos(rotation), math.sin(rotation)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in base]


def shape_mask(cls: str, size: tuple[int, int], cx: float, cy: float, radius: float, rotation: float) -> Image.Image:
    """An anti-aliased coverage mask (mode L) of one shape."""
    w, h = size
    k = SUPERSAMPLE
    mask = Image.new("L", (w * k, h * k), 0)
    d = ImageDraw.Draw(mask)
    cx, cy, r = cx * k, cy * k, radius * k
    if cls == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif cls == "square":
        d.polygon(regular_polygon(4, r, rotation, cx, cy), fill=255)
    elif cls == "triangle":
        d.polygon(regular_polygon(3, r, rotation, cx, cy), fill=255)
    elif cls == "hexagon":
        d.polygon(regular_polygon(6, r, rotation, cx, cy), fill=255)
    elif cls == "star":
        d.polygon(star(r, rotation, cx, cy), fill=255)
    elif cls == "cross":
        d.polygon(cross(r, rotation, cx, cy), fill=255)
    elif cls == "ring":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        ri = r * 0.58
        d.ellipse([cx - ri, cy - ri, cx + ri, cy + ri], fill=0)
    elif cls == "crescent":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        off = r * 0.5
        ox, oy = cx + off * math.cos(rotation), cy + off * math.sin(rotation)
        ri = r * 0.85
        d.ellipse([ox - ri, oy - ri, ox + ri, oy + ri], fill=0)
    else:
        raise ValueError(cls)
    return mask.resize((w, h), Image.Resampling.BOX)


def background(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """A textured background: a colour gradient plus one of stripes, checks, blobs or plain noise."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    c0 = rng.uniform(0, 255, 3)
    c1 = rng.uniform(0, 255, 3)
    angle = rng.uniform(0, 2 * math.pi)
    t = (xx * math.cos(angle) + yy * math.sin(angle))
    t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    img = c0[None, None, :] * (1 - t[..., None]) + c1[None, None, :] * t[..., None]
    kind = rng.integers(0, 4)
    amp = rng.uniform(10, 40)
    if kind == 0:
        period = rng.uniform(6, 30)
        a2 = rng.uniform(0, math.pi)
        img += amp * np.sin((xx * math.cos(a2) + yy * math.sin(a2)) * 2 * math.pi / period)[..., None]
    elif kind == 1:
        cell = int(rng.integers(8, 32))
        img += amp * ((((xx // cell) + (yy // cell)) % 2) * 2 - 1)[..., None]
    elif kind == 2:
        for _ in range(int(rng.integers(3, 9))):
            bx, by = rng.uniform(0, w), rng.uniform(0, h)
            br = rng.uniform(10, 60)
            blob = np.exp(-(((xx - bx) ** 2 + (yy - by) ** 2) / (2 * br * br)))
            img += blob[..., None] * rng.uniform(-60, 60, 3)[None, None, :]
    img += rng.normal(0, rng.uniform(2, 12), img.shape)
    return img


def contrasting_colour(rng: np.random.Generator, bg_mean: np.ndarray) -> np.ndarray:
    for _ in range(100):
        c = rng.uniform(0, 255, 3)
        if np.linalg.norm(c - bg_mean) > 120:
            return c
    return 255.0 - bg_mean


def render(rng: np.random.Generator, cls: str) -> tuple[bytes, str]:
    size = SIZES[int(rng.integers(0, len(SIZES)))]
    w, h = size
    crop = min(w, h) * 224.0 / 256.0  # side of the server's centre crop, in source pixels
    radius = rng.uniform(0.22, 0.42) * crop
    slack = crop / 2 - radius - 0.04 * crop
    cx = w / 2 + rng.uniform(-slack, slack)
    cy = h / 2 + rng.uniform(-slack, slack)
    rotation = rng.uniform(0, 2 * math.pi)

    bg = background(rng, size)
    colour = contrasting_colour(rng, bg.reshape(-1, 3).mean(axis=0))
    alpha = np.asarray(shape_mask(cls, size, cx, cy, radius, rotation), dtype=np.float32)[..., None] / 255.0
    fg = colour[None, None, :] + rng.normal(0, rng.uniform(0, 10), bg.shape)
    img = np.clip(bg * (1 - alpha) + fg * alpha, 0, 255).astype(np.uint8)
    pil = Image.fromarray(img)
    if rng.uniform() < 0.2:
        pil = pil.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))

    buf = io.BytesIO()
    if rng.uniform() < 0.35:
        pil.save(buf, format="JPEG", quality=int(rng.integers(70, 96)))
        return buf.getvalue(), "jpg"
    pil.save(buf, format="PNG")
    return buf.getvalue(), "png"


def generate(seed: int, per_class: int, out: Path) -> list[tuple[str, str]]:
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(per_class):
        for cls in CLASSES:
            data, ext = render(rng, cls)
            name = f"{cls}-{i:05d}.{ext}"
            (out / name).write_bytes(data)
            rows.append((name, cls))
    with open(out / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "label"])
        writer.writerows(rows)
    return rows


def tensors(tessera: Path, folder: Path, rows: list[tuple[str, str]]) -> tuple[np.ndarray, np.ndarray]:
    """Runs the server's preprocess guest (`tessera preprocess`) over the images of `rows` in
    `folder`; returns the (N,3,224,224) float32 tensors the server would feed the model, and the
    class indices."""
    listing = folder / "list.txt"
    listing.write_text("".join(f"{folder / name}\n" for name, _ in rows))
    out = folder / "tensors.f32"
    subprocess.run([str(tessera), "preprocess", "--manifest", str(ROOT / "models/shapes/model.toml"),
                    "--list", str(listing), "--out", str(out)], check=True, cwd=ROOT)
    x = np.fromfile(out, dtype="<f4").reshape(len(rows), 3, 224, 224)
    y = np.array([CLASSES.index(label) for _, label in rows], dtype=np.int64)
    return x, y


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, required=True, help="RNG seed: training and held-out sets use different seeds")
    p.add_argument("--per-class", type=int, required=True, help="images per class")
    p.add_argument("--out", type=Path, required=True, help="output directory (gets the images and labels.csv)")
    args = p.parse_args()
    rows = generate(args.seed, args.per_class, args.out)
    print(f"wrote {len(rows)} images to {args.out}")


if __name__ == "__main__":
    main()
