"""Writes the hostile ONNX models the reliability tests load (tests/fixtures/models/).

Both are a few hundred bytes and take an image input like the shapes model's
([1, 3, 224, 224] float -> [1, 3] scores), so they sit in a model directory like any other:

- expand-bomb.onnx: a constant 1.0 expanded to 60000 x 60000 floats (14.4 GB) and reduced to
  a scalar that scales the output. Every input of the Expand is constant, so an engine folds
  it while loading: the whole tensor is allocated at load, before any request.
- slow.onnx: the image reshaped to 672 x 224 and multiplied through LAYERS 2048 x 2048 weights
  made by ConstantOfShape (one 16 MiB constant, shared): tens of GFLOP per run, little memory.
  It loads quickly and runs for seconds: what a load probe that runs the model once must bound.

Run: .venv/bin/python tests/tools/make_hostile_models.py  (onnx from requirements.txt)
"""

import pathlib

import onnx
from onnx import TensorProto, helper

OUT = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "models"
OPSET = [helper.make_opsetid("", 17)]
LAYERS = 40


def ints(name, values):
    return helper.make_tensor(name, TensorProto.INT64, [len(values)], values)


def image_input():
    return helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 224, 224])


def scores_output():
    return helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 3])


def expand_bomb():
    nodes = [
        helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("Expand", ["one", "bomb_shape"], ["bomb"]),
        helper.make_node("ReduceMax", ["bomb"], ["peak"], keepdims=0),
        helper.make_node("Mul", ["flat", "peak"], ["scores"]),
    ]
    init = [helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0]), ints("bomb_shape", [60000, 60000])]
    graph = helper.make_graph(nodes, "expand_bomb", [image_input()], [scores_output()], init)
    return helper.make_model(graph, opset_imports=OPSET, ir_version=8)


def slow():
    nodes = [
        helper.make_node("Reshape", ["image", "rows"], ["x0"]),
        helper.make_node("ConstantOfShape", ["w_in_shape"], ["w_in"], value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1e-3])),
        helper.make_node("ConstantOfShape", ["w_shape"], ["w"], value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1e-4])),
        helper.make_node("ConstantOfShape", ["w_out_shape"], ["w_out"], value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1e-3])),
        helper.make_node("MatMul", ["x0", "w_in"], ["h0"]),
    ]
    for i in range(LAYERS):
        nodes.append(helper.make_node("MatMul", [f"h{i}", "w"], [f"h{i + 1}"]))
    nodes += [
        helper.make_node("MatMul", [f"h{LAYERS}", "w_out"], ["per_row"]),
        helper.make_node("ReduceMean", ["per_row"], ["scores"], axes=[0], keepdims=1),
    ]
    init = [ints("rows", [672, 224]), ints("w_in_shape", [224, 2048]), ints("w_shape", [2048, 2048]), ints("w_out_shape", [2048, 3])]
    graph = helper.make_graph(nodes, "slow", [image_input()], [scores_output()], init)
    return helper.make_model(graph, opset_imports=OPSET, ir_version=8)


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    for name, model in [("expand-bomb", expand_bomb()), ("slow", slow())]:
        onnx.checker.check_model(model)
        path = OUT / f"{name}.onnx"
        onnx.save(model, path)
        print(f"{path.relative_to(OUT.parents[2])}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
