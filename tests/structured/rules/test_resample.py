"""Pad, Resize and Upsample rules."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import numpy_helper
from oracle_check import first_group, prove_random_cuts, sandwich

from onnxprune.structured.analysis import analyze
from onnxprune.structured.plan import make_plan
from onnxprune.structured.surgery import apply_plan


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
def test_spatial_pad(mode: str) -> None:
    model = sandwich(lambda g, y: g.op("Pad", [y, g.const(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64))], mode=mode))
    assert first_group(model)[1].prunable
    prove_random_cuts(model)


def test_channel_pad_blocks() -> None:
    model = sandwich(lambda g, y: g.op("Pad", [y, g.const(np.array([0, 1, 0, 0, 0, 1, 0, 0], np.int64))]), c_mid=8)
    _, grp = first_group(model)
    assert not grp.prunable and "pads axis 1" in " ".join(grp.blockers)


def test_resize_with_scales() -> None:
    def middle(g, y):
        scales = g.const(np.array([1, 1, 2, 2], np.float32))
        return g.op("Resize", [y, "", scales], mode="nearest")

    prove_random_cuts(sandwich(middle))


def test_resize_with_sizes_is_rewritten() -> None:
    def middle(g, y):
        sizes = g.const(np.array([1, 6, 10, 10], np.int64))
        return g.op("Resize", [y, "", "", sizes], mode="linear")

    model = sandwich(middle)
    prove_random_cuts(model)
    dg = analyze(model)
    pruned = apply_plan(model, make_plan(model, dg, ratio=0.5), dg=dg)
    node = next(n for n in pruned.graph.node if n.op_type == "Resize")
    value = numpy_helper.to_array(next(t for t in pruned.graph.initializer if t.name == node.input[3]))
    assert value.tolist() == [1, 3, 10, 10]


def test_upsample_opset9() -> None:
    model = sandwich(lambda g, y: g.op("Upsample", [y, g.const(np.array([1, 1, 2, 2], np.float32))]), opset=9)
    prove_random_cuts(model)


def test_resize_with_runtime_sizes_blocks() -> None:
    """Sizes computed at runtime (here a Concat) hold the channel count; the cut cannot rewrite them."""

    def middle(g, y):
        sizes = g.op("Concat", [g.const(np.array([1, 6], np.int64)), g.const(np.array([10, 10], np.int64))], axis=0)
        return g.op("Resize", [y, "", "", sizes], mode="nearest")

    _, grp = first_group(sandwich(middle))
    assert not grp.prunable
    assert any("computes its output sizes at runtime" in b for b in grp.blockers), grp.blockers
