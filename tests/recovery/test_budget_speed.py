"""What makes a budget fast, and why each shortcut leaves its result as it was.

* Points measured by refine() run as sub-models fed the dense model's activations (equal to the whole model to
  float32 round-off), on every sample (a budget's frontier runs the same way on the anchors' samples, see
  test_budget_frontier.py).
* Gram matrices that only score are accumulated on the anchors' first samples; channel statistics (bias
  recovery's means) still see every sample.
* A group whose first ratio cuts nothing is anchored only when the greedy reads its curve.
"""

from __future__ import annotations

import numpy as np
import pytest

from onnxprune.core.io import load_model
from onnxprune.recovery.anchor_submodel import SubModelAnchors
from onnxprune.recovery.budget import allocate, refine_allocation
from onnxprune.recovery.calibrate import collect_stats, iter_feeds
from onnxprune.recovery.sensitivity import SensitivityRun, sensitivity, start_sensitivity
from onnxprune.recovery.shards import collect_stats_sharded
from onnxprune.structured.analysis import analyze

CNN = "models/digits_cnn.onnx"
CNN_CALIB = "models/digits_cnn_calib.npz"  # 256 samples, 8 batches of 32
CONVS = ["/features/features.3/body/body.0/Conv", "/features/features.4/Conv", "/head/Gemm"]
ACTS = {"/features/features.2/Relu_output_0": 1, "/features/features.6/Relu_output_0": 1}


def test_refine_on_the_gram_path_runs_sub_models_on_every_sample(monkeypatch):
    """refine() measures each point through a sub-model, on all 256 samples: the whole candidate's error to
    float32 round-off, not the anchors' 32-sample one."""
    run = start_sensitivity(CNN, CNN_CALIB, ratios=(0.3, 0.6), anchor_samples=32, recover="bias")
    added = []
    add = SubModelAnchors.add
    monkeypatch.setattr(SubModelAnchors, "add", lambda self, key, cand: added.append(key) or add(self, key, cand))
    tasks = [(g.id, 0.3) for g in run.chosen]  # not the anchors (0.6)
    rough = run.estimate(tasks)
    assert len(added) == len(tasks)
    assert run.refine(tasks) == len(tasks)
    assert len(added) == 2 * len(tasks)
    for t in tasks:
        whole = run.evaluator.measure(t, accuracy=False).error
        assert run.errors[t] == pytest.approx(whole, rel=1e-6)
        assert rough[t] != pytest.approx(whole, rel=1e-4)  # 32 samples are not 256


def test_scoring_grams_see_the_first_batches_and_channel_statistics_every_sample():
    m = load_model(CNN)
    batches = list(iter_feeds(m, CNN_CALIB, batch_size=32))
    part = collect_stats(m, batches, tensors=ACTS, gram_for=CONVS, gram_samples=64)
    first = collect_stats(m, batches[:2], gram_for=CONVS)
    every = collect_stats(m, batches, tensors=ACTS, gram_for=CONVS)
    assert part.samples == every.samples == 256
    for name, g in part.grams.items():
        assert g.rows == first.grams[name].rows < every.grams[name].rows
        assert np.array_equal(g.gram, first.grams[name].gram) and np.array_equal(g.col_sum, first.grams[name].col_sum)
    for name, c in part.channels.items():
        assert np.array_equal(c.mean, every.channels[name].mean) and c.count == every.channels[name].count
    assert collect_stats(m, batches, tensors=ACTS, gram_for=CONVS, gram_samples=0).grams == {}
    # in shards (of 64 samples: only the first holds Grams), summed: the same to float64 round-off
    sharded = collect_stats_sharded(CNN, CNN_CALIB, shards=4, tensors=ACTS, gram_for=CONVS, gram_samples=64,
                                    executor="local")
    for name, g in sharded.grams.items():
        assert g.rows == part.grams[name].rows
        np.testing.assert_allclose(g.gram, part.grams[name].gram, rtol=1e-12, atol=1e-9)
    for name, c in sharded.channels.items():
        np.testing.assert_allclose(c.mean, part.channels[name].mean, rtol=1e-12)


def test_sensitivity_grams_are_collected_on_the_anchors_samples_unless_lstsq_reads_them(monkeypatch):
    import onnxprune.recovery.sensitivity as sens

    seen = []
    real = sens.collect_stats
    monkeypatch.setattr(sens, "collect_stats", lambda *a, **k: seen.append(k.get("gram_samples")) or real(*a, **k))
    for recover in ("none", "bias", "lstsq"):
        start_sensitivity(CNN, CNN_CALIB, ratios=(0.5,), recover=recover, anchor_samples=64)
    start_sensitivity(CNN, CNN_CALIB, ratios=(0.5,), anchor_samples=None)
    assert seen == [64, 64, None, None]


@pytest.mark.parametrize("recover", ["none", "bias"])
def test_deferred_anchors_reach_the_whole_model_allocation(monkeypatch, recover):
    """At a first ratio that cuts nothing, every group is deferred: each is anchored when the greedy first
    reads it. Here the allocation is also the one of curves measured entirely on the whole model (in general
    only its frontier is measured, on the anchors' samples: see test_budget_frontier.py)."""
    m = load_model(CNN)
    dg = analyze(m)
    ratios = (0.005, 0.2, 0.4, 0.6)

    def alloc(report):
        return allocate(m, dg, report, target_macs=0.6, recover=recover)

    anchored: list[int] = []
    real = SensitivityRun.anchor
    monkeypatch.setattr(SensitivityRun, "anchor", lambda self, ids: anchored.extend(sorted(ids)) or real(self, ids))
    lazy = start_sensitivity(m, CNN_CALIB, ratios=ratios, dg=dg, recover=recover, defer_anchors=True)
    assert lazy.deferred == {g.id for g in lazy.chosen}
    assert all(np.isinf(e) for g in lazy.report().groups for e, x in zip(g.errors, g.exact, strict=True) if not x)
    got = refine_allocation(lazy, alloc)
    exact = alloc(sensitivity(m, CNN_CALIB, ratios=ratios, dg=dg, recover=recover, method="model"))
    assert got == exact and any(r > 0 for r in got.values())
    assert anchored and len(anchored) == len(set(anchored))  # each group anchored once, when read
    # an anchored curve is the one an eager run estimates (the estimates only choose what is measured)
    lazy = start_sensitivity(m, CNN_CALIB, ratios=ratios, dg=dg, recover=recover, defer_anchors=True)
    lazy.anchor([g.id for g in lazy.chosen])
    assert not lazy.deferred
    assert lazy.report() == start_sensitivity(m, CNN_CALIB, ratios=ratios, dg=dg, recover=recover).report()


@pytest.mark.slow
def test_deferred_anchors_skip_the_groups_a_budget_never_reads():
    """RegNetX-400MF: 44 of its 49 groups have 4 channels, which ratio 0.1 does not cut; a 0.5 MACs budget
    never reads them, so only the other 5 are anchored, and the allocation is the one with every anchor."""
    from onnxprune.config import PruneConfig

    m = load_model("models/tv_regnet_x_400mf.onnx")
    dg = analyze(m)
    data = [{"input": np.random.default_rng(0).standard_normal((32, 3, 32, 32)).astype(np.float32)}]
    cfg = PruneConfig(target_macs=0.5)
    ratios = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    every = start_sensitivity(m, data, ratios=ratios, dg=dg)
    lazy = start_sensitivity(m, data, ratios=ratios, dg=dg, defer_anchors=True)
    assert len(lazy.deferred) == 44 and not every.deferred

    def alloc(report):
        return allocate(m, dg, report, target_macs=cfg.target_macs)

    assert refine_allocation(lazy, alloc) == refine_allocation(every, alloc)
    assert len(lazy.deferred) == 44  # none of them was read
