"""Rules for layers with weights: Conv (groups, depthwise, dilations, pads), ConvTranspose, Gemm, MatMul."""

from __future__ import annotations

import builders
import numpy as np
import onnx
import pytest
from onnx import helper
from oracle_check import check_prune, prove_random_cuts, sandwich

from onnxprune.structured.analysis import analyze


@pytest.mark.parametrize("attrs", [{"dilations": [2, 2], "pads": [2, 2, 2, 2]},
                                   {"strides": [2, 2], "pads": [0, 1, 1, 0]},
                                   {"auto_pad": "SAME_UPPER", "pads": None}])
def test_conv_variants(attrs: dict) -> None:
    def middle(g, y):
        a = {k: v for k, v in attrs.items() if v is not None}
        w = g.weight((5, 6, 3, 3))
        out = g.op("Conv", [g.op("Relu", [y]), w], **a)
        return g.op("Relu", [out])

    model = sandwich(middle, c_mid=5)
    dg = analyze(model)
    assert dg.groups[0].prunable and dg.groups[1].prunable
    prove_random_cuts(model)


def _group_attr(model: onnx.ModelProto, k: int) -> int:
    conv = [n for n in model.graph.node if n.op_type == "Conv"][k]
    return int(helper.get_attribute_value(next(a for a in conv.attribute if a.name == "group")))


@pytest.mark.parametrize(("group", "mult"), [(2, 1), (3, 2)])
def test_grouped_conv_drops_whole_groups_and_rewrites_group(group: int, mult: int) -> None:
    c_out = 6 * mult
    model = sandwich(lambda g, y: g.op("Relu", [g.conv(y, 6, c_out, group=group)]), c_mid=c_out)
    dg = analyze(model, grouped_conv="whole")
    assert dg.groups[0].size == group  # one root channel per conv group
    _, plan, pruned = check_prune(model, ratio=0.5, grouped_conv="whole")
    assert _group_attr(pruned, 1) == len(plan.keep[0])
    assert plan.meta["grouped_conv"] == "whole"


@pytest.mark.parametrize(("group", "c_in", "c_out"), [(2, 6, 6), (3, 6, 12), (4, 8, 8)])
def test_grouped_conv_within_groups_keeps_group_and_cuts_every_group_alike(group: int, c_in: int,
                                                                           c_out: int) -> None:
    """DepGraph's way (the default): input and output channels are separate groups whose root channels are
    positions inside a conv group; every conv group loses the same ones, ``group`` is unchanged."""
    model = sandwich(lambda g, y: g.op("Relu", [g.conv(y, c_in, c_out, group=group)]), c=c_in, c_mid=c_out)
    dg = analyze(model)
    into, out = dg.groups[0], dg.groups[1]
    assert (into.size, out.size) == (c_in // group, c_out // group) and into.prunable and out.prunable
    w = [c for c in into.sinks if c.axis == 1][0]  # the grouped conv's weight axis 1 absorbs the input cut
    assert w.op_type == "Conv" and w.positions(np.array([0])).tolist() == [0]
    dg, plan, pruned = check_prune(model, ratio=0.5)
    assert plan.meta["grouped_conv"] == "within" and _group_attr(pruned, 1) == group
    weights = {t.name: tuple(t.dims) for t in pruned.graph.initializer}
    grouped_w = [n for n in pruned.graph.node if n.op_type == "Conv"][1].input[1]
    assert weights[grouped_w][:2] == (group * len(plan.keep[out.id]), len(plan.keep[into.id]))
    assert len(plan.keep[into.id]) < into.size and len(plan.keep[out.id]) < out.size
    for seed in range(3):
        check_prune(model, plan="random", seed=seed)


def test_grouped_conv_within_one_input_channel_dropped_in_every_group() -> None:
    """Dropping root 1 of the input group removes input channel 1 of every conv group (1, 4, 7 of 9)."""
    model = sandwich(lambda g, y: g.op("Relu", [g.conv(y, 9, 6, group=3)]), c=9, c_mid=6)
    dg = analyze(model)
    into = dg.groups[0]
    src = into.sources[0]
    assert src.positions(np.array([1])).tolist() == [1, 4, 7]
    from onnxprune.structured.plan import PrunePlan

    plan = PrunePlan(fingerprint=dg.fingerprint, keep={into.id: [0, 2]}, sizes={into.id: 3})
    _, _, pruned = check_prune(model, plan=plan)
    assert _group_attr(pruned, 1) == 3


@pytest.mark.parametrize("mult", [1, 2])
def test_depthwise_conv(mult: int) -> None:
    model = builders.depthwise(mult=mult)
    dg, plan, pruned = check_prune(model, ratio=0.5)
    assert dg.groups[0].size == 6 and len(plan.keep[0]) == 3
    prove_random_cuts(builders.depthwise(seed=2, mult=mult))


@pytest.mark.parametrize("group", [1, 2])
def test_conv_transpose(group: int) -> None:
    def middle(g, y):
        w = g.weight((6, 4 // group, 3, 3))
        return g.op("Relu", [g.op("ConvTranspose", [y, w, g.weight((4,))], group=group, strides=[2, 2])])

    model = sandwich(middle, c_mid=4)
    dg = analyze(model)
    assert dg.groups[0].prunable
    # onnx.reference's ConvTranspose cannot run group > 1 even on the unpruned model: onnxruntime only.
    prove_random_cuts(model, evaluator=group == 1)


@pytest.mark.parametrize(("trans_a", "trans_b"), [(0, 0), (0, 1), (1, 0), (1, 1)])
def test_gemm_transposes(trans_a: int, trans_b: int) -> None:
    g = builders.GraphBuilder(1)
    x = "x"  # with transA the input is given as [K, M]
    w1 = g.weight((12, 5) if trans_b else (5, 12))
    h = g.op("Relu", [g.op("Gemm", [x, w1, g.weight((12,))], transA=trans_a, transB=trans_b)])
    ht = g.op("Transpose", [h], perm=[1, 0]) if trans_a else h
    w2 = g.weight((3, 12) if trans_b else (12, 3))
    g.nodes.append(helper.make_node("Gemm", [ht, w2], ["out"], name="fc2", transA=trans_a, transB=trans_b))
    model = g.build([builders.vinfo("x", [5, 2] if trans_a else [2, 5])], [builders.vinfo("out", [2, 3])])
    dg, plan, _ = check_prune(model, ratio=0.5)
    assert dg.groups[0].size == 12 and plan.channels_removed == 6


def test_matmul_with_two_activations_blocks_the_contraction() -> None:
    g = builders.GraphBuilder(0)
    q = g.op("MatMul", ["x", g.weight((8, 6))])
    k = g.op("MatMul", ["x", g.weight((8, 6))])
    kt = g.op("Transpose", [k], perm=[0, 2, 1])
    g.nodes.append(helper.make_node("MatMul", [q, kt], ["out"], name="scores"))
    model = g.build([builders.vinfo("x", [1, 4, 8])], [builders.vinfo("out", [1, 4, 4])])
    dg = analyze(model)
    assert not dg.groups[0].prunable
    assert "contracts two activations" in " ".join(dg.groups[0].blockers)


def test_weights_from_constant_nodes_and_identity() -> None:
    model = builders.conv_bn_relu()
    w2 = next(t for t in model.graph.initializer if t.name == "w2")
    model.graph.initializer.remove(w2)
    const = helper.make_node("Constant", [], ["w2c"], value=w2, name="w2const")
    ident = helper.make_node("Identity", ["w2c"], ["w2"], name="w2id")
    model.graph.node.insert(0, ident)
    model.graph.node.insert(0, const)
    onnx.checker.check_model(model, full_check=True)
    dg, plan, pruned = check_prune(model, ratio=0.5)
    assert {c.tensor for c in dg.groups[0].sinks} == {"w2c"}
    shape = next(n for n in pruned.graph.node if n.name == "w2const").attribute[0].t.dims
    assert list(shape)[1] == len(plan.keep[0])


def test_shared_weight_ties_both_readers() -> None:
    g = builders.GraphBuilder(0)
    a = g.op("Relu", [g.conv("x", 3, 6)])
    b = g.op("Relu", [g.conv("x", 3, 6)])
    shared = g.weight((4, 6, 1, 1))
    ya = g.op("Conv", [a, shared])
    yb = g.op("Conv", [b, shared])
    g.nodes.append(helper.make_node("Add", [ya, yb], ["out"], name="sum"))
    model = g.build([builders.vinfo("x", [1, 3, 5, 5])], [builders.vinfo("out", [1, 4, 5, 5])])
    dg = analyze(model)
    tied = [grp for grp in dg.groups if [c.tensor for c in grp.sinks] == [shared, shared]]
    assert len(tied) == 1 and tied[0].size == 6 and len(tied[0].sources) == 2
    prove_random_cuts(model)


def test_mlp_gemm_then_matmul() -> None:
    prove_random_cuts(builders.mlp(batch=3))


def test_conv_with_runtime_weight_is_blocked() -> None:
    g = builders.GraphBuilder(0)
    y = g.op("Relu", [g.conv("x", 3, 6)])
    w = g.op("Mul", [g.weight((4, 6, 1, 1)), g.const(np.array(2.0, np.float32))])
    g.nodes.append(helper.make_node("Conv", [y, w], ["out"], name="sink"))
    model = g.build([builders.vinfo("x", [1, 3, 5, 5])], [builders.vinfo("out", [1, 4, 5, 5])])
    dg = analyze(model)
    assert "weights computed at runtime" in " ".join(dg.groups[0].blockers)


@pytest.mark.parametrize("mode", ["within", "whole"])
def test_regnet_grouped_convs_are_cut_exactly_either_way(mode: str) -> None:
    """torchvision RegNetX-400MF (grouped 3x3 convs of 4 channels per group): both ways proven by the oracle."""
    from onnxprune.core.io import load_model

    model = load_model("models/tv_regnet_x_400mf.onnx")
    dg, plan, pruned = check_prune(model, ratio=0.5, grouped_conv=mode, evaluator=False)
    groups = {n.name: _group_attr(model, k) for k, n in enumerate(n for n in model.graph.node if n.op_type == "Conv")}
    after = {n.name: _group_attr(pruned, k) for k, n in enumerate(n for n in pruned.graph.node if n.op_type == "Conv")}
    grouped = [name for name, g in groups.items() if g > 1]
    assert grouped
    if mode == "within":
        assert all(after[name] == groups[name] for name in grouped)
    else:
        assert all(after[name] < groups[name] for name in grouped if groups[name] > 2)
    check_prune(model, plan="random", seed=1, grouped_conv=mode, evaluator=False)


@pytest.mark.parametrize("mode", ["within", "whole"])
def test_cli_grouped_conv_option_reaches_the_cut_and_the_plan(mode: str, tmp_path) -> None:
    from onnxprune.cli.main import main
    from onnxprune.core.io import load_model
    from onnxprune.structured.plan import PrunePlan

    model = sandwich(lambda g, y: g.op("Relu", [g.conv(y, 8, 8, group=2)]), c=8, c_mid=8)
    src, out, plan = tmp_path / "m.onnx", tmp_path / "p.onnx", tmp_path / "plan.json"
    onnx.save(model, src)
    assert main(["prune", str(src), "-o", str(out), "--ratio", "0.5", "--grouped-conv", mode, "--plan-out", str(plan),
                 "--quiet"]) == 0
    assert _group_attr(load_model(out), 1) == (2 if mode == "within" else 1)
    assert PrunePlan.load(plan).meta["grouped_conv"] == mode
    # The saved plan is applied with the groups it was made with, whatever --grouped-conv says now.
    again = tmp_path / "again.onnx"
    assert main(["prune", str(src), "-o", str(again), "--plan-in", str(plan), "--quiet"]) == 0
    assert _group_attr(load_model(again), 1) == _group_attr(load_model(out), 1)


def test_bad_grouped_conv_mode_is_a_config_error() -> None:
    from onnxprune.config import PruneConfig
    from onnxprune.core.errors import ConfigError

    with pytest.raises(ConfigError, match="^grouped_conv must be within or whole, got 'half'"):
        PruneConfig(mode="structured", grouped_conv="half")
    with pytest.raises(ConfigError, match=r"grouped_conv does not apply to mode='unstructured'"):
        PruneConfig(mode="unstructured", grouped_conv="whole")
    with pytest.raises(ConfigError, match="grouped_conv must be one of within, whole"):
        analyze(builders.depthwise(), grouped_conv="half")
