"""Plans: ratio arithmetic, global ranking, rounding, exclusion, per-group ratios, JSON round trip."""

from __future__ import annotations

import builders
import numpy as np
import pytest
from oracle_check import check_prune

from onnxprune.core.errors import ConfigError, PlanError
from onnxprune.structured.analysis import analyze
from onnxprune.structured.plan import PrunePlan, make_plan
from onnxprune.structured.surgery import apply_plan


@pytest.fixture(scope="module")
def resnetish():
    model = builders.residual_add(c=8)
    return model, analyze(model)


@pytest.mark.parametrize(("ratio", "kept"), [(0.0, 32), (0.25, 24), (0.5, 16), (0.9, 3)])
def test_ratio_removes_rounded_share_of_each_group(ratio: float, kept: int) -> None:
    model = builders.mlp(hidden=32)
    plan = make_plan(model, analyze(model), ratio=ratio)
    assert len(plan.keep[0]) == kept


def test_min_channels_and_round_to() -> None:
    model = builders.mlp(hidden=32)
    dg = analyze(model)
    assert len(make_plan(model, dg, ratio=0.99, min_channels=5).keep[0]) == 5
    assert len(make_plan(model, dg, ratio=0.4, round_to=8).keep[0]) == 24  # 19 rounded up
    assert len(make_plan(model, dg, ratio=0.5, round_to=8).keep[0]) == 16


def test_keep_is_sorted_unique_int64_and_picks_the_strongest() -> None:
    model = builders.mlp(hidden=8)
    dg = analyze(model)
    plan = make_plan(model, dg, ratio=0.5, importance="random", seed=3)
    keep = plan.keep[0]
    assert keep.dtype == np.int64 and np.all(np.diff(keep) > 0)
    scores = np.random.default_rng([3, 0]).random(8)
    assert set(keep.tolist()) == set(np.argsort(-scores)[:4].tolist())


def test_global_rank_spends_one_budget(resnetish) -> None:
    model, dg = resnetish
    plan = make_plan(model, dg, ratio=0.5, global_rank=True)
    total = sum(dg.groups[g].size for g in plan.keep)
    assert plan.channels_removed == round(0.5 * total)
    check_prune(model, ratio=0.5, global_rank=True)


def test_exclude_protects_matching_groups(resnetish) -> None:
    model, dg = resnetish
    first_conv = dg.groups[0].sources[0].node
    plan = make_plan(model, dg, ratio=0.5, exclude=[first_conv])
    assert 0 not in plan.keep and plan.keep
    plan = make_plan(model, dg, ratio=0.5, exclude=["conv_w_*"])
    assert not plan.keep


def test_group_ratios_override(resnetish) -> None:
    model, dg = resnetish
    plan = make_plan(model, dg, ratio=0.0, group_ratios={1: 0.5})
    assert plan.channels_removed == round(0.5 * dg.groups[1].size)
    with pytest.raises(ConfigError, match="group_ratios names group 99"):
        make_plan(model, dg, ratio=0.1, group_ratios={99: 0.5})


@pytest.mark.parametrize(("options", "message"), [({"ratio": 1.0}, "ratio must be in"), ({"ratio": -0.1}, "ratio"),
                                                  ({"ratio": 0.5, "round_to": 0}, "round_to"),
                                                  ({"ratio": 0.5, "min_channels": 0}, "min_channels"),
                                                  ({"ratio": 0.5, "group_ratios": {0: 1.5}}, r"group_ratios\[0\]"),
                                                  ({"ratio": 0.5, "importance": "nope"}, "unknown importance")])
def test_bad_options_raise_config_error(resnetish, options: dict, message: str) -> None:
    model, dg = resnetish
    with pytest.raises(ConfigError, match=message):
        make_plan(model, dg, **options)


def test_json_round_trip(tmp_path, resnetish) -> None:
    model, dg = resnetish
    plan = make_plan(model, dg, ratio=0.5)
    again = PrunePlan.from_json(plan.to_json())
    assert again.fingerprint == plan.fingerprint and again.sizes == plan.sizes
    assert all(np.array_equal(again.keep[g], plan.keep[g]) for g in plan.keep)
    path = plan.save(tmp_path / "plan.json")
    loaded = PrunePlan.load(path)
    check_prune(model, plan=loaded)


@pytest.mark.parametrize(("text", "message"), [("{", "not valid JSON"), ('{"version": 7}', "version 7"),
                                               ('{"version": 1, "groups": {}}', "malformed")])
def test_bad_plan_files(text: str, message: str) -> None:
    with pytest.raises(PlanError, match=message):
        PrunePlan.from_json(text)


def test_missing_plan_file(tmp_path) -> None:
    with pytest.raises(PlanError, match="cannot read plan"):
        PrunePlan.load(tmp_path / "none.json")


def test_plan_is_immutable(resnetish) -> None:
    model, dg = resnetish
    plan = make_plan(model, dg, ratio=0.5)
    with pytest.raises(ValueError):
        plan.keep[0][0] = 5
    with pytest.raises(TypeError):
        plan.keep[0] = np.array([0])  # type: ignore[index]


def _concat_with_a_weak_branch():
    """Concat of a 4- and a 1-channel conv, added to a 5-channel conv (a residual): one group of 5 channels
    in which the 1-channel branch is easy to empty."""
    g = builders.GraphBuilder(seed=11)
    a = g.conv("x", 3, 4)
    b = g.conv("x", 3, 1)
    cat = g.op("Concat", [a, b], axis=1)
    res = g.op("Add", [cat, g.conv(cat, 5, 5)])
    out = g.conv(g.op("Relu", [res]), 5, 2)
    return g.build([builders.vinfo("x", [1, 3, 6, 6])], [builders.vinfo(out, [1, 2, 6, 6])])


def test_make_plan_never_empties_a_layer() -> None:
    model = _concat_with_a_weak_branch()
    dg = analyze(model)
    (group,) = [g for g in dg.prunable_groups if g.size == 5]
    plan = make_plan(model, dg, ratio=0.9, importance="random", seed=3)
    keep = plan.kept(group.id)
    assert all(cut.positions(keep).size >= 1 for cut in group.sources)
    pruned = apply_plan(model, plan, dg=dg)
    for t in pruned.graph.initializer:
        assert 0 not in t.dims, t.name


def test_a_plan_that_empties_a_layer_is_refused() -> None:
    model = _concat_with_a_weak_branch()
    dg = analyze(model)
    (group,) = [g for g in dg.prunable_groups if g.size == 5]
    plan = PrunePlan(fingerprint=dg.fingerprint, keep={group.id: np.array([0, 1], dtype=np.int64)},
                     sizes={group.id: 5}, criterion="hand")
    with pytest.raises(PlanError, match=r"keeps no output channel of layer .* every layer must keep at least one"):
        apply_plan(model, plan, dg=dg)
