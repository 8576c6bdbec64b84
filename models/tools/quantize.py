#!/usr/bin/env python3
"""Static int8 quantization of a Tessera ONNX image model, for tract's int8 kernels or onnxruntime's.

`--format qoperator` (the default, for `engine = "tract"`) writes a QOperator graph (QuantizeLinear
-> QLinearConv ... -> DequantizeLinear) shaped for tract's int8 kernels (choices below).
`--format qdq` (for `engine = "onnxruntime"`) writes the QDQ graph onnxruntime itself recommends on
x86: QuantizeLinear/DequantizeLinear pairs around every quantizable op, uint8 activations, int8
weights per output channel; onnxruntime fuses them into its int8 kernels (tract would run them in
float). Both are made by onnxruntime's own quantizer, calibrated on real inputs:

  --calibration shapes   images from generate_shapes.py turned into tensors by
                         `tessera preprocess` (the serving guest), for the trained default model
  --calibration random   N(0,1) tensors: enough to time seeded-weight ResNets, which have no
                         accuracy to keep (see DESIGN.md, "Quantization")

    python models/tools/quantize.py --model models/shapes/1/model.onnx \\
        --out models/shapes-int8/1/model.onnx --calibration shapes
    python models/tools/quantize.py --model build/models/resnet50/1/model.onnx \\
        --out build/models/resnet50-int8/1/model.onnx --calibration random --speed-only

The accuracy gate: the int8 graph's top-1 answers are compared with the fp32 graph's (both under
onnxruntime) on --held-out inputs made like the calibration ones with another seed; below
--min-agreement (99 %) nothing is written and the script fails, naming the figure. --speed-only
skips the gate and says so: for seeded benchmark weights, which have no accuracy to keep (their
random-input answers are near ties, so no int8 graph of them could pass).

Choices, each measured with `cargo run --release -p tessera --example profile` on ResNet-50
(docs/history/PERFORMANCE-journal.md has the figures):
- Only Conv (with its ReLU, or ReLU6 as Clip, folded into the output range) and MaxPool are
  quantized. (Clip left in float cost a seeded MobileNetV2 a Dequantize/Quantize pair per
  ReLU6: 8 of 30 ms.) Depthwise convolutions run on Tessera's own kernel in float
  (host/src/inference/tract/patches/qdepthwise.rs): tract's int8 path makes them m = 1 products. The residual
  Add, global pooling and the classifier stay float between DequantizeLinear/QuantizeLinear:
  tract 0.23 cannot load QLinearAdd / QLinearGlobalAveragePool (com.microsoft contrib ops), and
  the QDQ format is not rewritten to int8 kernels by tract (it dequantizes and runs fp32).
- Weights per tensor by default, per channel with `--per-channel`: on CPUs with AVX-512 VNNI
  Tessera runs every int8 convolution on its own GEMM (host/src/inference/tract/patches/
  qgemm_conv.rs), whose epilogue requantizes per channel at no extra cost (ResNet-50, one
  thread: 35-46 ms either way). Elsewhere tract's own path fuses the requantization only for a
  single scale; with per-channel scales it runs five separate elementwise passes per conv (the
  int8 graph was slower than fp32 there: 180 vs 100 ms), hence the per-tensor default for
  portable graphs. Agreement with fp32 is checked by the gate below either way.
- Activations int8 (asymmetric), weights int8 (symmetric): tract's x86 kernels are i8 x i8
  (AMX TDPBSSD, AVX-512 VNNI); u8 activations only add an offset pass.
- 1x1 convolutions get dilation 3, which changes nothing (a one-pixel kernel covers one pixel
  whatever its dilation) but keeps tract on its im2col path. Otherwise tract lowers them to an
  einsum that, quantized, loops over H and multiplies W-wide slices (n = 14 or 7 columns in
  the late stages; its axis-merging pass skips einsums with quantization inputs): ResNet-50
  85 -> 60 ms. 3, not 2: a stride-2 conv becomes a Downsample with its dilation halved, and
  tract-core's `declutter_as_einsum` only takes dilation 1.
  Keeping every conv on im2col also keeps it safe on AMX: tract 0.23.9's AMX int8 kernels read
  past the end of the activation panel when K is not a multiple of 64, and Tessera's own im2col
  (host/src/inference/tract/patches/im2col.rs) leaves room for that read, while tract's einsum packing does not
  (Tessera refuses such plans when `amx_int8` is on).
- `--keep-pointwise` skips that dilation: for measuring what it buys, and for testing the AMX
  refusal.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                      quantize_static)

sys.path.insert(0, str(Path(__file__).parent))
from generate_shapes import ROOT, generate, tensors  # noqa: E402


class Batches(CalibrationDataReader):
    def __init__(self, input_name: str, x: np.ndarray):
        self.items = iter([{input_name: x[i:i + 1]} for i in range(len(x))])

    def get_next(self):
        return next(self.items, None)


def calibration_inputs(kind: str, count: int, seed: int, tessera: Path, work: Path) -> np.ndarray:
    if kind == "random":
        return np.random.default_rng(seed).normal(0, 1, (count, 3, 224, 224)).astype(np.float32)
    per_class = max(1, count // 8)
    folder = work / "calibration"
    x, _ = tensors(tessera, folder, generate(seed, per_class, folder))
    return x


def dilate_pointwise(model: onnx.ModelProto) -> int:
    """Gives every 1x1 QLinearConv dilation 3 (see the module doc); returns how many."""
    weights = {i.name: list(i.dims) for i in model.graph.initializer}
    count = 0
    for node in model.graph.node:
        if node.op_type == "QLinearConv" and weights[node.input[3]][2:] == [1, 1]:
            for attr in [a for a in node.attribute if a.name == "dilations"]:
                node.attribute.remove(attr)
            node.attribute.append(onnx.helper.make_attribute("dilations", [3, 3]))
            count += 1
    return count


def quantize(model: Path, out: Path, x: np.ndarray, keep_pointwise: bool, fmt: str = "qoperator",
             per_channel: bool = False) -> None:
    fp32 = onnx.load(str(model))
    input_name = fp32.graph.input[0].name
    for i, node in enumerate(fp32.graph.node):  # readable names in tract's profiles and errors
        node.name = node.name or f"{node.op_type.lower()}_{i}"
    with tempfile.TemporaryDirectory() as tmp:
        named, raw = Path(tmp) / "named.onnx", Path(tmp) / "quantized.onnx"
        onnx.save(fp32, str(named))
        if fmt == "qdq":
            quantize_static(str(named), str(raw), Batches(input_name, x), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax)
        else:
            quantize_static(str(named), str(raw), Batches(input_name, x), quant_format=QuantFormat.QOperator,
                            op_types_to_quantize=["Conv", "Relu", "Clip", "MaxPool"], per_channel=per_channel,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax,
                            extra_options={"WeightSymmetric": True, "ActivationSymmetric": False})
        q = onnx.load(str(raw))
    # The quantizer records shapes inferred for batch 1 while the input keeps its symbolic batch;
    # tract refuses to unify the two, and the shapes carry nothing tract cannot infer itself.
    del q.graph.value_info[:]
    if fmt == "qoperator" and not keep_pointwise:
        dilate_pointwise(q)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(q, str(out))


def agreement(fp32: Path, int8: Path, x: np.ndarray) -> float:
    """Top-1 agreement of the two graphs under onnxruntime: a quick sanity check only; the tests
    measure tract's own int8 execution against fp32."""
    a, b = (ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (fp32, int8))
    name = a.get_inputs()[0].name
    same = sum(int(a.run(None, {name: x[i:i + 1]})[0].argmax() == b.run(None, {name: x[i:i + 1]})[0].argmax())
               for i in range(len(x)))
    return same / len(x)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="fp32 ONNX model")
    p.add_argument("--out", type=Path, required=True, help="where to write the int8 ONNX model")
    p.add_argument("--calibration", choices=["shapes", "random"], required=True)
    p.add_argument("--count", type=int, default=160, help="calibration inputs")
    p.add_argument("--seed", type=int, default=77, help="calibration seed (distinct from training and test seeds)")
    p.add_argument("--format", choices=["qoperator", "qdq"], default="qoperator",
                   help="qoperator: for tract (the default); qdq: for engine = \"onnxruntime\"")
    p.add_argument("--keep-pointwise", action="store_true", help="leave 1x1 convs to tract's einsum lowering")
    p.add_argument("--per-channel", action="store_true",
                   help="qoperator: one weight scale per output channel (fast on AVX-512 VNNI, see above)")
    p.add_argument("--held-out", type=int, default=200, help="held-out inputs for the accuracy gate")
    p.add_argument("--min-agreement", type=float, default=0.99,
                   help="least top-1 agreement with fp32 on the held-out inputs for the model to be written")
    p.add_argument("--speed-only", action="store_true",
                   help="skip the accuracy gate (seeded benchmark weights): the model is for timing only")
    p.add_argument("--work", type=Path, default=ROOT / "build/quantize")
    p.add_argument("--tessera", type=Path, default=ROOT / "target/release/tessera")
    args = p.parse_args()
    x = calibration_inputs(args.calibration, args.count, args.seed, args.tessera, args.work)
    # Written next to the target and renamed into place only once it passed the gate: a
    # failed run leaves no model behind (and a watching server never sees half a file).
    candidate = args.out.with_name(args.out.name + ".candidate")
    quantize(args.model, candidate, x, args.keep_pointwise, args.format, args.per_channel)
    if args.speed_only:
        print("--speed-only: no accuracy gate; this int8 model is for timing, not for serving answers")
    else:
        held_out = calibration_inputs(args.calibration, args.held_out, args.seed + 1, args.tessera,
                                      args.work / "held-out")
        agree = agreement(args.model, candidate, held_out)
        print(f"top-1 agreement int8 vs fp32 (onnxruntime) on {len(held_out)} held-out inputs: {agree:.4f}")
        if agree < args.min_agreement:
            candidate.unlink()
            sys.exit(f"refused: top-1 agreement {agree:.4f} is below --min-agreement {args.min_agreement}; "
                     f"nothing written to {args.out} (try more --count calibration inputs, or --speed-only "
                     f"for a timing-only model)")
    candidate.replace(args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB), calibrated on {len(x)} {args.calibration} inputs")


if __name__ == "__main__":
    main()
