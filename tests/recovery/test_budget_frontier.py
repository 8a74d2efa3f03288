"""A budget refines only its allocation's frontier, measured as anchors are.

* The points measured are each group's chosen and next ratio (the frontier), on the anchors' samples, never the
  other points the greedy reads, and nothing on every sample.
* Each group's curve is drawn through its measured points (the Gram shape scaled between them).
* The result does not depend on where the candidates run (this process, worker processes, Ray), the target is
  met on the pruned model, and the digits CNN's chosen model keeps its accuracy.
"""

from __future__ import annotations

import numpy as np
import pytest

from onnxprune.config import PruneConfig
from onnxprune.core.io import load_model
from onnxprune.core.stats import model_stats
from onnxprune.recovery.budget import FRONTIER_PASSES, allocate, allocate_budget, frontier, refine_allocation
from onnxprune.recovery.sensitivity import DEFAULT_RATIOS, SensitivityRun, sensitivity, start_sensitivity
from onnxprune.structured.analysis import analyze
from onnxprune.structured.plan import make_plan
from onnxprune.structured.surgery import apply_plan

CNN = "models/digits_cnn.onnx"
CNN_CALIB = "models/digits_cnn_calib.npz"  # 256 samples, 8 batches of 32
CNN_TEST = "models/digits_cnn_test.npz"
RATIOS = DEFAULT_RATIOS + (0.8, 0.9)  # what allocate_budget measures


def test_frontier_is_each_groups_chosen_and_next_ratio():
    report = sensitivity(CNN, CNN_CALIB, ratios=(0.2, 0.4, 0.6, 0.8))
    ids = [g.group for g in report.groups]
    read, edge = frontier(report, {ids[0]: 0.4, ids[1]: 0.8})
    assert (ids[0], 0.4) in edge and (ids[0], 0.6) in edge and (ids[0], 0.2) not in edge
    assert [t for t in edge if t[0] == ids[1]] == [(ids[1], 0.8)]  # the last ratio has no next one
    assert [t for t in edge if t[0] == ids[2]] == [(ids[2], 0.2)]  # uncut: only the first step
    assert [t for t in read if t[0] == ids[0]] == [(ids[0], 0.2), (ids[0], 0.4), (ids[0], 0.6)]


def test_a_budget_measures_only_its_frontier_on_the_anchors_samples():
    """Every point measured is on the frontier of an allocation the greedy made, measured on the first 64
    samples (the whole-model error there), none on every sample; the last allocation's frontier is measured."""
    m = load_model(CNN)
    dg = analyze(m)
    run = start_sensitivity(m, CNN_CALIB, ratios=RATIOS, dg=dg, defer_anchors=True)
    exact = set(run.exact)
    edges: set[tuple[int, float]] = set()

    def alloc(report):
        ratios = allocate(m, dg, report, target_macs=0.5)
        edges.update(frontier(report, ratios)[1])
        return ratios

    got = refine_allocation(run, alloc)
    assert run.exact == exact  # nothing measured on every sample
    anchors = {(g.id, RATIOS[len(RATIOS) // 2]) for g in run.chosen}  # measured (on 64 samples) by sensitivity
    new = set(run.measured) - anchors
    assert new and new <= edges
    assert len(new) <= FRONTIER_PASSES * 2 * len(run.chosen)
    report = run.report()
    last = frontier(report, got)[1]
    assert all(t in run.measured or t in run.exact for t in last)
    assert len(new) < sum(len(g.ratios) for g in report.groups) - len(exact)  # not every point of the curves
    on64 = sensitivity(m, CNN_CALIB, ratios=RATIOS, dg=dg, method="model", max_samples=64)
    for gid, r in new:
        i = RATIOS.index(r)
        assert run.errors[(gid, r)] == pytest.approx(on64.group(gid).errors[i], rel=1e-6)


def test_the_passes_are_bounded(monkeypatch):
    """With ``passes=1`` the frontier is measured once, and the allocation made on those curves is returned."""
    m = load_model(CNN)
    dg = analyze(m)
    calls = []
    real = SensitivityRun.measure_frontier
    monkeypatch.setattr(SensitivityRun, "measure_frontier", lambda self, ts: calls.append(list(ts)) or real(self, ts))
    run = start_sensitivity(m, CNN_CALIB, ratios=RATIOS, dg=dg, defer_anchors=True)

    def alloc(report):
        return allocate(m, dg, report, target_macs=0.5)

    got = refine_allocation(run, alloc, passes=1)
    assert len(calls) == 1 and got == alloc(run.report())
    assert refine_allocation(run, alloc, passes=0) == got and len(calls) == 1


def test_a_curve_is_drawn_through_its_measured_points():
    """Between two measured points the Gram score is scaled by the measured/Gram ratio interpolated linearly in
    the ratio; beyond the last one, by that point's ratio alone; the measured points read as measured."""
    run = start_sensitivity(CNN, CNN_CALIB, ratios=(0.2, 0.4, 0.6, 0.8))  # anchored at 0.6
    g = run.chosen[1].id
    before = {r: run.errors[(g, r)] for r in run.ratios}
    assert run.measure_frontier([(g, 0.2)]) == 1
    assert run.measure_frontier([(g, 0.2), (g, 0.6)]) == 0  # each point is measured once
    local = {r: run._local[(g, r)] for r in run.ratios}
    s2, s6 = run.measured[(g, 0.2)] / local[0.2], run.measured[(g, 0.6)] / local[0.6]
    assert run.errors[(g, 0.2)] == run.measured[(g, 0.2)] != before[0.2]
    assert run.errors[(g, 0.6)] == before[0.6] == run.measured[(g, 0.6)]
    assert run.errors[(g, 0.4)] == pytest.approx(local[0.4] * (s2 + s6) / 2, rel=1e-12)
    assert run.errors[(g, 0.8)] == pytest.approx(before[0.8], rel=1e-12)  # beyond the anchor: its scale
    assert not any((g, r) in run.exact for r in run.ratios)
    others = [h.id for h in run.chosen if h.id != g]
    assert all(run.report().group(h) == sensitivity(CNN, CNN_CALIB, ratios=run.ratios).group(h) for h in others)


@pytest.fixture(scope="module")
def local_budget():
    m = load_model(CNN)
    return allocate_budget(m, analyze(m), PruneConfig(target_macs=0.5, calib=CNN_CALIB))


def test_a_budget_is_the_same_on_worker_processes(local_budget):
    m = load_model(CNN)
    cfg = PruneConfig(target_macs=0.5, calib=CNN_CALIB, executor="processes", workers=2)
    assert allocate_budget(m, analyze(m), cfg) == local_budget


@pytest.mark.slow
def test_a_budget_is_the_same_on_ray(local_budget):
    ray = pytest.importorskip("ray", reason='Ray is not installed: pip install -e ".[distributed]"')
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        m = load_model(CNN)
        cfg = PruneConfig(target_macs=0.5, calib=CNN_CALIB, executor="ray", workers=2)
        assert allocate_budget(m, analyze(m), cfg) == local_budget
    finally:
        ray.shutdown()


def test_the_target_is_met_on_the_pruned_model(local_budget):
    m = load_model(CNN)
    dg = analyze(m)
    cfg = PruneConfig(target_macs=0.4, calib=CNN_CALIB, round_to=1)
    ratios = allocate_budget(m, dg, cfg)
    pruned = apply_plan(m, make_plan(m, dg, ratio=0.0, group_ratios=ratios, round_to=1), dg=dg)
    assert model_stats(pruned).macs <= 0.4 * model_stats(m).macs
    assert max(local_budget.values()) > 0


def test_the_digits_budget_keeps_the_accuracy_of_the_tree_as_issue_15_was_filed(tmp_path):
    """``prune --target-macs 0.5 --calib ... --eval-data ...`` on the digits CNN: the tree as issue 15 was filed
    (46ef07e) scored 77.78% top-1 on the test split after it; the issue asks for no more than 0.5 points less."""
    from onnxprune.pipeline import prune

    result = prune(CNN, PruneConfig(target_macs=0.5, calib=CNN_CALIB, eval_data=CNN_TEST))
    top1 = result.report["accuracy"]["after"]["top1"]
    assert top1 >= 0.7778 - 0.005
    assert np.isfinite(top1)
