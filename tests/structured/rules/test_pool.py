"""Pool and reduction rules."""

from __future__ import annotations

import builders
import numpy as np
import pytest
from onnx import helper
from oracle_check import first_group, prove_random_cuts, sandwich

POOLS = [("MaxPool", {"kernel_shape": [2, 2]}), ("AveragePool", {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}),
         ("LpPool", {"kernel_shape": [2, 2]}), ("GlobalAveragePool", {}), ("GlobalMaxPool", {}),
         ("GlobalLpPool", {})]


@pytest.mark.parametrize(("op", "attrs"), POOLS, ids=[p[0] for p in POOLS])
def test_pools_keep_channels(op: str, attrs: dict) -> None:
    model = sandwich(lambda g, y: g.op(op, [y], **attrs))
    assert first_group(model)[1].prunable
    prove_random_cuts(model, evaluator=op != "GlobalLpPool")  # not in onnx.reference


def test_maxpool_indices_output_blocks() -> None:
    def middle(g, y):
        values, indices = g.op("MaxPool", [y], n_out=2, kernel_shape=[2, 2])
        return g.op("Add", [values, g.op("Cast", [indices], to=1)])

    assert not first_group(sandwich(middle))[1].prunable


@pytest.mark.parametrize("op", ["ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceProd", "ReduceL1",
                                "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"])
@pytest.mark.parametrize("opset", [13, 18])
def test_reductions_over_spatial_axes(op: str, opset: int) -> None:
    def middle(g, y):
        if op == "ReduceLogSum":  # needs a positive sum
            y = g.op("Exp", [y])
        if opset >= 18 or (op == "ReduceSum" and opset >= 13):
            return g.op(op, [y, g.const(np.array([2, 3], np.int64))], keepdims=1)
        return g.op(op, [y], axes=[2, 3], keepdims=1)

    model = sandwich(middle, opset=opset)
    assert first_group(model)[1].prunable
    prove_random_cuts(model, seeds=range(2))


def test_reduction_without_keepdims_shifts_axes() -> None:
    g = builders.GraphBuilder(0)
    r = g.op("ReduceMean", [g.op("Relu", [g.conv("x", 3, 6)])], axes=[2, 3], keepdims=0)
    g.nodes.append(helper.make_node("Gemm", [r, g.weight((6, 2))], ["out"], name="fc"))
    model = g.build([builders.vinfo("x", [1, 3, 4, 4])], [builders.vinfo("out", [1, 2])])
    prove_random_cuts(model)


def test_reduction_over_channels_blocks() -> None:
    def middle(g, y):
        m = g.op("ReduceMean", [y], axes=[1], keepdims=1)
        return g.op("Mul", [y, g.op("Sigmoid", [m])])

    _, grp = first_group(sandwich(middle))
    assert not grp.prunable and "reduces over axis 1" in " ".join(grp.blockers)
