"""Importance criteria and their registry."""

from __future__ import annotations

import builders
import numpy as np
import pytest
from onnx import numpy_helper

from onnxprune.structured.analysis import analyze
from onnxprune.structured.importance import ImportanceContext, available_criteria, get_criterion, register_criterion
from onnxprune.structured.plan import make_plan


def _ctx(model, seed: int = 0) -> ImportanceContext:
    return ImportanceContext(model=model, dg=analyze(model), seed=seed)


def _weight(model, name: str) -> np.ndarray:
    return numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == name)).astype(np.float64)


def test_builtins_are_registered() -> None:
    assert {"l1", "l2", "fpgm", "bn_scale", "random"} <= set(available_criteria())


def test_duplicate_registration_raises() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_criterion("l2")(lambda g, c: np.zeros(g.size))


def test_l2_averages_normalized_source_and_sink_norms() -> None:
    model = builders.conv_bn_relu()
    ctx = _ctx(model)
    w1, w2 = _weight(model, "w1"), _weight(model, "w2")
    src = np.sqrt((w1**2).sum(axis=(1, 2, 3)))
    snk = np.sqrt((w2**2).sum(axis=(0, 2, 3)))
    want = (src / src.max() + snk / snk.max()) / 2
    np.testing.assert_allclose(get_criterion("l2")(ctx.dg.groups[0], ctx), want)


def test_l1_uses_absolute_sums() -> None:
    model = builders.mlp(hidden=8)
    ctx = _ctx(model)
    w1, w2 = _weight(model, "fc1_w"), _weight(model, "fc2_w")
    src, snk = np.abs(w1).sum(axis=1), np.abs(w2).sum(axis=1)
    np.testing.assert_allclose(get_criterion("l1")(ctx.dg.groups[0], ctx), (src / src.max() + snk / snk.max()) / 2)


def test_bn_scale_reads_gamma() -> None:
    model = builders.conv_bn_relu()
    ctx = _ctx(model)
    gamma = np.abs(_weight(model, "gamma"))
    np.testing.assert_allclose(get_criterion("bn_scale")(ctx.dg.groups[0], ctx), gamma / gamma.max())


def test_bn_scale_without_bn_falls_back_to_l2() -> None:
    model = builders.mlp()
    ctx = _ctx(model)
    g = ctx.dg.groups[0]
    np.testing.assert_allclose(get_criterion("bn_scale")(g, ctx), get_criterion("l2")(g, ctx))


def test_fpgm_scores_a_duplicate_filter_lowest() -> None:
    model = builders.mlp(hidden=6)
    w = next(t for t in model.graph.initializer if t.name == "fc1_w")
    arr = numpy_helper.to_array(w).copy()
    arr[3] = arr[:, :].mean(axis=0)  # the filter closest to all others
    w.CopyFrom(numpy_helper.from_array(arr, "fc1_w"))
    ctx = _ctx(model)
    scores = get_criterion("fpgm")(ctx.dg.groups[0], ctx)
    assert int(np.argmin(scores)) == 3


def test_random_is_seeded() -> None:
    model = builders.mlp()
    a, b, c = _ctx(model, 1), _ctx(model, 1), _ctx(model, 2)
    g = a.dg.groups[0]
    np.testing.assert_array_equal(get_criterion("random")(g, a), get_criterion("random")(g, b))
    assert not np.array_equal(get_criterion("random")(g, a), get_criterion("random")(g, c))


def test_flatten_group_scores_aggregate_blocks() -> None:
    model = builders.flatten_gemm(c=4, hw=3)
    ctx = _ctx(model)
    g = ctx.dg.groups[0]
    sink = g.sinks[0]
    w = _weight(model, sink.tensor)
    per_feature = (w**2).sum(axis=0)
    per_channel = np.sqrt(per_feature.reshape(4, 9).sum(axis=1))
    src = np.sqrt((_weight(model, g.sources[0].tensor) ** 2).sum(axis=(1, 2, 3)))
    want = (src / src.max() + per_channel / per_channel.max()) / 2
    np.testing.assert_allclose(get_criterion("l2")(g, ctx), want)


def test_custom_criterion_with_statistics() -> None:
    model = builders.mlp(hidden=8)
    dg = analyze(model)
    plan = make_plan(model, dg, ratio=0.5, importance=lambda g, ctx: np.asarray(ctx.statistics["order"], float),
                     statistics={"order": [0, 1, 2, 3, 4, 5, 6, 7]})
    assert plan.keep[0].tolist() == [4, 5, 6, 7]


def test_bn_scale_fallback_is_recorded_per_group_and_warned() -> None:
    from onnx import helper

    from onnxprune.structured.importance import criterion_used
    from onnxprune.structured.plan import PrunePlan

    g = builders.GraphBuilder(4)
    a = g.op("Relu", [g.bn(g.conv("x", 3, 8), 8)])  # group 0: has a BatchNormalization
    b = g.op("Relu", [g.conv(a, 8, 6)])  # group 1: none
    g.nodes.append(helper.make_node("Conv", [b, g.weight((4, 6, 1, 1))], ["out"], name="head"))
    model = g.build([builders.vinfo("x", [1, 3, 5, 5])], [builders.vinfo("out", [1, 4, 5, 5])])
    dg = analyze(model)
    assert [criterion_used(grp, "bn_scale") for grp in dg.prunable_groups] == \
        ["bn_scale", "bn_scale (no BatchNormalization: l2)"]
    assert criterion_used(dg.groups[1], "l2") == "l2"
    plan = make_plan(model, dg, ratio=0.5, importance="bn_scale")
    assert [plan.criterion_for(i) for i in (0, 1)] == ["bn_scale", "bn_scale (no BatchNormalization: l2)"]
    assert plan.warnings() == ["importance 'bn_scale' scored 1 group(s) as 'bn_scale (no BatchNormalization: l2)' "
                               "(groups 1)"]
    again = PrunePlan.from_json(plan.to_json())
    assert again.criterion_for(1) == plan.criterion_for(1) and again.warnings() == plan.warnings()
    assert make_plan(model, dg, ratio=0.5, importance="l2").warnings() == []


def test_l2_scores_whole_heads_by_their_q_k_v_columns_and_output_rows() -> None:
    """A head is one root: its score is the mean of its normalized norms over Q, K, V (columns ``[h*D,
    (h+1)*D)`` of each) and the output projection (the same rows), so every head is scored as one unit."""
    from onnxprune.structured.attention import attention_heads

    d, heads = 16, 4
    model = builders.attention_block(heads=heads, d=d)
    ctx = _ctx(model)
    (group,) = [g for g in ctx.dg.groups if attention_heads(g)]
    hd = d // heads
    weights = [c.tensor for c in group.sources] + [c.tensor for c in group.sinks]
    assert len(group.sources) == 3 and len(group.sinks) == 1
    per_member = []
    for name in weights:
        w = _weight(model, name)
        w = w if name in [c.tensor for c in group.sources] else w.T  # output projection: rows are inputs
        norms = np.array([np.linalg.norm(w[:, h * hd:(h + 1) * hd]) for h in range(heads)])
        per_member.append(norms / norms.max())
    np.testing.assert_allclose(get_criterion("l2")(group, ctx), np.mean(per_member, axis=0), rtol=1e-12)
