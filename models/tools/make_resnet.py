#!/usr/bin/env python3
"""Write torchvision-architecture ResNet-18 / ResNet-50 / MobileNetV2 ONNX graphs with seeded weights.

No model hub is reachable here, so benchmarks and parity tests use graphs of the real
architectures (1000 classes, 224x224, torchvision v1.5 layout: stride on the 3x3 conv of a
bottleneck; MobileNetV2 as torchvision's, width 1.0: inverted residuals with 3x3 depthwise
convolutions and ReLU6, exported as Clip(0, 6)) whose weights are drawn from a seed. To keep the outputs meaningful:

- every convolution is followed by a batch norm whose statistics are *measured* on calibration
  inputs (data-dependent init), then folded into the convolution's weights and bias, as an
  exported inference graph has them; the last norm of each residual branch is scaled down so
  the residual sums stay well-scaled;
- the pooled features of a random ReLU network share a large common component, so the
  classifier is centred and whitened on the calibration inputs; without that almost every input
  gets the same top-1 class.

The result: over 100 random inputs, many distinct top-1 classes (checked when writing).
Seeded weights are fine for speed and for engine parity; never for judging accuracy.

    python models/tools/make_resnet.py --arch resnet50 --out build/models/resnet50/1/model.onnx

With `--pretrained`, the real ImageNet weights are exported from torchvision instead (needs
`pip install torch torchvision` and a network that reaches the weights' download host). That
path cannot run on the project's own machines, which reach no model hub, so it is untested
here; it uses only torchvision's documented API (`resnet50(weights="DEFAULT")`) and the same
ONNX export settings as models/tools/train.py.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ARCHS = {"resnet18": ("basic", [2, 2, 2, 2]), "resnet50": ("bottleneck", [3, 4, 6, 3]), "mobilenetv2": ("inverted", [])}
# MobileNetV2's inverted residual stages (expansion t, channels c, blocks n, first stride s).
MOBILENETV2 = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
CALIBRATION = 6
CLASSES = 1000
EPS = 1e-5


def conv2d(x: np.ndarray, w: np.ndarray, stride: int, pad: int, depthwise: bool = False) -> np.ndarray:
    """NCHW convolution by im2col + matmul (float32); `depthwise`: one group per channel."""
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    if pad:
        x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh = (x.shape[2] - kh) // stride + 1
    ow = (x.shape[3] - kw) // stride + 1
    win = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::stride, ::stride]
    if depthwise:
        return np.einsum("nchwij,cij->nchw", win, w[:, 0], optimize=True).astype(np.float32)
    cols = win.transpose(0, 2, 3, 1, 4, 5).reshape(n * oh * ow, c * kh * kw)
    y = cols @ w.reshape(o, -1).T
    return y.reshape(n, oh, ow, o).transpose(0, 3, 1, 2)


def maxpool(x: np.ndarray) -> np.ndarray:
    x = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    win = np.lib.stride_tricks.sliding_window_view(x, (3, 3), axis=(2, 3))[:, :, ::2, ::2]
    return win.max(axis=(4, 5))


class Builder:
    def __init__(self, seed: int, calib: np.ndarray):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits = [], []
        self.count = 0
        self.clip_bounds = False

    def name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}_{self.count}"

    def conv_bn(self, x_name: str, x: np.ndarray, cout: int, k: int, stride: int, relu: bool, gamma: float = 1.0,
                depthwise: bool = False, relu6: bool = False):
        """Conv (He init) + batch norm measured on `x`, folded; optional ReLU (or ReLU6).
        `depthwise`: one 1-channel filter per input channel (`cout` = input channels)."""
        cin = 1 if depthwise else x.shape[1]
        w = self.rng.normal(0, np.sqrt(2.0 / (cout * k * k)), (cout, cin, k, k)).astype(np.float32)
        if depthwise:
            w *= np.sqrt(cout)  # fan-out of one channel, not of all of them
        y = conv2d(x, w, stride, k // 2, depthwise)
        mean = y.mean(axis=(0, 2, 3))
        var = y.var(axis=(0, 2, 3))
        # Folding BN(gamma, beta, mean, var) into the conv: w' = w * s, b' = beta - mean * s.
        g = gamma * self.rng.uniform(0.8, 1.2, cout).astype(np.float32)
        beta = self.rng.normal(0, 0.1, cout).astype(np.float32) * gamma
        s = g / np.sqrt(var + EPS)
        wf = (w * s[:, None, None, None]).astype(np.float32)
        bf = (beta - mean * s).astype(np.float32)
        y = y * s[None, :, None, None] + bf[None, :, None, None]
        wn, bn, out = self.name("w"), self.name("b"), self.name("conv")
        self.inits += [numpy_helper.from_array(wf, wn), numpy_helper.from_array(bf, bn)]
        self.nodes.append(helper.make_node("Conv", [x_name, wn, bn], [out], kernel_shape=[k, k],
                                           strides=[stride, stride], pads=[k // 2] * 4,
                                           group=cout if depthwise else 1))
        if relu6:
            r = self.name("relu6")
            if not self.clip_bounds:
                self.clip_bounds = True
                self.inits += [numpy_helper.from_array(np.array(0, np.float32), "relu6_min"),
                               numpy_helper.from_array(np.array(6, np.float32), "relu6_max")]
            self.nodes.append(helper.make_node("Clip", [out, "relu6_min", "relu6_max"], [r]))
            return r, np.clip(y, 0, 6)
        if relu:
            r = self.name("relu")
            self.nodes.append(helper.make_node("Relu", [out], [r]))
            return r, np.maximum(y, 0)
        return out, y

    def add(self, a: str, xa: np.ndarray, b: str, xb: np.ndarray):
        s = self.name("add")
        self.nodes.append(helper.make_node("Add", [a, b], [s]))
        return s, xa + xb

    def add_relu(self, a: str, xa: np.ndarray, b: str, xb: np.ndarray):
        s, r = self.name("add"), self.name("relu")
        self.nodes += [helper.make_node("Add", [a, b], [s]), helper.make_node("Relu", [s], [r])]
        return r, np.maximum(xa + xb, 0)


def mobilenetv2(b: Builder, calib: np.ndarray):
    """torchvision's MobileNetV2 (width 1.0) up to the pooled features' input."""
    name, x = b.conv_bn("input", calib, 32, 3, 2, relu=False, relu6=True)
    cin = 32
    for t, c, n, s in MOBILENETV2:
        for i in range(n):
            stride = s if i == 0 else 1
            h, xh = name, x
            if t != 1:
                h, xh = b.conv_bn(h, xh, cin * t, 1, 1, relu=False, relu6=True)
            h, xh = b.conv_bn(h, xh, cin * t, 3, stride, relu=False, relu6=True, depthwise=True)
            residual = stride == 1 and cin == c
            h, xh = b.conv_bn(h, xh, c, 1, 1, relu=False, gamma=0.5 if residual else 1.0)
            name, x = b.add(h, xh, name, x) if residual else (h, xh)
            cin = c
    return b.conv_bn(name, x, 1280, 1, 1, relu=False, relu6=True)


def build(arch: str, seed: int) -> onnx.ModelProto:
    kind, blocks = ARCHS[arch]
    rng = np.random.default_rng(seed + 1)
    calib = rng.normal(0, 1, (CALIBRATION, 3, 224, 224)).astype(np.float32)
    b = Builder(seed, calib)
    if kind == "inverted":
        name, x = mobilenetv2(b, calib)
        return classifier(b, arch, seed, name, x)
    name, x = b.conv_bn("input", calib, 64, 7, 2, relu=True)
    mp = b.name("maxpool")
    b.nodes.append(helper.make_node("MaxPool", [name], [mp], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]))
    name, x = mp, maxpool(x)
    expansion = 1 if kind == "basic" else 4
    cin = 64
    for stage, (width, count) in enumerate(zip([64, 128, 256, 512], blocks)):
        for i in range(count):
            stride = 2 if stage > 0 and i == 0 else 1
            cout = width * expansion
            if stride != 1 or cin != cout:
                short, xs = b.conv_bn(name, x, cout, 1, stride, relu=False)
            else:
                short, xs = name, x
            if kind == "basic":
                h, xh = b.conv_bn(name, x, width, 3, stride, relu=True)
                h, xh = b.conv_bn(h, xh, width, 3, 1, relu=False, gamma=0.5)
            else:
                h, xh = b.conv_bn(name, x, width, 1, 1, relu=True)
                h, xh = b.conv_bn(h, xh, width, 3, stride, relu=True)
                h, xh = b.conv_bn(h, xh, cout, 1, 1, relu=False, gamma=0.5)
            name, x = b.add_relu(h, xh, short, xs)
            cin = cout
    return classifier(b, arch, seed, name, x)


def classifier(b: Builder, arch: str, seed: int, name: str, x: np.ndarray) -> onnx.ModelProto:
    """Global average pool, flatten and the whitened 1000-class Gemm (see the module doc)."""
    cin = x.shape[1]
    gap, flat = b.name("gap"), b.name("flat")
    b.nodes += [helper.make_node("GlobalAveragePool", [name], [gap]), helper.make_node("Flatten", [gap], [flat], axis=1)]
    feats = x.mean(axis=(2, 3))
    # Centre and whiten the classifier on the calibration features (see the module doc).
    mu, sd = feats.mean(axis=0), feats.std(axis=0) + 1e-3
    w = b.rng.normal(0, 1.0 / np.sqrt(cin), (CLASSES, cin)).astype(np.float32) / sd[None, :]
    bias = (-(w @ mu)).astype(np.float32)
    wn, bn = b.name("fc_w"), b.name("fc_b")
    b.inits += [numpy_helper.from_array(w.astype(np.float32), wn), numpy_helper.from_array(bias, bn)]
    b.nodes.append(helper.make_node("Gemm", [flat, wn, bn], ["logits"], transB=1))
    graph = helper.make_graph(
        b.nodes, f"{arch}-seed{seed}",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])],
        b.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="tessera make_resnet")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def distinct_top1(path: Path, count: int, seed: int) -> int:
    import onnxruntime as ort
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(seed).normal(0, 1, (count, 3, 224, 224)).astype(np.float32)
    tops = [int(sess.run(None, {"input": x[i:i + 1]})[0].argmax()) for i in range(count)]
    return len(set(tops))


def export_pretrained(arch: str, out: Path) -> None:
    """Exports torchvision's pretrained ImageNet weights (downloads them; see the module doc)."""
    import torch
    import torchvision

    model = getattr(torchvision.models, {"mobilenetv2": "mobilenet_v2"}.get(arch, arch))(weights="DEFAULT").eval()
    torch.onnx.export(model, torch.zeros(1, 3, 224, 224), str(out), opset_version=17, input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}}, dynamo=False)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", choices=sorted(ARCHS), required=True)
    p.add_argument("--pretrained", action="store_true", help="export torchvision's ImageNet weights (needs a network)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--check", type=int, default=100, help="random inputs for the distinct top-1 check (0: skip)")
    args = p.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.pretrained:
        export_pretrained(args.arch, args.out)
    else:
        onnx.save(build(args.arch, args.seed), str(args.out))
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")
    if args.check:
        distinct = distinct_top1(args.out, args.check, args.seed + 7)
        print(f"{distinct} distinct top-1 classes over {args.check} random inputs")
        if distinct < args.check // 2:
            raise SystemExit(f"degenerate outputs: only {distinct} distinct top-1 classes")


if __name__ == "__main__":
    main()
