"""Constants shared by unrelated layers (an exporter's de-duplicated zero biases and unit norm scales) do not
tie their readers' channels; the cut gives each reader whose copy differs its own tensor, proven exact."""

from __future__ import annotations

import builders
import numpy as np
import onnx
import pytest
from builders import GraphBuilder, vinfo
from exporter_sharing import reset_to_init_values, share_identical_initializers
from onnx import helper
from oracle_check import check_prune

from onnxprune.core.io import load_model
from onnxprune.structured.analysis import analyze
from onnxprune.structured.axes import ChannelAxis
from onnxprune.structured.plan import PrunePlan

MODELS = "models"


def two_branches_sharing_params(c: int = 4, hw: int = 5) -> onnx.ModelProto:
    """x → conv_a(bias z) → BN(g, b, m, v) → relu → head_a;  x → conv_b(bias z) → BN(same) → relu → head_b;
    heads added. Branches share nothing but the de-duplicated bias and BN tensors."""
    g = GraphBuilder(0)
    z = g.const(np.zeros(c, np.float32), "zero_bias")
    bn = [g.const(np.full(c, v, np.float32), n) for v, n in ((1.0, "one"), (0.0, "zero"), (0.0, "mean"), (1.0, "var"))]
    outs = []
    for _ in range(2):
        y = g.op("Conv", ["x", g.weight((c, 3, 3, 3)), z], pads=[1, 1, 1, 1])
        y = g.op("Relu", [g.op("BatchNormalization", [y, *bn])])
        outs.append(g.op("Conv", [y, g.weight((2, c, 1, 1))]))
    g.nodes.append(helper.make_node("Add", outs, ["out"], name="sum"))
    return g.build([vinfo("x", [1, 3, hw, hw])], [vinfo("out", [1, 2, hw, hw])])


def swapped_halves_sharing_bias(c: int = 4, hw: int = 5) -> onnx.ModelProto:
    """a = conv_a(x, bias z); b = conv_b(x, bias z) with its halves swapped; a + b → relu → head. One group, in
    which root channel i is position i of conv_a's bias and position (i + c/2) % c of conv_b's."""
    g = GraphBuilder(1)
    z = g.const(np.zeros(c, np.float32), "zero_bias")
    a = g.op("Conv", ["x", g.weight((c, 3, 3, 3)), z], pads=[1, 1, 1, 1])
    b = g.op("Conv", ["x", g.weight((c, 3, 3, 3)), z], pads=[1, 1, 1, 1])
    lo, hi = g.op("Split", [b, g.const(np.array([c // 2, c // 2], np.int64), "halves")], n_out=2, axis=1)
    s = g.op("Relu", [g.op("Add", [a, g.op("Concat", [hi, lo], axis=1)])])
    g.nodes.append(helper.make_node("Conv", [s, g.weight((2, c, 1, 1))], ["out"], name="head"))
    return g.build([vinfo("x", [1, 3, hw, hw])], [vinfo("out", [1, 2, hw, hw])])


def _plan(dg, keep: dict[int, list[int]]) -> PrunePlan:
    return PrunePlan(fingerprint=dg.fingerprint, keep=keep, sizes={g: dg.groups[g].size for g in keep})


def test_shared_bias_and_bn_do_not_merge_unrelated_branches() -> None:
    model = two_branches_sharing_params()
    dg = analyze(model)
    assert len(dg.prunable_groups) == 2, dg.summary()
    assert set(dg.split) == {"zero_bias_1", "one_2", "zero_3", "mean_4", "var_5"}
    a, b = (g.id for g in dg.prunable_groups)
    # Different channels dropped in each branch: every shared parameter needs two versions.
    dg, plan, pruned = check_prune(model, plan=_plan(dg, {a: [0, 1], b: [1, 2, 3]}))
    copies = [t for t in pruned.graph.initializer if t.name.startswith("onnxprune_")]
    assert sorted(t.name for t in copies) == sorted(f"onnxprune_{n}" for n in dg.split)
    sizes = {t.name: tuple(t.dims) for t in pruned.graph.initializer}
    assert sizes["zero_bias_1"] == (2,) and sizes["onnxprune_zero_bias_1"] == (3,)


def test_readers_that_lose_the_same_channels_keep_sharing_one_tensor() -> None:
    model = two_branches_sharing_params()
    dg = analyze(model)
    a, b = (g.id for g in dg.prunable_groups)
    _, _, pruned = check_prune(model, plan=_plan(dg, {a: [1, 3], b: [1, 3]}))
    assert not [t.name for t in pruned.graph.initializer if t.name.startswith("onnxprune_")]


def test_reader_whose_channels_are_not_cut_keeps_the_whole_tensor() -> None:
    model = two_branches_sharing_params()
    dg = analyze(model)
    a, _ = (g.id for g in dg.prunable_groups)
    _, _, pruned = check_prune(model, plan=_plan(dg, {a: [2]}))
    sizes = {t.name: tuple(t.dims) for t in pruned.graph.initializer}
    assert sizes["zero_bias_1"] == (1,) and sizes["onnxprune_zero_bias_1"] == (4,)


def test_one_group_whose_members_read_different_positions_gets_a_copy_per_version() -> None:
    model = swapped_halves_sharing_bias()
    dg = analyze(model)
    (group,) = dg.prunable_groups
    assert group.size == 4 and len(group.sources) == 2
    assert dg.group_of(ChannelAxis("zero_bias_1", 0, "conv_6")) == (group.id,)
    _, _, pruned = check_prune(model, plan=_plan(dg, {group.id: [0, 1, 2]}))
    sizes = {t.name: tuple(t.dims) for t in pruned.graph.initializer}
    assert sizes["zero_bias_1"] == (3,) and sizes["onnxprune_zero_bias_1"] == (3,)


def test_shared_constant_node_is_copied_as_a_constant_node() -> None:
    model = two_branches_sharing_params()
    # Make the shared zero bias a Constant node read through Identity by one of the convs.
    value = next(t for t in model.graph.initializer if t.name == "zero_bias_1")
    model.graph.initializer.remove(value)
    model.graph.node.insert(0, helper.make_node("Constant", [], ["zero_bias_1"], name="zb", value=value))
    model.graph.node.insert(1, helper.make_node("Identity", ["zero_bias_1"], ["zb_id"], name="zb_identity"))
    conv_b = [n for n in model.graph.node if n.op_type == "Conv"][2]
    conv_b.input[2] = "zb_id"
    dg = analyze(model)
    assert "zero_bias_1" in dg.split and len(dg.prunable_groups) == 2
    a, b = (g.id for g in dg.prunable_groups)
    _, _, pruned = check_prune(model, plan=_plan(dg, {a: [0], b: [1, 2]}))
    copies = [n for n in pruned.graph.node if n.op_type == "Constant" and n.output[0].startswith("onnxprune_")]
    assert len(copies) == 1


def test_a_shared_weight_still_ties_its_readers() -> None:
    dg = analyze(builders.shared_weight_convs())
    assert not dg.split
    assert len({g.id for g in dg.groups if any(c.tensor == "w" for c in g.sources)}) == 1


@pytest.mark.parametrize("name, groups", [("tv_squeezenet1_1", 25), ("tv_efficientnet_b0", 27),
                                          ("tv_mobilenet_v3_small", 26), ("tv_densenet121", 120),
                                          ("tv_resnet18", 12), ("tv_mobilenet_v2", 24), ("tv_regnet_x_400mf", 49)])
def test_deduplicated_exports_keep_every_independent_group(name: str, groups: int) -> None:
    """Exported as de-duplicating exporters do (zero biases, BN defaults stored once), the analysis finds the
    groups of the original export (before: SqueezeNet 7 of 25, RegNetX 4 of 27, DenseNet 17 of 120)."""
    original = load_model(f"{MODELS}/{name}.onnx")
    shared, folded = share_identical_initializers(reset_to_init_values(original))
    assert folded
    before, after = analyze(original), analyze(shared)
    assert len(before.prunable_groups) == len(after.prunable_groups) == groups
    assert [g.size for g in before.groups] == [g.size for g in after.groups]
    check_prune(shared, plan="random", seed=0, evaluator=False)
