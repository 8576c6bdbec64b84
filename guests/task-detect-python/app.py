"""The detection task (guests/task-detect) with its post-processing in Python: box decoding
and non-maximum suppression, as a Python service would write them, over the host's engines.

componentize-py has no image decoder (no Pillow), so the image is letterboxed by `images`, the
Rust image code as a component (guests/images), which `just guests-scripted` composes into this
one (`wasm-tools compose`): the served component imports only `engines`, like any task.

    componentize-py -d wit -w task-with-images componentize app -p guests/task-detect-python -o task.wasm
    wasm-tools compose task.wasm -d images.wasm -o task-detect-python.wasm

Parameters, as the Rust task's: `model` (default `shapes-detect`), `threshold` (0.3), `iou`
(0.5), `max_detections` (100). `wit_world` is generated from wit/tessera.wit at build time.
"""

import math

import wit_world
from componentize_py_types import Err
from wit_world.imports import engines, images, tasks, types

FILL = 114  # the letterbox's grey: train_detect.py's
MAX_LOG_DISTANCE = 6.0  # bounds the boxes a hostile or untrained model can make


def number(params: dict, key: str, default, low, high, kind=float):
    if key not in params:
        return default
    try:
        value = kind(params[key])
    except ValueError:
        value = None
    if value is None or not (low <= value <= high):
        raise Err(types.Error_InvalidInput(f"{key} must be a number from {low} to {high}, got {params[key]!r}"))
    return value


def decode(data: list, classes: int, grid: int, stride: float, threshold: float) -> list:
    """(score, class, [x0, y0, x1, y1] in square pixels) of every cell scoring `threshold`."""
    cells = grid * grid
    found = []
    for cell in range(cells):
        objectness = 1.0 / (1.0 + math.exp(-max(min(data[cell], 80.0), -80.0)))
        if not objectness >= threshold:
            continue
        logits = [data[(5 + k) * cells + cell] for k in range(classes)]
        best = max(range(classes), key=logits.__getitem__)
        top = logits[best]
        score = objectness / sum(math.exp(v - top) for v in logits)
        if not score >= threshold:
            continue
        row, col = divmod(cell, grid)
        cx, cy = (col + 0.5) * stride, (row + 0.5) * stride
        d = [math.exp(min(data[(1 + e) * cells + cell], MAX_LOG_DISTANCE)) * stride for e in range(4)]
        found.append((score, best, [cx - d[0], cy - d[1], cx + d[2], cy + d[3]]))
    return found


def iou(a: list, b: list) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def suppress(found: list, threshold: float, most: int) -> list:
    """Greedy per-class non-maximum suppression, best score first."""
    kept = []
    for f in sorted(found, key=lambda f: -f[0]):
        if len(kept) == most:
            break
        if all(k[1] != f[1] or iou(k[2], f[2]) <= threshold for k in kept):
            kept.append(f)
    return kept


class WitWorld(wit_world.WitWorld):
    def run(self, req: tasks.Request) -> tasks.Answer:
        params = dict(req.params)
        model = params.get("model", "shapes-detect")
        threshold = number(params, "threshold", 0.3, 0.0, 1.0)
        overlap = number(params, "iou", 0.5, 0.0, 1.0)
        most = number(params, "max_detections", 100, 1, 10_000, int)
        info = engines.describe(model, None)
        shape = info.spec.input_shape
        if len(shape) != 4 or shape[2] != shape[3]:
            raise Err(types.Error_Internal(f"model {model} takes {shape}, not a square NCHW image"))
        size = shape[3]
        boxed = images.letterbox(req.body, size, FILL, info.spec.mean, info.spec.std)
        out = engines.run(model, None, boxed.tensor)
        if not out:
            raise Err(types.Error_Internal(f"model {model} gave no output"))
        grid_shape = out[0].tensor.shape
        classes = len(info.labels)
        if (len(grid_shape) != 4 or grid_shape[0] != 1 or grid_shape[1] != 5 + classes
                or grid_shape[2] != grid_shape[3] or grid_shape[2] == 0 or size % grid_shape[2]):
            raise Err(types.Error_Internal(
                f"model {model} answered {grid_shape}: not a [1, 5 + {classes} labels, G, G] grid"))
        grid = grid_shape[2]
        found = decode(out[0].tensor.data, classes, grid, size / grid, threshold)

        def sent(v: float, offset: int, scale: float, side: int) -> float:
            return min(max((v - offset) / scale, 0.0), float(side))

        detections = []
        for score, k, b in suppress(found, overlap, most):
            box = tasks.Bbox(
                sent(b[0], boxed.left, boxed.scale_x, boxed.width), sent(b[1], boxed.top, boxed.scale_y, boxed.height),
                sent(b[2], boxed.left, boxed.scale_x, boxed.width), sent(b[3], boxed.top, boxed.scale_y, boxed.height))
            detections.append(tasks.Detection(info.labels[k], score, box))
        return tasks.Answer_Detections(detections)
