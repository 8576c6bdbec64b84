#!/usr/bin/env python3
"""The detection peer for `just bench-detect`: the shapes-detect model in the Python service a
team would write today. FastAPI on uvicorn, `POST /v1/tasks/detect` with the image as the body,
Pillow to decode (EXIF orientation applied) and letterbox, onnxruntime (2 intra-op threads) on
models/shapes-detect, and the same post-processing as the Rust and Python task guests in numpy:
grid decoding, per-class greedy non-maximum suppression, boxes mapped back to the image as sent.
Answers `{"answer": {"detections": [{"label", "score", "box"}]}}` like Tessera's task route.

    build/venv-peers/bin/python bench/peers/detect_service.py --port 0   # prints "listening on <port>"
"""
from __future__ import annotations

import argparse
import io
import math
import socket
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI, HTTPException, Request
from PIL import Image, ImageOps
from starlette.concurrency import run_in_threadpool

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models/shapes-detect"
SIZE, FILL = 256, 114


def letterbox(image: Image.Image) -> tuple[np.ndarray, float, float, int, int]:
    """train_detect.py's letterbox: the longer side to SIZE (Pillow's antialiased bilinear),
    centred on grey; (NCHW float32 in [0, 1], x scale, y scale, left, top)."""
    w, h = image.size
    scale = SIZE / max(w, h)
    nw, nh = max(1, math.floor(w * scale + 0.5)), max(1, math.floor(h * scale + 0.5))
    canvas = np.full((SIZE, SIZE, 3), FILL, np.uint8)
    left, top = (SIZE - nw) // 2, (SIZE - nh) // 2
    canvas[top:top + nh, left:left + nw] = np.asarray(image.resize((nw, nh), Image.Resampling.BILINEAR))
    x = canvas.astype(np.float32).transpose(2, 0, 1)[None] / 255.0
    return np.ascontiguousarray(x), nw / w, nh / h, left, top


def decode(out: np.ndarray, threshold: float):
    """(scores, classes, boxes in square pixels) of the cells scoring `threshold`."""
    grid = out.shape[-1]
    stride = SIZE / grid
    obj = 1.0 / (1.0 + np.exp(-out[0]))
    logits = out[5:]
    p = np.exp(logits - logits.max(0))
    p /= p.sum(0)
    score = obj * p.max(0)
    rows, cols = np.nonzero(score >= threshold)
    d = np.exp(np.minimum(out[1:5, rows, cols], 6.0)) * stride
    cx, cy = (cols + 0.5) * stride, (rows + 0.5) * stride
    boxes = np.stack([cx - d[0], cy - d[1], cx + d[2], cy + d[3]], 1)
    return score[rows, cols], p.argmax(0)[rows, cols], boxes


def suppress(scores, classes, boxes, iou: float, most: int) -> list[int]:
    """Greedy per-class non-maximum suppression, best first: the indices kept."""
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    for i in order:
        if len(keep) == most:
            break
        ok = True
        for j in keep:
            if classes[j] != classes[i]:
                continue
            a, b = boxes[i], boxes[j]
            w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
            h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
            inter = w * h
            union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
            if union > 0 and inter / union > iou:
                ok = False
                break
        if ok:
            keep.append(int(i))
    return keep


def build_app(threads: int) -> FastAPI:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(MODEL / "1/model.onnx"), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    labels = (MODEL / "labels.txt").read_text().split()
    app = FastAPI()

    @app.post("/v1/tasks/detect")
    async def detect(request: Request, threshold: float = 0.3, iou: float = 0.5, max_detections: int = 100):
        # The body as it came; the work off the event loop, on Starlette's thread pool.
        return await run_in_threadpool(answer, await request.body(), threshold, iou, max_detections)

    def answer(data: bytes, threshold: float, iou: float, most: int) -> dict:
        try:
            image = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
        except Exception as e:  # noqa: BLE001 - any decoder failure is the client's image
            raise HTTPException(400, f"not an image: {e}") from e
        w, h = image.size
        x, sx, sy, left, top = letterbox(image)
        out = session.run(None, {name: x})[0][0]
        scores, classes, boxes = decode(out, threshold)
        detections = []
        for i in suppress(scores, classes, boxes, iou, most):
            b = boxes[i]
            box = [float(np.clip((b[0] - left) / sx, 0, w)), float(np.clip((b[1] - top) / sy, 0, h)),
                   float(np.clip((b[2] - left) / sx, 0, w)), float(np.clip((b[3] - top) / sy, 0, h))]
            detections.append({"label": labels[classes[i]], "score": float(scores[i]), "box": box})
        return {"answer": {"detections": detections}}

    return app


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    args = p.parse_args()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    print(f"listening on {sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(build_app(args.threads), log_level="warning", access_log=False)
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    sys.exit(main())
