"""Anchors run from cached activations: equal to the whole-model measurement, running only what a cut changes."""

from __future__ import annotations

import pytest

from onnxprune.recovery.anchor_submodel import SubModelAnchors
from onnxprune.recovery.sensitivity import sensitivity, start_sensitivity

CNN = "models/digits_cnn.onnx"
CNN_CALIB = "models/digits_cnn_calib.npz"


@pytest.mark.parametrize("recover", ["none", "lstsq"])
def test_sub_model_error_equals_the_whole_model_error(recover):
    """Every group cut at 0.5 (and recovered: lstsq rewrites a sink's weights in place, same shape): the
    error from the sub-model fed cached activations is the whole candidate's error in onnxruntime, to float32
    round-off (about 1e-9 relative here)."""
    run = start_sensitivity(CNN, CNN_CALIB, ratios=(0.5,), recover=recover, anchor_samples=None)
    ev, spec = run.evaluator, run.evaluator.spec
    runner = SubModelAnchors(run.model, spec.batches, spec.reference, spec.outputs)
    whole, sizes = {}, {}
    for g in run.chosen:
        cand = ev.build(run.plans[(g.id, 0.5)])
        whole[g.id] = ev.error(cand)
        sub = runner.add(g.id, cand)
        assert sub is not None
        sizes[g.id] = (len(sub.graph.node), len(cand.graph.node))
    runner.flush()
    assert set(runner.results) == set(whole)
    for gid, err in whole.items():
        assert err > 0
        assert runner.results[gid] == pytest.approx(err, rel=1e-6)
    last = run.chosen[-1].id  # the deepest group's cut leaves the stem and early layers out of its sub-model
    assert sizes[last][0] < sizes[last][1]


def test_sensitivity_runs_anchor_sub_models_from_activations(monkeypatch):
    """The local gram path measures its anchors through the sub-models (the report is unchanged by it)."""
    calls = []
    real = SubModelAnchors.add

    def spy(self, key, candidate):
        calls.append(key)
        return real(self, key, candidate)

    monkeypatch.setattr(SubModelAnchors, "add", spy)
    report = sensitivity(CNN, CNN_CALIB, ratios=(0.3, 0.5), anchor_samples=64)
    assert len(calls) == len(report.groups)  # one anchor per group
    on64 = sensitivity(CNN, CNN_CALIB, ratios=(0.3, 0.5), method="model", max_samples=64)
    for r, s in zip(report.groups, on64.groups, strict=True):
        assert r.errors[1] == pytest.approx(s.errors[1], rel=1e-6)


def test_a_flush_runs_only_the_dense_nodes_its_sub_models_read():
    """The dense run of a flush computes the activations its sub-models are fed and nothing after them (it ran
    the whole model before), and the errors are the whole candidates'."""
    run = start_sensitivity(CNN, CNN_CALIB, ratios=(0.5,), anchor_samples=None)
    ev, spec = run.evaluator, run.evaluator.spec
    nodes = len(run.model.graph.node)
    for g in run.chosen[1:]:
        runner = SubModelAnchors(run.model, spec.batches, spec.reference, spec.outputs)
        created = []
        real = runner._create
        runner._create = lambda model, created=created, real=real, **kw: created.append(model) or real(model, **kw)
        cand = ev.build(run.plans[(g.id, 0.5)])
        sub = runner.add(g.id, cand)
        assert sub is not None
        runner.flush()
        dense, fed = created[0], created[1]
        assert [o.name for o in dense.graph.output] == [i.name for i in fed.graph.input]  # the cached activations
        assert len(dense.graph.node) + len(sub.graph.node) <= nodes  # nothing downstream of them runs dense
        assert runner.results[g.id] == pytest.approx(ev.error(cand), rel=1e-6)
