"""tritonclient (HTTP), unchanged, against Tessera's KServe Open Inference Protocol v2 routes.
Prints one JSON object of what it saw; the Rust integration test (tests/tests/oip/mod.rs)
asserts on it.

usage: oip_client.py --url HOST:PORT --grpc HOST:PORT --model NAME --image FILE --tensor FILE
                     [--task NAME --scene FILE]

--url is the HTTP port (tritonclient.http), --grpc the gRPC port (tritonclient.grpc).

--tensor is the model's input for --image as raw little-endian f32 (`tessera preprocess`).
--task is a task served as a model (one BYTES input, the `answer` output as JSON), run on --scene
over both protocols.
"""

import argparse
import json

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--image", required=True)
    p.add_argument("--tensor", required=True)
    p.add_argument("--grpc", required=True)
    p.add_argument("--task")
    p.add_argument("--scene")
    args = p.parse_args()
    client = httpclient.InferenceServerClient(url=args.url)
    seen = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready(args.model),
        "missing_ready": client.is_model_ready("missing"),
        "server": client.get_server_metadata(),
    }
    meta = client.get_model_metadata(args.model)
    seen["metadata"] = meta
    tensor_in = meta["inputs"][0]
    shape = [int(d) for d in tensor_in["shape"]]

    # The whole pipeline: an encoded image as BYTES, binary (tritonclient's default) and JSON outputs.
    image = np.array([open(args.image, "rb").read()], dtype=np.object_)
    inp = httpclient.InferInput("image", [1], "BYTES")
    inp.set_data_from_numpy(image, binary_data=True)
    outs = [httpclient.InferRequestedOutput(n, binary_data=b) for n, b in
            [("label", True), ("confidence", False), ("top_k_labels", True), ("top_k_scores", True)]]
    r = client.infer(args.model, [inp], outputs=outs, parameters={"top_k": 3}, request_id="oip-1")
    resp = r.get_response()
    seen["pipeline"] = {
        "label": r.as_numpy("label")[0].decode(),
        "confidence": float(r.as_numpy("confidence")[0]),
        "top_k_labels": [x.decode() for x in r.as_numpy("top_k_labels")],
        "top_k_scores": [float(x) for x in r.as_numpy("top_k_scores")],
        "id": resp.get("id"),
        "model_version": resp.get("model_version"),
        "decision_rule": resp.get("parameters", {}).get("decision_rule"),
        "pipeline": resp.get("parameters", {}).get("pipeline"),
    }

    # Inference alone: the model's FP32 input, binary in, binary out, and JSON in, JSON out.
    x = np.fromfile(args.tensor, dtype="<f4").reshape(shape)
    for binary in (True, False):
        t = httpclient.InferInput(tensor_in["name"], shape, "FP32")
        t.set_data_from_numpy(x, binary_data=binary)
        out_name = meta["outputs"][0]["name"]
        r = client.infer(args.model, [t], outputs=[httpclient.InferRequestedOutput(out_name, binary_data=binary)])
        logits = r.as_numpy(out_name)
        seen["tensor_binary" if binary else "tensor_json"] = {
            "shape": list(logits.shape),
            "argmax": int(np.argmax(logits)),
        }

    # Errors as the protocol defines them.
    errors = {}
    for name, call in [
        ("missing_model", lambda: client.infer("missing", [inp])),
        ("wrong_shape", lambda: client.infer(args.model, [_fp32(tensor_in["name"], [1, 3, 8, 8])])),
        ("corrupt_image", lambda: client.infer(args.model, [_bytes(b"not an image")])),
        ("missing_pipeline", lambda: client.infer(args.model, [inp], parameters={"pipeline": "missing"})),
    ]:
        try:
            call()
            errors[name] = "accepted"
        except InferenceServerException as e:
            errors[name] = {"status": e.status(), "message": e.message()}
    seen["errors"] = errors
    seen["grpc"] = over_grpc(args, shape, tensor_in["name"], meta["outputs"][0]["name"])
    if args.task:
        seen["task"] = task(args)
    print(json.dumps(seen))


def task(args) -> dict:
    """--task on --scene: its metadata, and its answer through both clients."""
    body = np.array([open(args.scene, "rb").read()], dtype=np.object_)
    client = httpclient.InferenceServerClient(url=args.url)
    seen = {"ready": client.is_model_ready(args.task), "metadata": client.get_model_metadata(args.task)}
    inp = httpclient.InferInput("body", [1], "BYTES")
    inp.set_data_from_numpy(body, binary_data=True)
    r = client.infer(args.task, [inp], parameters={"threshold": 0.3})
    seen["http"] = json.loads(r.as_numpy("answer")[0])
    seen["http_model_name"] = r.get_response().get("model_name")
    g = grpcclient.InferenceServerClient(url=args.grpc)
    seen["grpc_ready"] = g.is_model_ready(args.task)
    ginp = grpcclient.InferInput("body", [1], "BYTES")
    ginp.set_data_from_numpy(body)
    seen["grpc"] = json.loads(g.infer(args.task, [ginp], parameters={"threshold": 0.3}).as_numpy("answer")[0])
    return seen


def over_grpc(args, shape, input_name, output_name) -> dict:
    """The same through tritonclient.grpc (raw contents both ways, as it sends them)."""
    client = grpcclient.InferenceServerClient(url=args.grpc)
    seen = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready(args.model),
        "missing_ready": client.is_model_ready("missing"),
    }
    meta = client.get_model_metadata(args.model, as_json=True)
    seen["inputs"] = [(t["name"], t["datatype"]) for t in meta["inputs"]]
    inp = grpcclient.InferInput("image", [1], "BYTES")
    inp.set_data_from_numpy(np.array([open(args.image, "rb").read()], dtype=np.object_))
    r = client.infer(args.model, [inp], parameters={"top_k": 3, "pipeline": "default"}, request_id="oip-g",
                     outputs=[grpcclient.InferRequestedOutput(n) for n in ("label", "top_k_labels")])
    resp = r.get_response(as_json=True)
    seen["pipeline"] = {
        "label": r.as_numpy("label")[0].decode(),
        "top_k_labels": [x.decode() for x in r.as_numpy("top_k_labels")],
        "id": resp.get("id"),
        "decision_rule": resp.get("parameters", {}).get("decision_rule", {}).get("string_param"),
        "pipeline": resp.get("parameters", {}).get("pipeline", {}).get("string_param"),
    }
    x = np.fromfile(args.tensor, dtype="<f4").reshape(shape)
    t = grpcclient.InferInput(input_name, shape, "FP32")
    t.set_data_from_numpy(x)
    logits = client.infer(args.model, [t]).as_numpy(output_name)
    seen["tensor"] = {"shape": list(logits.shape), "argmax": int(np.argmax(logits))}
    try:
        client.infer("missing", [inp])
        seen["missing_model"] = "accepted"
    except InferenceServerException as e:
        seen["missing_model"] = {"status": e.status(), "message": e.message()}
    return seen


def _fp32(name, shape):
    t = httpclient.InferInput(name, shape, "FP32")
    t.set_data_from_numpy(np.zeros(shape, dtype=np.float32))
    return t


def _bytes(data):
    t = httpclient.InferInput("image", [1], "BYTES")
    t.set_data_from_numpy(np.array([data], dtype=np.object_))
    return t


if __name__ == "__main__":
    main()
