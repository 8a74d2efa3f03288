"""Shape folding: runtime shape arithmetic evaluated exactly, and the static shapes it gives are the real ones."""

from __future__ import annotations

from pathlib import Path

import builders
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator
from oracle_check import run_ort

from onnxprune.core.io import load_model
from onnxprune.core.shapefold import FOLDERS, fold_values, infer_shapes
from onnxprune.core.stats import model_stats

MODELS = Path(__file__).resolve().parents[2] / "models"


def _i64(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


#: (op, inputs, attributes): every folder against onnx's reference implementation, with the awkward cases
#: (negative integer division, both Mod forms, clamped and reversed slices, negative gather indices).
CASES = [
    ("Div", [_i64(7, -7, 7, -7), _i64(2, 2, -2, -2)], {}),
    ("Div", [np.array([7.0, -1.0], np.float32), np.array([2.0, 4.0], np.float32)], {}),
    ("Mod", [_i64(7, -7, 7, -7), _i64(3, 3, -3, -3)], {}),
    ("Mod", [_i64(7, -7, 7, -7), _i64(3, 3, -3, -3)], {"fmod": 1}),
    ("Slice", [_i64(1, 2, 3, 4, 5), _i64(-2), _i64(2**62), _i64(0)], {}),
    ("Slice", [_i64(1, 2, 3, 4, 5), _i64(-1), _i64(-100), _i64(0), _i64(-2)], {}),
    ("Gather", [_i64(4, 5, 6), _i64(-1, 0)], {"axis": 0}),
    ("Gather", [_i64(4, 5, 6), np.array(1, np.int64)], {}),
    ("Unsqueeze", [np.array(3, np.int64), _i64(0)], {}),
    ("Squeeze", [_i64(3), _i64(0)], {}),
    ("Concat", [_i64(1), _i64(2, 3)], {"axis": 0}),
    ("Reshape", [_i64(1, 2, 3, 4, 5, 6), _i64(0, -1)], {}),
    ("Cast", [_i64(3, -2)], {"to": TensorProto.FLOAT}),
    ("Cast", [np.array([2.7, -2.7], np.float32)], {"to": TensorProto.INT64}),
    ("Range", [np.array(1, np.int64), np.array(10, np.int64), np.array(3, np.int64)], {}),
    ("ConstantOfShape", [_i64(2, 3)], {"value": helper.make_tensor("v", TensorProto.INT64, [1], [7])}),
    ("Where", [np.array([True, False]), _i64(1, 2), _i64(3, 4)], {}),
    ("Equal", [_i64(1, 2), _i64(1, 3)], {}),
    ("Expand", [_i64(3), _i64(2, 1)], {}),
    ("ReduceProd", [_i64(2, 3, 4)], {"keepdims": 0}),
    ("ReduceSum", [_i64(2, 3, 4), _i64(0)], {"keepdims": 1}),
    ("Max", [_i64(1, 5), _i64(3, 2), _i64(0, 9)], {}),
    ("Sqrt", [np.array([4.0, 2.0], np.float32)], {}),
    ("Transpose", [np.arange(8, dtype=np.int64).reshape(4, 2)], {"perm": [1, 0]}),
    ("Transpose", [np.arange(24, dtype=np.int64).reshape(2, 3, 4)], {}),
]


@pytest.mark.parametrize(("op", "inputs", "attrs"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_folders_match_the_reference_evaluator(op: str, inputs: list[np.ndarray], attrs: dict) -> None:
    names = [f"in{k}" for k in range(len(inputs))]
    inits = [onnx.numpy_helper.from_array(v, n) for v, n in zip(inputs, names, strict=True)]
    node = helper.make_node(op, names, ["y"], **attrs)
    graph = helper.make_graph([node], "fold", [], [helper.make_tensor_value_info("y", TensorProto.UNDEFINED, None)],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    want = ReferenceEvaluator(model).run(None, {})[0]
    got = fold_values(model, {})["y"]
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)


def test_every_folder_has_a_case() -> None:
    assert {op for op, _, _ in CASES} | {"Shape", "Size", "Identity", "Add", "Sub", "Mul", "Neg", "Abs", "Floor",
                                         "Ceil", "Min", "Less", "Greater", "Not", "ReduceMin", "ReduceMax"} \
        >= set(FOLDERS)


def test_folding_stops_at_runtime_data() -> None:
    """A value that depends on tensor data (not only on shapes) is never folded."""
    g = builders.GraphBuilder(0)
    n = g.op("Cast", [g.op("ReduceMax", ["x"], keepdims=0)], to=TensorProto.INT64)
    g.op("Add", [n, g.const(np.array(1, np.int64))])
    size = g.op("Shape", ["x"])
    model = g.build([builders.vinfo("x", [2, 3])], [builders.vinfo(size, [2], TensorProto.INT64)])
    values = fold_values(model, infer_shapes(model, fold=False))
    assert size in values and values[size].tolist() == [2, 3]
    assert not any(node.output[0] in values for node in model.graph.node if node.op_type in ("ReduceMax", "Add"))


@pytest.mark.parametrize("name", ["tv_shufflenet_v2_x0_5", "tv_vit_b_16", "digits_transformer"])
def test_folded_shapes_are_the_runtime_shapes(name: str) -> None:
    """Every tensor that gets a static shape has exactly the shape onnxruntime produces at batch 1."""
    model = load_model(MODELS / f"{name}.onnx")
    plain = infer_shapes(model, fold=False)
    folded = infer_shapes(model)
    gained = [t for t, s in folded.items() if all(isinstance(d, int) for d in s)
              and not all(isinstance(d, int) for d in plain.get(t, (None,)))]
    assert gained, "folding found nothing new"
    produced = {o for node in model.graph.node for o in node.output}
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    outputs = [t for t in gained if t in produced][:400]
    probe.graph.output.extend(helper.make_empty_tensor_value_info(t) for t in outputs)
    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name not in inits:
            dims = [d.dim_value if d.HasField("dim_value") else 1 for d in vi.type.tensor_type.shape.dim]
            feeds[vi.name] = np.random.default_rng(0).standard_normal(dims).astype(np.float32)
    got = run_ort(probe, feeds)[len(model.graph.output):]
    assert [tuple(v.shape) for v in got] == [tuple(folded[t]) for t in outputs]


def test_macs_of_runtime_reshaped_models_are_all_known() -> None:
    model = load_model(MODELS / "tv_shufflenet_v2_x0_5.onnx")
    assert model_stats(model).unknown_macs == []


def _window_pad(hw: int, c: int = 4, window: int = 7) -> onnx.ModelProto:
    """Swin's window padding as torch exports ``F.pad(x, (0, 0, 0, pad_w, 0, pad_h))``: the pad sizes come from
    the input's shape, and torch's last-axis-first order is turned into ONNX's through ``Reshape [-1, 2] ->
    Slice (reversed) -> Transpose -> Reshape [-1]``."""
    g = builders.GraphBuilder(0)

    def pad_of(axis: int) -> str:
        size = g.op("Gather", [g.op("Shape", ["x"]), g.const(np.array(axis, np.int64))], axis=0)
        w = g.const(np.array(window, np.int64))
        p = g.op("Mod", [g.op("Sub", [w, g.op("Mod", [size, w])]), w])
        return g.op("Unsqueeze", [p, g.const(_i64(0))])

    zero = g.const(_i64(0))
    torch_pads = g.op("Concat", [zero, zero, zero, pad_of(2), zero, pad_of(1)], axis=0)
    rest = g.op("ConstantOfShape", [g.op("Sub", [g.const(_i64(8)), g.op("Shape", [torch_pads])])],
                value=helper.make_tensor("v", TensorProto.INT64, [1], [0]))
    pairs = g.op("Reshape", [g.op("Concat", [torch_pads, rest], axis=0), g.const(_i64(-1, 2))])
    rev = g.op("Slice", [pairs, g.const(_i64(-1)), g.const(_i64(-(2**63) + 1)), g.const(_i64(0)), g.const(_i64(-1))])
    pads = g.op("Reshape", [g.op("Transpose", [rev], perm=[1, 0]), g.const(_i64(-1))])
    g.nodes.append(helper.make_node("Pad", ["x", pads], ["out"], name="pad", mode="constant"))
    return g.build([builders.vinfo("x", [1, hw, hw, c])], [builders.vinfo("out", [1, "H", "W", c])])


def test_pad_sizes_computed_through_a_transpose_are_folded() -> None:
    """The padded shape is static and is what onnxruntime computes (the Swin exports had every later shape
    symbolic, so no group could even be sized)."""
    model = _window_pad(hw=10)
    shapes = infer_shapes(model)
    x = np.random.default_rng(0).standard_normal((1, 10, 10, 4)).astype(np.float32)
    (out,) = run_ort(model, {"x": x})
    assert out.shape == (1, 14, 14, 4)
    assert shapes["out"] == out.shape
