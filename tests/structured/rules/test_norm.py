"""Normalization rules: per-channel norms are sliced, channel-mixing norms drop whole groups or block."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper
from oracle_check import check_prune, first_group, prove_random_cuts, sandwich


def test_batch_normalization_params_are_sliced() -> None:
    model = sandwich(lambda g, y: g.op("Relu", [g.bn(y, 6)]))
    _, group = first_group(model)
    bn = [c for c in group.cuts if c.op_type == "BatchNormalization"]
    assert sorted(c.input_index for c in bn) == [1, 2, 3, 4]
    prove_random_cuts(model)


def test_instance_normalization() -> None:
    model = sandwich(lambda g, y: g.op("InstanceNormalization", [y, g.weight((6,), low=0.5), g.weight((6,))]))
    assert first_group(model)[1].prunable
    prove_random_cuts(model)


def test_group_normalization_drops_whole_groups() -> None:
    # Opset 18's per-group scale is deprecated (the checker refuses it); opset 21 has per-channel scale.
    def middle(g, y):
        return g.op("GroupNormalization", [y, g.weight((6,), low=0.5), g.weight((6,))], num_groups=3)

    model = sandwich(middle, opset=21)
    _, group = first_group(model)
    assert group.prunable and group.size == 3
    dg, plan, pruned = check_prune(model, ratio=0.34, evaluator=False)
    node = next(n for n in pruned.graph.node if n.op_type == "GroupNormalization")
    assert helper.get_attribute_value(node.attribute[0]) == len(plan.keep[0]) == 2


@pytest.mark.parametrize(("axis", "prunable"), [(1, False), (-1, True), (2, True)])
def test_layer_normalization_blocks_only_over_the_cut_axis(axis: int, prunable: bool) -> None:
    def middle(g, y):
        shape = (6, 5, 5)[axis - 1 if axis > 0 else axis:] if axis > 0 else (5,)
        return g.op("LayerNormalization", [y, g.weight(shape, low=0.5), g.weight(shape)], axis=axis)

    model = sandwich(middle)
    _, group = first_group(model)
    assert group.prunable == prunable, group.blockers
    if prunable:
        prove_random_cuts(model)
    else:
        assert "normalizes over axis 1" in " ".join(group.blockers)


def test_layer_normalization_in_transformer_ffn_keeps_hidden_prunable() -> None:
    import builders

    g = builders.GraphBuilder(0)
    n = g.op("LayerNormalization", ["x", g.weight((8,), low=0.5), g.weight((8,))], axis=-1)
    h = g.op("Relu", [g.op("MatMul", [n, g.weight((8, 12))])])
    g.nodes.append(helper.make_node("MatMul", [h, g.weight((12, 8))], ["out"], name="down"))
    model = g.build([builders.vinfo("x", [2, 3, 8])], [builders.vinfo("out", [2, 3, 8])])
    dg, plan, _ = check_prune(model, ratio=0.5)
    assert plan.channels_removed == 6


def test_lrn_blocks() -> None:
    model = sandwich(lambda g, y: g.op("LRN", [y], size=3))
    _, group = first_group(model)
    assert not group.prunable and "normalizes across axis 1" in group.blockers[0]


@pytest.mark.parametrize(("op", "axis", "prunable"), [("Softmax", 1, False), ("Softmax", 3, True),
                                                       ("LogSoftmax", -1, True), ("Hardmax", 1, False)])
def test_softmax_family(op: str, axis: int, prunable: bool) -> None:
    model = sandwich(lambda g, y: g.op(op, [y], axis=axis))
    _, group = first_group(model)
    assert group.prunable == prunable
    if prunable:
        prove_random_cuts(model)


def test_batchnorm_with_identity_read_params() -> None:
    def middle(g, y):
        gamma = g.op("Identity", [g.weight((6,), low=0.5)])
        return g.op("BatchNormalization", [y, gamma, g.weight((6,)), g.weight((6,)), g.weight((6,), low=0.5)])

    prove_random_cuts(sandwich(middle))
    _ = np
