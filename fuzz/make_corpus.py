"""Writes the seed corpus of the fuzz targets (fuzz/corpus/<target>/): small valid and
nearly-valid inputs of each format, for libFuzzer to mutate and for `./run test` to replay.
Run: .venv/bin/python fuzz/make_corpus.py (Pillow, tritonclient from requirements.txt).
Regressions are added to the same directories by hand, named `regression-*` after the bug
(oip_rest: a shape whose element count overflowed, one that reserved 4 GB up front, a
negative dimension; config_files: batching.toml's NaN `std`)."""

import io
import json
import pathlib
import struct

from PIL import Image
import tritonclient.grpc.service_pb2 as oip

ROOT = pathlib.Path(__file__).resolve().parent / "corpus"


def write(target, name, data):
    d = ROOT / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data if isinstance(data, bytes) else data.encode())


def image(fmt, size=(24, 16), mode="RGB", **kw):
    img = Image.new(mode, size)
    for x in range(size[0]):
        for y in range(size[1]):
            img.putpixel((x, y), (x * 10 % 256, y * 15 % 256, 90) if mode == "RGB" else (x * 10 % 256))
    out = io.BytesIO()
    img.save(out, fmt, **kw)
    return out.getvalue()


def varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        out += bytes([b | (0x80 if n else 0)])
        if not n:
            return out


def field(number, wire, payload):
    key = varint(number << 3 | wire)
    return key + (varint(len(payload)) + payload if wire == 2 else varint(payload))


def main():
    png = image("PNG")
    jpeg = image("JPEG", quality=80)
    write("decode", "rgb.png", png)
    write("decode", "grey.png", image("PNG", mode="L"))
    write("decode", "rgb.jpg", jpeg)
    write("decode", "progressive.jpg", image("JPEG", progressive=True))
    write("decode", "truncated.jpg", jpeg[: len(jpeg) // 2])
    write("decode", "rgb.gif", image("GIF"))
    write("decode", "rgb.bmp", image("BMP"))
    write("decode", "rgb.webp", image("WEBP", lossless=True))

    boundary = "XyZ"
    multipart = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\n"
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n"
        "Content-Type: image/png\r\n\r\n"
    ).encode() + png[:64] + f"\r\n--{boundary}--\r\n".encode()
    write("http_request", "multipart", b"top_k=3&model=shapes\ncontent-type: multipart/form-data; boundary=\"XyZ\"\nx-request-timeout-ms: 500\nx-tenant: a\n\n" + multipart)
    write("http_request", "raw-png", b"version=1&pipeline=strict\ncontent-type: image/png\n\n" + png[:64])
    write("http_request", "bad-query", b"top_k=0&colour=red%20x\ncontent-type: text/plain\n\nhello")

    def rest(inputs, params=None):
        return json.dumps({"id": "1", "inputs": inputs, "parameters": params or {}})

    write("oip_rest", "bytes-json", "\n" + rest([{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["abc"]}], {"top_k": 2}))
    write("oip_rest", "fp32-json", "\n" + rest([{"name": "input", "datatype": "FP32", "shape": [1, 2, 2], "data": [[1.0, 2.0], [3.0, 4.5]]}]))
    header = rest([{"name": "image", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 12}}], {"pipeline": "p"})
    write("oip_rest", "bytes-binary", f"{len(header)}\n{header}".encode() + struct.pack("<I", 8) + png[:8])
    header = rest([{"name": "input", "datatype": "FP32", "shape": [2], "parameters": {"binary_data_size": 8}}])
    write("oip_rest", "fp32-binary", f"{len(header)}\n{header}".encode() + struct.pack("<2f", 0.5, -1.0))

    r = oip.ModelInferRequest(model_name="shapes", model_version="1")
    t = r.inputs.add(name="image", datatype="BYTES", shape=[1])
    t.contents.bytes_contents.append(png[:32])
    r.parameters["top_k"].int64_param = 3
    write("oip_grpc", "bytes-contents", r.SerializeToString())
    r = oip.ModelInferRequest(model_name="shapes")
    t = r.inputs.add(name="input", datatype="FP32", shape=[1, 3])
    r.raw_input_contents.append(struct.pack("<3f", 1, 2, 3))
    r.parameters["pipeline"].string_param = "strict"
    write("oip_grpc", "fp32-raw", r.SerializeToString())

    msg = field(1, 2, png[:48]) + field(2, 2, b"png") + field(16, 0, 3) + field(17, 2, b"shapes") + field(19, 2, b"strict")
    write("tessera_grpc", "full", msg)
    write("tessera_grpc", "seed-fields", field(1, 2, jpeg[:32]) + field(2, 2, b".JPG"))

    repo = pathlib.Path(__file__).resolve().parents[1]
    write("config_files", "model.toml", (repo / "models/shapes/model.toml").read_bytes())
    write("config_files", "repository.toml", (repo / "models/repository.toml").read_bytes())
    write("config_files", "tessera.toml", (repo / "config/tessera.example.toml").read_bytes())
    write("config_files", "batching.toml", b'input_shape = [1, 3, 8, 8]\nresize = 8\nmean = [0.0, 0.0, 0.0]\nstd = [1.0, 1.0, nan]\nlabels = "l.txt"\nmax_batch_size = 4\nversion_policy = { latest = 2 }\n')


if __name__ == "__main__":
    main()
