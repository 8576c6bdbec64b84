#!/usr/bin/env python3
"""The seed document's Python model service, as faithfully as this machine allows.

The seed (../shared/seed) runs `grpc.server(futures.ThreadPoolExecutor(max_workers=10))` on the
unchanged `image_recognition.proto`, decodes with PIL, preprocesses with torchvision
(Resize(256) -> CenterCrop(224) -> ToTensor -> Normalize(ImageNet)), runs a PyTorch ResNet in
eager mode on the CPU and answers the softmax top-1 as `class_<index>`. Two backends:

- `--backend torch`: exactly that. The weights are the seeded ONNX graph's (models/tools/
  make_resnet.py), loaded into torchvision's `resnet50()`/`resnet18()`: the graph has the same
  layout with batch norms folded into the convolutions, so each norm becomes an identity with
  the conv's bias as its shift.
- `--backend onnxruntime`: what a user would pick today for the same service: the same gRPC
  server and PIL preprocessing (numpy in place of torchvision's tensor ops, same arithmetic),
  onnxruntime on the ONNX file with `--threads` intra-op threads.

The proto is compiled at start with grpcio-tools into a temporary directory, so the file stays
unchanged. The service prints `listening on <port>` once it accepts requests.
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
from concurrent import futures
from pathlib import Path

import numpy as np
from PIL import Image

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def compile_proto(proto: Path):
    from grpc_tools import protoc

    out = tempfile.mkdtemp(prefix="seed-proto-")
    rc = protoc.main(["protoc", f"-I{proto.parent}", f"--python_out={out}", f"--grpc_python_out={out}", str(proto)])
    if rc != 0:
        sys.exit(f"protoc failed on {proto}")
    sys.path.insert(0, out)
    import image_recognition_pb2 as pb2
    import image_recognition_pb2_grpc as pb2_grpc

    return pb2, pb2_grpc


def pil_preprocess(image: Image.Image) -> np.ndarray:
    """torchvision's Resize(256) -> CenterCrop(224) -> ToTensor -> Normalize, with PIL + numpy."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    w, h = image.size
    # Resize(256): the shorter side to 256, the other by the same ratio (torchvision truncates).
    if w <= h:
        size = (256, int(256 * h / w))
    else:
        size = (int(256 * w / h), 256)
    image = image.resize(size, Image.BILINEAR)
    w, h = image.size
    left, top = int(round((w - 224) / 2.0)), int(round((h - 224) / 2.0))
    image = image.crop((left, top, left + 224, top + 224))
    x = np.asarray(image, dtype=np.float32) / 255.0
    x = (x - MEAN) / STD
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def onnxruntime_backend(model: Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def recognize(image: Image.Image) -> tuple[int, float]:
        logits = session.run(None, {name: pil_preprocess(image)})[0][0]
        e = np.exp(logits - logits.max())
        p = e / e.sum()
        i = int(p.argmax())
        return i, float(p[i])

    return recognize


def torch_backend(model: Path, arch: str, threads: int):
    import onnx
    import torch
    from onnx import numpy_helper
    from torchvision import models, transforms

    if threads:
        torch.set_num_threads(threads)
    net = getattr(models, arch)(weights=None)
    graph = onnx.load(str(model)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    # make_resnet.py emits, per block, the shortcut conv (if any) before the branch convs.
    targets = [(net.conv1, net.bn1)]
    for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
        for block in layer:
            if block.downsample is not None:
                targets.append((block.downsample[0], block.downsample[1]))
            branch = [(block.conv1, block.bn1), (block.conv2, block.bn2)]
            if hasattr(block, "conv3"):
                branch.append((block.conv3, block.bn3))
            targets += branch
    if len(targets) != len(convs):
        sys.exit(f"{model} has {len(convs)} convs, torchvision {arch} has {len(targets)}")
    with torch.no_grad():
        for node, (conv, bn) in zip(convs, targets):
            conv.weight.copy_(torch.from_numpy(inits[node.input[1]].copy()))
            bn.weight.fill_(1.0)
            bn.bias.copy_(torch.from_numpy(inits[node.input[2]].copy()))
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0 - bn.eps)
        gemm = next(n for n in graph.node if n.op_type == "Gemm")
        net.fc.weight.copy_(torch.from_numpy(inits[gemm.input[1]].copy()))
        net.fc.bias.copy_(torch.from_numpy(inits[gemm.input[2]].copy()))
    net.eval()
    transform = transforms.Compose(
        [
            transforms.Resize(256),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )

    def recognize(image: Image.Image) -> tuple[int, float]:
        input_tensor = transform(image).unsqueeze(0)
        with torch.no_grad():
            output = net(input_tensor)
        _, predicted_idx = torch.max(output, 1)
        confidence = torch.softmax(output, dim=1)[0][predicted_idx].item()
        return int(predicted_idx.item()), float(confidence)

    return recognize


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--proto", type=Path, required=True, help="the seed's image_recognition.proto, unchanged")
    ap.add_argument("--model", type=Path, required=True, help="the ONNX graph (make_resnet.py)")
    ap.add_argument("--backend", choices=["torch", "onnxruntime"], default="onnxruntime")
    ap.add_argument("--arch", default="resnet50", help="torchvision architecture for --backend torch")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="intra-op threads")
    ap.add_argument("--port", type=int, default=50051)
    args = ap.parse_args()

    import grpc

    pb2, pb2_grpc = compile_proto(args.proto)
    if args.backend == "torch":
        recognize = torch_backend(args.model, args.arch, args.threads)
    else:
        recognize = onnxruntime_backend(args.model, args.threads)

    class Servicer(pb2_grpc.ImageRecognitionServiceServicer):
        def Recognize(self, request, context):
            try:
                image = Image.open(io.BytesIO(request.image_data))
                index, confidence = recognize(image)
            except Exception as e:  # noqa: BLE001 - an undecodable image is the client's error
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"cannot recognize: {e}")
            return pb2.RecognitionResponse(label=f"class_{index}", confidence=confidence)

    # 20 MB messages: the 12 MP benchmark photo is over grpcio's default 4 MB.
    options = [("grpc.max_receive_message_length", 20 << 20)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=10), options=options)
    pb2_grpc.add_ImageRecognitionServiceServicer_to_server(Servicer(), server)
    port = server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    print(f"listening on {port}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
