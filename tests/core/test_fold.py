"""Integer-only constant folding (what width mode folds after freezing the stream's width reads).

Counted on real graphs with onnxruntime as the runner: the runner is onnxprune's own, wrapped only to record
which tensors each evaluation asks for.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxprune.core.fold import fold_constants
from onnxprune.core.weights import copy_model_without_weights
from onnxprune.runtime.session import create_session, run_constant_graph, run_session
from tests.builders import init, make_model, vinfo


class CountingRunner:
    """``run_constant_graph``, recording the targets of every evaluation."""

    def __init__(self) -> None:
        self.asked: list[list[str]] = []

    def __call__(self, model: onnx.ModelProto, outputs: list[str]) -> dict[str, np.ndarray]:
        self.asked.append(list(outputs))
        return run_constant_graph(model, outputs)


def _float_and_integer_recipes(d: int = 64) -> onnx.ModelProto:
    """``MatMul(x, W * s)`` (a float weight computed at run time, 64x64) then a Reshape whose target is
    computed from constants (``Concat(Shape(W), [-1])`` sliced: integer shape arithmetic)."""
    r = np.random.default_rng(0)
    nodes = [
        helper.make_node("Mul", ["w_raw", "scale"], ["w"], name="weight_recipe"),
        helper.make_node("MatMul", ["x", "w"], ["y"], name="fc"),
        helper.make_node("Shape", ["w_raw"], ["w_shape"], name="shape_of_w"),
        helper.make_node("Slice", ["w_shape", "zero", "one"], ["rows"], name="rows"),
        helper.make_node("Div", ["rows", "two"], ["half"], name="half"),
        helper.make_node("Concat", ["minus_one", "half"], ["target"], name="target", axis=0),
        helper.make_node("Reshape", ["y", "target"], ["out"], name="reshape"),
    ]
    inits = [init("w_raw", r.standard_normal((d, d)).astype(np.float32)),
             init("scale", np.array(0.5, dtype=np.float32)),
             init("zero", np.array([0], dtype=np.int64)), init("one", np.array([1], dtype=np.int64)),
             init("two", np.array([2], dtype=np.int64)), init("minus_one", np.array([-1], dtype=np.int64))]
    return make_model(nodes, [vinfo("x", [2, d])], [vinfo("out", [2 * d // (d // 2), d // 2])], inits)


def _run(model: onnx.ModelProto, x: np.ndarray) -> Any:
    return run_session(create_session(model), {"x": x})["out"]


def test_integers_only_never_evaluates_a_float_recipe() -> None:
    """The float weight recipe is neither evaluated nor folded; the integer target is folded, exactly.
    (Before, every constant was evaluated in one run, the 64x64 float product included, then dropped.)"""
    model = _float_and_integer_recipes()
    runner = CountingRunner()
    result = fold_constants(model, runner, integers_only=True)
    assert runner.asked == [["target"]]
    assert result.folded == ("target",)
    ops = [n.op_type for n in result.model.graph.node]
    assert ops == ["Mul", "MatMul", "Reshape"]  # the recipe stays; the shape arithmetic is a constant now
    x = np.random.default_rng(1).standard_normal((2, 64)).astype(np.float32)
    np.testing.assert_array_equal(_run(result.model, x), _run(model, x))
    everything = CountingRunner()
    fold_constants(model, everything)
    assert sorted(everything.asked[0]) == ["target", "w"]  # without integers_only both are evaluated


def test_integers_only_reads_a_data_less_copy_s_weights_from_its_source() -> None:
    """Folding a copy made without its weights' data (what rotation prepares): a shape read of a weight is
    evaluated with the data from ``source``, and the copy still holds none of it."""
    model = _float_and_integer_recipes()
    lean = copy_model_without_weights(model, {"w_raw"})
    source = {t.name: t for t in model.graph.initializer if t.name == "w_raw"}
    result = fold_constants(lean, CountingRunner(), integers_only=True, source=source)
    assert result.folded == ("target",)
    (target,) = [t for t in result.model.graph.initializer if t.name == "target"]
    np.testing.assert_array_equal(numpy_helper.to_array(target), [-1, 32])
    (w_raw,) = [t for t in result.model.graph.initializer if t.name == "w_raw"]
    assert not w_raw.raw_data and not w_raw.float_data and w_raw.data_type == TensorProto.FLOAT
