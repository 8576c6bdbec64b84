#!/usr/bin/env python3
"""Train Tessera's default "shapes" model and export it to ONNX.

The training images come from generate_shapes.py and are turned into tensors by
`tessera preprocess`, i.e. by the very preprocess guest component the server runs, so
training and serving cannot drift. The model is a small ResNet (residual blocks + batch
norm, 224x224 input, ImageNet mean/std); the export is checked against onnxruntime.

    just train                       # writes models/shapes/1/model.onnx
    python models/tools/train.py --epochs 2 --per-class 50 --out /tmp/m.onnx   # smoke run
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).parent))
from generate_shapes import CLASSES, generate, tensors  # noqa: E402


class Block(nn.Module):
    """A ResNet basic block: two 3x3 convs with batch norm and an identity (or 1x1) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = None
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.short is None else self.short(x)))


class ShapesNet(nn.Module):
    def __init__(self, classes: int, widths=(16, 32, 64, 128)):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 2, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        layers, cin = [], widths[0]
        for i, w in enumerate(widths):
            layers.append(Block(cin, w, 1 if i == 0 else 2))
            cin = w
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        x = self.layers(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def augment(x: torch.Tensor) -> torch.Tensor:
    """Flips and quarter turns: every class is invariant to them, and the tensors are square."""
    if torch.rand(()) < 0.5:
        x = x.flip(3)
    if torch.rand(()) < 0.5:
        x = x.flip(2)
    return torch.rot90(x, int(torch.randint(0, 4, ())), dims=(2, 3))


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), 128):
            pred = model(torch.from_numpy(x[i:i + 128])).argmax(1).numpy()
            correct += int((pred == y[i:i + 128]).sum())
    return correct / len(x)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--per-class", type=int, default=500)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--seed", type=int, default=1, help="training set seed (the held-out test uses others)")
    p.add_argument("--out", type=Path, default=ROOT / "models/shapes/1/model.onnx")
    p.add_argument("--work", type=Path, default=ROOT / "build/train")
    p.add_argument("--tessera", type=Path, default=ROOT / "target/release/tessera")
    args = p.parse_args()
    torch.manual_seed(args.seed)

    train_dir, val_dir = args.work / "train", args.work / "val"
    x_train, y_train = tensors(args.tessera, train_dir, generate(args.seed, args.per_class, train_dir))
    x_val, y_val = tensors(args.tessera, val_dir, generate(args.seed + 1000, max(args.per_class // 10, 10), val_dir))
    print(f"train {x_train.shape}, val {x_val.shape}", flush=True)

    model = ShapesNet(len(CLASSES))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    batch = 64
    steps = args.epochs * ((len(x_train) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
    for epoch in range(args.epochs):
        model.train()
        t0, total = time.time(), 0.0
        for idx in torch.randperm(len(xt)).split(batch):
            loss = F.cross_entropy(model(augment(xt[idx])), yt[idx], label_smoothing=0.05)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss) * len(idx)
        print(f"epoch {epoch + 1}/{args.epochs}: loss {total / len(xt):.4f}, "
              f"val acc {accuracy(model, x_val, y_val):.4f} ({time.time() - t0:.0f}s)", flush=True)

    model.eval()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.from_numpy(x_val[:1])
    torch.onnx.export(model, dummy, str(args.out), opset_version=17, input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
    import onnxruntime as ort
    sess = ort.InferenceSession(str(args.out), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = model(torch.from_numpy(x_val[:16])).numpy()
    got = sess.run(None, {"input": x_val[:16]})[0]
    print(f"exported {args.out} ({args.out.stat().st_size / 1e6:.2f} MB); "
          f"max |torch - onnxruntime| = {np.abs(ref - got).max():.2e}")
    with open(args.out.parent / "training.csv", "w", newline="") as f:
        csv.writer(f).writerows([["seed", args.seed], ["per_class", args.per_class], ["epochs", args.epochs],
                                 ["val_accuracy", f"{accuracy(model, x_val, y_val):.4f}"]])


if __name__ == "__main__":
    main()
