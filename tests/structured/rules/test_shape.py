"""Shape rules: Concat, Split, Slice, Transpose, Reshape, Flatten, Squeeze, Unsqueeze, channel shuffle."""

from __future__ import annotations

import re

import builders
import numpy as np
import pytest
from onnx import helper, numpy_helper
from oracle_check import check_prune, first_group, prove_random_cuts, sandwich

from onnxprune.core.shapefold import infer_shapes
from onnxprune.structured.analysis import analyze


def test_concat_of_two_layers_keeps_separate_groups() -> None:
    def middle(g, y):
        return g.op("Concat", [g.op("Relu", [y]), g.op("Relu", [g.conv("x", 3, 4)])], axis=1)

    model = sandwich(middle, c_mid=10)
    dg = analyze(model)
    assert [grp.size for grp in dg.groups[:2]] == [6, 4] and dg.groups[1].prunable
    prove_random_cuts(model)


def test_concat_with_graph_input_blocks_only_that_part() -> None:
    model = sandwich(lambda g, y: g.op("Concat", [y, "x"], axis=1), c_mid=9)
    dg = analyze(model)
    assert dg.groups[0].prunable
    assert any("graph input" in " ".join(grp.blockers) for grp in dg.groups)
    prove_random_cuts(model)


@pytest.mark.parametrize(("opset", "form"), [(11, "attr"), (13, "input"), (13, "equal"), (18, "num_outputs")])
def test_split_forms_are_rewritten(opset: int, form: str) -> None:
    def middle(g, y):
        if form == "attr":
            a, b = g.op("Split", [y], n_out=2, axis=1, split=[2, 4])
        elif form == "input":
            a, b = g.op("Split", [y, g.const(np.array([2, 4], np.int64))], n_out=2, axis=1)
        elif form == "equal":
            a, b = g.op("Split", [y], n_out=2, axis=1)
        else:
            a, b = g.op("Split", [y], n_out=2, axis=1, num_outputs=2)
        return g.op("Concat", [g.op("Relu", [b]), g.op("Sigmoid", [a])], axis=1)

    model = sandwich(middle, opset=opset)
    assert first_group(model)[1].prunable
    prove_random_cuts(model, seeds=range(4))


def test_split_boundary_inside_a_group() -> None:
    prove_random_cuts(builders.concat_split(), seeds=range(5))


@pytest.mark.parametrize(("start", "end"), [(1, 5), (-4, 100), (0, 6)])
def test_slice_window_on_channels(start: int, end: int) -> None:
    def middle(g, y):
        s = g.op("Slice", [y, g.const(np.array([start], np.int64)), g.const(np.array([end], np.int64)),
                           g.const(np.array([1], np.int64))])
        return s

    n = len(range(6)[slice(start, end)])
    model = sandwich(middle, c_mid=n)
    dg, grp = first_group(model)
    assert grp.prunable
    prove_random_cuts(model, seeds=range(4))


def test_slice_with_step_on_channels_blocks() -> None:
    def middle(g, y):
        return g.op("Slice", [y, g.const(np.array([0], np.int64)), g.const(np.array([6], np.int64)),
                              g.const(np.array([1], np.int64)), g.const(np.array([2], np.int64))])

    _, grp = first_group(sandwich(middle, c_mid=3))
    assert not grp.prunable and "step 2" in grp.blockers[0]


def test_slice_on_spatial_axis_is_transparent() -> None:
    def middle(g, y):
        return g.op("Slice", [y, g.const(np.array([1], np.int64)), g.const(np.array([4], np.int64)),
                              g.const(np.array([2], np.int64))])

    prove_random_cuts(sandwich(middle))


def test_transpose_to_channels_last_then_matmul() -> None:
    g = builders.GraphBuilder(0)
    y = g.op("Relu", [g.conv("x", 3, 6)])
    t = g.op("Transpose", [y], perm=[0, 2, 3, 1])
    g.nodes.append(helper.make_node("MatMul", [t, g.weight((6, 4))], ["out"], name="proj"))
    model = g.build([builders.vinfo("x", [1, 3, 4, 4])], [builders.vinfo("out", [1, 4, 4, 4])])
    dg, plan, _ = check_prune(model, ratio=0.5)
    assert dg.groups[0].sinks[0].op_type == "MatMul"


@pytest.mark.parametrize("target", [[1, -1], [1, 54], [-1, 54], [0, -1]])
def test_reshape_to_features_rewrites_target(target: list[int]) -> None:
    g = builders.GraphBuilder(0)
    y = g.op("Relu", [g.conv("x", 2, 6)])
    f = g.op("Reshape", [y, g.const(np.array(target, np.int64))])
    g.nodes.append(helper.make_node("Gemm", [f, g.weight((54, 5))], ["out"], name="fc"))
    model = g.build([builders.vinfo("x", [1, 2, 3, 3])], [builders.vinfo("out", [1, 5])])
    dg, plan, pruned = check_prune(model, ratio=0.5)
    if target[1] == 54:
        node = next(n for n in pruned.graph.node if n.op_type == "Reshape")
        value = numpy_helper.to_array(next(t for t in pruned.graph.initializer if t.name == node.input[1]))
        assert value.tolist()[1] == 27


def test_flatten_gemm_blocks() -> None:
    prove_random_cuts(builders.flatten_gemm(), seeds=range(4))


def test_squeeze_unsqueeze_after_global_pool() -> None:
    def make(opset: int):
        g = builders.GraphBuilder(0, opset)
        y = g.op("GlobalAveragePool", [g.op("Relu", [g.conv("x", 3, 6)])])
        if opset >= 13:
            s = g.op("Squeeze", [y, g.const(np.array([2, 3], np.int64))])
            u = g.op("Unsqueeze", [g.op("Relu", [s]), g.const(np.array([1], np.int64))])
        else:
            s = g.op("Squeeze", [y], axes=[2, 3])
            u = g.op("Unsqueeze", [g.op("Relu", [s])], axes=[1])
        g.nodes.append(helper.make_node("MatMul", [u, g.weight((6, 3))], ["out"], name="head"))
        return g.build([builders.vinfo("x", [1, 3, 4, 4])], [builders.vinfo("out", [1, 1, 3])])

    for opset in (11, 17):
        prove_random_cuts(make(opset))


def test_channel_shuffle_is_blocked_with_a_reason() -> None:
    def middle(g, y):
        r = g.op("Reshape", [y, g.const(np.array([1, 2, 3, 5, 5], np.int64))])
        t = g.op("Transpose", [r], perm=[0, 2, 1, 3, 4])
        return g.op("Reshape", [t, g.const(np.array([1, 6, 5, 5], np.int64))])

    _, grp = first_group(sandwich(middle))
    assert not grp.prunable and "channel shuffle" in " ".join(grp.blockers)


def test_a_reshape_to_its_own_runtime_shape_follows_the_cut() -> None:
    """``Reshape(y, Shape(y))``: every entry of the target is the run-time size of the same axis of ``y``, so
    after the cut it reads the new width (shape_reads); the cut is exact."""
    def middle(g, y):
        return g.op("Reshape", [y, g.op("Shape", [y])])

    model = sandwich(middle)
    assert first_group(model)[1].prunable
    prove_random_cuts(model)


def test_a_runtime_target_halving_the_cut_axis_is_blocked() -> None:
    """The channel entry of the target is ``Shape(y)[1] / 2``, an exact division the shape reads follow, but it
    lands on an axis that mixes the channels with the spatial axes (``(1, 6, 5, 5) -> (1, 10, 3, 5)``): blocked,
    and the read is named as not following the cut. (``(1, 6, 5, 5) -> (1, 3, 50)`` is cut by pairs of
    channels instead: ``tests/structured/test_patches.py``.)"""
    def middle(g, y):
        shape = g.op("Shape", [y])
        half = g.op("Div", [g.op("Slice", [shape, g.const(np.array([1], np.int64)), g.const(np.array([2], np.int64))]),
                            g.const(np.array([2], np.int64))])
        target = g.op("Concat", [g.const(np.array([1, 10], np.int64)), half, g.const(np.array([-1], np.int64))],
                      axis=0)
        return g.op("Reshape", [g.op("Reshape", [y, target]), g.const(np.array([1, 6, 5, 5], np.int64))])

    _, grp = first_group(sandwich(middle))
    assert not grp.prunable
    assert any(re.search(r"sets axis 2 of 'reshape_\d+' at run time to the size // 2 of axis 1 of 'conv_\d+', "
                         r"which the cut does not change in step with it", b) for b in grp.blockers), grp.blockers


def _scaled_by(g, y, read) -> str:
    """``y * float(read(g, y))``: a value computed from ``y``'s shape flows back into the data path."""
    value = g.op("Cast", [read(g, y)], to=1)
    return g.op("Mul", [g.op("Relu", [y]), value])


@pytest.mark.parametrize("read", [
    pytest.param(lambda g, y: g.op("Gather", [g.op("Shape", [y]), g.const(np.array(2, np.int64))], axis=0),
                 id="gather-height"),
    pytest.param(lambda g, y: g.op("ReduceProd", [g.op("Gather", [g.op("Shape", [y]), g.const(np.array(
        [0, -1], np.int64))], axis=0)], keepdims=0), id="gather-batch-and-width"),
    pytest.param(lambda g, y: g.op("ReduceProd", [g.op("Slice", [g.op("Shape", [y]), g.const(np.array([2], np.int64)),
                                                                 g.const(np.array([4], np.int64))])], keepdims=0),
                 id="slice-spatial"),
    pytest.param(lambda g, y: g.op("ReduceProd", [g.op("Shape", [y], start=2)], keepdims=0), id="shape-start-2"),
    pytest.param(lambda g, y: g.op("ReduceProd", [g.op("Shape", [y], start=-2, end=4)], keepdims=0),
                 id="shape-negative-start"),
])
def test_shape_of_other_dims_does_not_block(read) -> None:
    model = sandwich(lambda g, y: _scaled_by(g, y, read))
    _, grp = first_group(model)
    assert grp.prunable, grp.blockers
    prove_random_cuts(model)


@pytest.mark.parametrize(("read", "reason"), [
    (lambda g, y: g.op("Gather", [g.op("Shape", [y]), g.const(np.array(1, np.int64))], axis=0),
     r"reports the size of cut axis 1 .*Gather/Slice of that entry"),
    (lambda g, y: g.op("Gather", [g.op("Shape", [y]), g.const(np.array([-3], np.int64))], axis=0),
     r"reports the size of cut axis 1"),
    (lambda g, y: g.op("ReduceProd", [g.op("Slice", [g.op("Shape", [y]), g.const(np.array([0], np.int64)),
                                                     g.const(np.array([2], np.int64))])], keepdims=0),
     r"reports the size of cut axis 1"),
    (lambda g, y: g.op("ReduceProd", [g.op("Shape", [y])], keepdims=0),
     r"used whole by '.*' \(ReduceProd\)"),
    (lambda g, y: g.op("Size", [y]), r"reads the element count of '.*', which changes with axis 1"),
])
def test_shape_of_the_cut_axis_blocks_with_the_reader_named(read, reason: str) -> None:
    _, grp = first_group(sandwich(lambda g, y: _scaled_by(g, y, read)))
    assert not grp.prunable
    assert any(re.search(reason, b) for b in grp.blockers), grp.blockers


def test_runtime_shape_arithmetic_gives_static_shapes_downstream() -> None:
    """A window computed as ``Shape -> Gather -> Div -> Slice`` (torch's ``x.chunk(2, dim=1)``) folds at fixed
    input dims, so the layers after it are analysed; the slice itself stays blocked (it reads the cut axis)."""

    def middle(g, y):
        half = g.op("Div", [g.op("Gather", [g.op("Shape", [y]), g.const(np.array([1], np.int64))], axis=0),
                            g.const(np.array(2, np.int64))])
        first = g.op("Slice", [y, g.const(np.array([0], np.int64)), half, g.const(np.array([1], np.int64))])
        inner = g.op("Relu", [g.conv(first, 3, 7)])
        return g.conv(inner, 7, 6)

    model = sandwich(middle)
    assert "unk" in str(infer_shapes(model, fold=False)[model.graph.node[-2].output[0]])  # onnx alone: symbolic
    dg = analyze(model)
    assert not dg.groups[0].prunable and "cut axis 1" in dg.groups[0].blockers[0]
    inner = [grp for grp in dg.groups if grp.size == 7]
    assert len(inner) == 1 and inner[0].prunable
    check_prune(model, ratio=0.5)


def test_slice_with_runtime_bounds_on_another_axis_carries_channels() -> None:
    """torch's ``x[..., : x.shape[-1] // 2]`` (rotary ``rotate_half``): the bounds are computed at run time,
    but on the last axis only; the channel axis passes through and the Slice is left as it is."""
    def middle(g, y):
        half = g.op("Div", [g.op("Gather", [g.op("Shape", [y]), g.const(np.array([3], np.int64))], axis=0),
                            g.const(np.array([2], np.int64))])
        return g.op("Slice", [y, g.const(np.array([0], np.int64)), half, g.const(np.array([-1], np.int64))])

    model = sandwich(middle)
    dg, group = first_group(model)
    assert group.prunable, dg.explain(group.id)
    prove_random_cuts(model)
