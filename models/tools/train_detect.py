#!/usr/bin/env python3
"""Train Tessera's "shapes-detect" model, a small single-stage detector, and export it to ONNX.

Scenes come from generate_scenes.py (one to five shapes each, boxes as labels). Images are
letterboxed to 256x256 (the longer side scaled to 256 with Pillow's antialiased bilinear
filter, the rest grey 114), as the detection task guests do (guests/task-detect,
guests/task-detect-python). The network is fully convolutional: a stride-2 stem, three
stride-2 stages and two dilated convolutions, ending on a 16x16 grid of cells (stride 16).
Each cell predicts, in its one output `detections` [1, 13, 16, 16]:

- channel 0: objectness (a logit; trained towards the IoU of the cell's box with its object),
- channels 1-4: the distances from the cell's centre to the box's left, top, right and bottom
  edges, as log(distance / 16),
- channels 5-12: the class logits, in the order of labels.txt.

A cell learns an object when its centre lies inside the object's box and within one cell of
the object's centre (FCOS's centre sampling): up to nine cells per object, so non-maximum
suppression follows. score = sigmoid(objectness) x softmax(class).

    just train-detect                 # writes models/shapes-detect/1/model.onnx
    python models/tools/train_detect.py --epochs 1 --count 200 --out /tmp/d.onnx   # smoke run
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).parent))
from generate_scenes import generate  # noqa: E402
from generate_shapes import CLASSES  # noqa: E402

SIZE = 256
STRIDE = 16
GRID = SIZE // STRIDE
GREY = 114
CHANNELS = 5 + len(CLASSES)


def letterbox(img: Image.Image) -> tuple[np.ndarray, float, float, int, int]:
    """`img` scaled to fit SIZE x SIZE and centred on grey: (HWC uint8, x scale, y scale, left, top).
    The same arithmetic as the guests' (round half up, integer padding)."""
    w, h = img.size
    scale = SIZE / max(w, h)
    nw, nh = max(1, math.floor(w * scale + 0.5)), max(1, math.floor(h * scale + 0.5))
    canvas = np.full((SIZE, SIZE, 3), GREY, np.uint8)
    left, top = (SIZE - nw) // 2, (SIZE - nh) // 2
    canvas[top:top + nh, left:left + nw] = np.asarray(img.resize((nw, nh), Image.Resampling.BILINEAR))
    return canvas, nw / w, nh / h, left, top


def load(folder: Path, rows: list[dict]) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """The letterboxed images (N, 3, SIZE, SIZE uint8), and per image its boxes in letterbox
    pixels and their class indices."""
    images = np.empty((len(rows), 3, SIZE, SIZE), np.uint8)
    boxes, classes = [], []
    for i, row in enumerate(rows):
        canvas, sx, sy, left, top = letterbox(Image.open(folder / row["file"]).convert("RGB"))
        images[i] = canvas.transpose(2, 0, 1)
        b = np.array([o["box"] for o in row["objects"]], np.float32).reshape(-1, 4)
        boxes.append(b * [sx, sy, sx, sy] + [left, top, left, top])
        classes.append(np.array([CLASSES.index(o["label"]) for o in row["objects"]], np.int64))
    return images, boxes, classes


def assign(boxes: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per cell: whether it learns an object, the distances to that object's edges (4, G, G),
    and its class (-1: none). Where objects compete for a cell, the smaller one gets it."""
    positive = np.zeros((GRID, GRID), bool)
    ltrb = np.zeros((4, GRID, GRID), np.float32)
    cls = np.full((GRID, GRID), -1, np.int64)
    centres = (np.arange(GRID) + 0.5) * STRIDE
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    for k in np.argsort(-areas):
        x0, y0, x1, y1 = boxes[k]
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        cols = np.nonzero((centres > x0) & (centres < x1) & (np.abs(centres - cx) <= STRIDE))[0]
        rows = np.nonzero((centres > y0) & (centres < y1) & (np.abs(centres - cy) <= STRIDE))[0]
        if len(cols) == 0:  # a box thinner than a cell: the cell holding its centre
            cols = np.array([min(int(cx // STRIDE), GRID - 1)])
        if len(rows) == 0:
            rows = np.array([min(int(cy // STRIDE), GRID - 1)])
        for r in rows:
            for c in cols:
                px, py = centres[c], centres[r]
                positive[r, c] = True
                ltrb[:, r, c] = [max(px - x0, 1.0), max(py - y0, 1.0), max(x1 - px, 1.0), max(y1 - py, 1.0)]
                cls[r, c] = classes[k]
    return positive, ltrb, cls


def conv(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, dilation, dilation, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU())


class Residual(nn.Module):
    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body

    def forward(self, x):
        return x + self.body(x)


class ShapesDetect(nn.Module):
    def __init__(self, widths=(16, 32, 64, 96)):
        super().__init__()
        a, b, c, d = widths
        self.features = nn.Sequential(
            conv(3, a, 2),                                   # 128
            conv(a, b, 2), Residual(conv(b, b)),             # 64
            conv(b, c, 2), Residual(conv(c, c)),             # 32
            conv(c, d, 2), Residual(conv(d, d)),             # 16
            Residual(conv(d, d, dilation=2)), Residual(conv(d, d, dilation=4)),
        )
        self.head = nn.Conv2d(d, CHANNELS, 1)

    def forward(self, x):
        return self.head(self.features(x))


def normalize(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 255.0


def giou(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """IoU and generalized IoU of boxes given as distances from one point (N, 4: l, t, r, b)."""
    pa = (pred[:, 0] + pred[:, 2]) * (pred[:, 1] + pred[:, 3])
    ta = (target[:, 0] + target[:, 2]) * (target[:, 1] + target[:, 3])
    iw = torch.min(pred[:, 0], target[:, 0]) + torch.min(pred[:, 2], target[:, 2])
    ih = torch.min(pred[:, 1], target[:, 1]) + torch.min(pred[:, 3], target[:, 3])
    inter = iw * ih
    union = pa + ta - inter
    iou = inter / union
    ew = torch.max(pred[:, 0], target[:, 0]) + torch.max(pred[:, 2], target[:, 2])
    eh = torch.max(pred[:, 1], target[:, 1]) + torch.max(pred[:, 3], target[:, 3])
    enclosing = ew * eh
    return iou, iou - (enclosing - union) / enclosing


def loss_of(out: torch.Tensor, positive: torch.Tensor, ltrb: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
    obj = out[:, 0]
    pos = positive
    npos = max(int(pos.sum()), 1)
    pred = torch.exp(out[:, 1:5].clamp(max=6.0)).permute(0, 2, 3, 1)[pos] * STRIDE
    iou, g = giou(pred, ltrb.permute(0, 2, 3, 1)[pos])
    target = torch.zeros_like(obj)
    target[pos] = iou.detach().clamp(min=0.0)
    obj_loss = F.binary_cross_entropy_with_logits(obj, target, reduction="sum") / npos
    box_loss = (1.0 - g).mean() if len(g) else out.sum() * 0
    cls_loss = F.cross_entropy(out[:, 5:].permute(0, 2, 3, 1)[pos], cls[pos]) if len(g) else out.sum() * 0
    return obj_loss + 2.0 * box_loss + cls_loss


def decode(out: np.ndarray, threshold: float) -> list[tuple[float, int, np.ndarray]]:
    """One image's output (CHANNELS, G, G) → (score, class, box in letterbox pixels) over
    `threshold`, before suppression: what the guests compute."""
    obj = 1.0 / (1.0 + np.exp(-out[0]))
    logits = out[5:]
    p = np.exp(logits - logits.max(0))
    p /= p.sum(0)
    cls = p.argmax(0)
    score = obj * p.max(0)
    found = []
    for r, c in zip(*np.nonzero(score >= threshold)):
        px, py = (c + 0.5) * STRIDE, (r + 0.5) * STRIDE
        d = np.exp(np.minimum(out[1:5, r, c], 6.0)) * STRIDE
        found.append((float(score[r, c]), int(cls[r, c]), np.array([px - d[0], py - d[1], px + d[2], py + d[3]])))
    return found


def iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def nms(found, threshold: float = 0.5):
    """Greedy non-maximum suppression per class, best score first."""
    kept = []
    for f in sorted(found, key=lambda f: -f[0]):
        if all(k[1] != f[1] or iou(k[2], f[2]) <= threshold for k in kept):
            kept.append(f)
    return kept


def mean_ap(detections: list[list], truths: list[tuple[np.ndarray, np.ndarray]], at: float = 0.5) -> float:
    """VOC-style mAP at IoU `at` (all-point interpolation), over the classes present."""
    aps = []
    for k in range(len(CLASSES)):
        total = sum(int((c == k).sum()) for _, c in truths)
        if total == 0:
            continue
        scored = [(s, i, b) for i, dets in enumerate(detections) for s, c, b in dets if c == k]
        scored.sort(key=lambda d: -d[0])
        used = [np.zeros(len(c), bool) for _, c in truths]
        tp = []
        for s, i, b in scored:
            boxes, classes = truths[i]
            best, best_j = 0.0, -1
            for j in np.nonzero(classes == k)[0]:
                o = iou(b, boxes[j])
                if o > best:
                    best, best_j = o, j
            hit = best >= at and not used[i][best_j]
            if hit:
                used[i][best_j] = True
            tp.append(hit)
        tp = np.array(tp, float)
        recall = np.concatenate([[0], np.cumsum(tp) / total, [1]]) if len(tp) else np.array([0.0, 1.0])
        precision = np.concatenate([[1], np.cumsum(tp) / np.arange(1, len(tp) + 1), [0]]) if len(tp) else np.zeros(2)
        precision = np.maximum.accumulate(precision[::-1])[::-1]
        aps.append(float(np.sum((recall[1:] - recall[:-1]) * precision[1:])))
    return float(np.mean(aps))


def evaluate(model: nn.Module, images: np.ndarray, boxes, classes, threshold: float = 0.05) -> float:
    model.eval()
    detections = []
    with torch.no_grad():
        for i in range(0, len(images), 64):
            out = model(normalize(torch.from_numpy(images[i:i + 64]))).numpy()
            detections += [nms(decode(o, threshold)) for o in out]
    return mean_ap(detections, list(zip(boxes, classes)))


def scenes(seed: int, count: int, folder: Path) -> list[dict]:
    """Scene set `seed` in `folder`, generated unless a previous run left it there."""
    labels = folder / "labels.jsonl"
    if labels.is_file():
        rows = [json.loads(line) for line in labels.read_text().splitlines()]
        if len(rows) == count:
            return rows
    return generate(seed, count, folder)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=4000, help="training scenes")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=1, help="training set seed (the held-out test uses others)")
    p.add_argument("--out", type=Path, default=ROOT / "models/shapes-detect/1/model.onnx")
    p.add_argument("--work", type=Path, default=ROOT / "build/train-detect")
    args = p.parse_args()
    torch.manual_seed(args.seed)

    t0 = time.time()
    train_dir, val_dir = args.work / f"train-{args.seed}-{args.count}", args.work / f"val-{args.seed}-{args.count}"
    images, boxes, classes = load(train_dir, scenes(args.seed, args.count, train_dir))
    val = load(val_dir, scenes(args.seed + 1000, max(args.count // 10, 20), val_dir))
    targets = [assign(b, c) for b, c in zip(boxes, classes)]
    positive = torch.from_numpy(np.stack([t[0] for t in targets]))
    ltrb = torch.from_numpy(np.stack([t[1] for t in targets]))
    cls = torch.from_numpy(np.stack([t[2] for t in targets]))
    x = torch.from_numpy(images)
    print(f"train {tuple(x.shape)}, {int(positive.sum())} positive cells; val {len(val[0])} "
          f"({time.time() - t0:.0f}s)", flush=True)

    model = ShapesDetect()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    batch = 32
    steps = args.epochs * ((len(x) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.15)
    for epoch in range(args.epochs):
        model.train()
        t0, total = time.time(), 0.0
        for idx in torch.randperm(len(x)).split(batch):
            xb, pb, lb, cb = x[idx], positive[idx], ltrb[idx], cls[idx]
            if torch.rand(()) < 0.5:  # a mirrored scene: left and right distances swap
                xb, pb, lb, cb = xb.flip(3), pb.flip(2), lb.flip(3)[:, [2, 1, 0, 3]], cb.flip(2)
            loss = loss_of(model(normalize(xb)), pb, lb, cb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        report = f"epoch {epoch + 1}/{args.epochs}: loss {total / len(x):.4f}"
        if epoch % 4 == 3 or epoch == args.epochs - 1:
            report += f", val mAP@0.5 {evaluate(model, *val):.4f}"
        print(f"{report} ({time.time() - t0:.0f}s)", flush=True)

    model.eval()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sample = normalize(torch.from_numpy(val[0][:1]))
    torch.onnx.export(model, sample, str(args.out), opset_version=17, input_names=["images"],
                      output_names=["detections"], dynamo=False)
    import onnxruntime as ort
    sess = ort.InferenceSession(str(args.out), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = model(sample).numpy()
    got = sess.run(None, {"images": sample.numpy()})[0]
    val_map = evaluate(model, *val)
    print(f"exported {args.out} ({args.out.stat().st_size / 1e6:.2f} MB); "
          f"max |torch - onnxruntime| = {np.abs(ref - got).max():.2e}; val mAP@0.5 {val_map:.4f}")
    (args.out.parent / "training.json").write_text(json.dumps(
        {"seed": args.seed, "count": args.count, "epochs": args.epochs, "val_map50": round(val_map, 4)}) + "\n")


if __name__ == "__main__":
    main()
