#!/usr/bin/env python3
"""Reference outputs from onnxruntime, for engine parity tests.

Writes OUT/inputs.f32 (COUNT x 3 x 224 x 224, seeded standard-normal, little-endian f32),
OUT/logits.f32 (COUNT x classes) and OUT/meta.json, running MODEL at batch 1 on the CPU.

    python models/tools/ort_reference.py MODEL OUT --count 100 --seed 3
"""
import argparse
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--count", type=int, default=100)
    p.add_argument("--seed", type=int, default=3)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(args.model), opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(args.seed).normal(0, 1, (args.count, 3, 224, 224)).astype("<f4")
    logits = np.concatenate([sess.run(None, {sess.get_inputs()[0].name: x[i:i + 1]})[0] for i in range(args.count)])
    x.tofile(args.out / "inputs.f32")
    logits.astype("<f4").tofile(args.out / "logits.f32")
    (args.out / "meta.json").write_text(json.dumps({
        "count": args.count, "classes": int(logits.shape[1]), "onnxruntime": ort.__version__,
        "distinct_top1": int(len(set(logits.argmax(1).tolist()))),
    }))


if __name__ == "__main__":
    main()
