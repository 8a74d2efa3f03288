"""Sensitivity's plans at every ratio score each group once: the plans are those of one make_plan per
(group, ratio), criterion name and metadata included."""

from __future__ import annotations

import pytest

import onnxprune.recovery.data_criteria  # noqa: F401 - registers the data-aware criteria
from onnxprune.core.io import load_model
from onnxprune.recovery.executor import CandidateEvaluator, CandidateSpec, single_group_plan
from onnxprune.structured import importance
from onnxprune.structured.analysis import analyze


@pytest.mark.parametrize(("path", "criterion"), [("models/digits_cnn.onnx", "random"),
                                                 ("models/digits_cnn.onnx", "bn_scale"),
                                                 ("models/tv_regnet_x_400mf.onnx", "l2")])
def test_plans_at_every_ratio_equal_one_make_plan_each_and_score_once(path, criterion, monkeypatch):
    m = load_model(path)
    dg = analyze(m)
    ids = [g.id for g in dg.prunable_groups if g.size > 1]
    spec = CandidateSpec(m.SerializeToString(), (), (), (), criterion, "none", None, None, None, "labels")
    real = importance.get_criterion(criterion)
    calls = []

    def counted(group, ctx):
        calls.append(group.id)
        return real(group, ctx)

    monkeypatch.setitem(importance._CRITERIA, criterion, counted)
    plans = CandidateEvaluator(spec, model=m, dg=dg).plans(ids, (0.1, 0.5, 0.9))
    assert sorted(calls) == sorted({g.id for g in dg.groups if g.prunable and g.size > 0})  # each group once
    for (gid, ratio), plan in plans.items():
        one = single_group_plan(m, dg, gid, ratio, importance=criterion, statistics=None)
        assert plan.to_json() == one.to_json(), (gid, ratio)


@pytest.mark.parametrize("recover", ["none", "bias"])
def test_measuring_a_candidate_without_re_inferred_shapes_changes_nothing(recover):
    """``measure`` builds throwaway candidates without shape inference: bit-for-bit the errors of the
    candidates built with it (what a saved model gets)."""
    from onnxprune.recovery.sensitivity import start_sensitivity

    run = start_sensitivity("models/digits_cnn.onnx", "models/digits_cnn_calib.npz", ratios=(0.3, 0.7),
                            recover=recover, max_samples=64)
    ev = run.evaluator
    for g in run.chosen:
        with_shapes = ev.error(ev.build(run.plans[(g.id, 0.7)]))
        assert with_shapes > 0
        assert ev.measure((g.id, 0.7), accuracy=False).error == with_shapes
