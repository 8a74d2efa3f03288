"""Gram-scored sensitivity: exact consumer errors, ranking agreement with the whole model, executors."""

from __future__ import annotations

import numpy as np
import pytest
from builders import mlp3
from onnx import helper

from onnxprune.core.errors import ConfigError
from onnxprune.core.stats import model_stats
from onnxprune.recovery.calibrate import collect_stats
from onnxprune.recovery.executor import single_group_plan
from onnxprune.recovery.gram_score import GramScorer, scorable_sinks
from onnxprune.recovery.sensitivity import recovery_stats, sensitivity, spearman
from onnxprune.recovery.solvers import affine_refit
from onnxprune.structured.analysis import analyze
from onnxprune.structured.surgery import apply_plan

CNN = "models/digits_cnn.onnx"
CNN_CALIB = "models/digits_cnn_calib.npz"


def _calib(n: int = 64, d: int = 8, seed: int = 0) -> list[dict[str, np.ndarray]]:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return [{"x": x[: n // 2]}, {"x": x[n // 2:]}]


@pytest.mark.parametrize("recover", ["none", "bias", "lstsq"])
def test_gram_score_equals_brute_force_consumer_error(recover):
    """fc1's group feeds fc2 and skip: the score is the numpy reconstruction error of both, recomputed here."""
    model = mlp3(quiet_scale=1.0)
    dg = analyze(model)
    data = _calib()
    x = np.concatenate([b["x"] for b in data]).astype(np.float64)
    w = {t.name: np.frombuffer(t.raw_data, np.float32).reshape(t.dims).astype(np.float64)
         for t in model.graph.initializer}
    r1 = np.maximum(x @ w["fc1_w"].T + w["fc1_b"], 0)  # the input of both consumers
    stats = collect_stats(model, data, gram_for=scorable_sinks(model, dg), tensors={"r1": 1})
    scorer = GramScorer(model, dg, stats, recover=recover)
    gid = next(g.id for g in dg.prunable_groups if g.sources[0].node == "fc1")
    plan = single_group_plan(model, dg, gid, 0.5, importance="l2", statistics=None)
    keep = np.asarray(plan.keep[gid])
    drop = np.setdiff1d(np.arange(r1.shape[1]), keep)
    err = energy = 0.0
    for wname, bias in (("fc2_w", w["fc2_b"]), ("skip_w", np.zeros(w["skip_w"].shape[0]))):
        wt = w[wname]
        y = r1 @ wt.T + bias
        if recover == "none":
            y_cut = r1[:, keep] @ wt[:, keep].T + bias
        elif recover == "bias":
            y_cut = r1[:, keep] @ wt[:, keep].T + bias + wt[:, drop] @ r1[:, drop].mean(axis=0)
        else:
            g = r1.T @ r1
            new_w, new_b = affine_refit(wt, bias, g, r1.sum(axis=0), r1.shape[0], keep)
            y_cut = r1[:, keep] @ new_w.T + new_b
        err += float(np.sum((y_cut - y) ** 2))
        energy += float(np.sum(y**2))
    # rel 1e-6: the model computes r1 in float32, this test in float64; a dropped term costs far more
    assert scorer.score(plan) == pytest.approx(np.sqrt(err / energy), rel=1e-6)


def _grouped_sink_model():
    """x → Conv 1x1 (3→8) → Relu → grouped Conv 3x3 (8→8, group=2) → out: cutting inside the conv groups
    drops the same input positions of both groups, and the grouped Conv's output is the model's."""
    from builders import GraphBuilder, vinfo

    g = GraphBuilder(3)
    a = g.op("Relu", [g.conv("x", 3, 8, k=1)])
    g.nodes.append(helper.make_node("Conv", [a, g.weight((8, 4, 3, 3)), g.weight((8,))], ["out"], name="grouped",
                                    group=2, pads=[1, 1, 1, 1]))
    return g.build([vinfo("x", ["N", 3, 6, 6])], [vinfo("out", ["N", 8, 6, 6])])


@pytest.mark.parametrize("recover", ["none", "bias", "lstsq"])
def test_grouped_conv_sink_is_scored_exactly(recover):
    """The grouped Conv is the only sink and its output the model's: its Gram score is the whole-model error
    onnxruntime measures, with recovery too (bias and lstsq re-fit it conv group by conv group)."""
    model = _grouped_sink_model()
    dg = analyze(model)
    data = [{"x": np.random.default_rng(s).standard_normal((16, 3, 6, 6)).astype(np.float32)} for s in (1, 2)]
    (group,) = [g for g in dg.prunable_groups if g.size > 1]
    assert group.size == 4  # positions inside each conv group of 4 inputs
    exact = sensitivity(model, data, ratios=(0.25, 0.5, 0.75), method="model", recover=recover).groups[0]
    stats = recovery_stats(model, dg, data, "both")  # the Grams, and the channel means bias recovery folds in
    scorer = GramScorer(model, dg, stats, recover=recover)
    for ratio, err in zip(exact.ratios, exact.errors, strict=True):
        plan = single_group_plan(model, dg, group.id, ratio, importance="l2", statistics=None)
        assert scorer.score(plan) == pytest.approx(err, rel=1e-5)  # float32 model, float64 Grams
    fast = sensitivity(model, data, ratios=(0.25, 0.5, 0.75), recover=recover).groups[0]
    assert sum(fast.exact) == 1  # scored, one whole-model anchor (was: every ratio on the whole model)
    assert fast.errors == pytest.approx(exact.errors, rel=1e-5)


@pytest.mark.parametrize("recover", ["none", "bias", "lstsq"])
def test_gram_ranking_agrees_with_whole_model_on_digits_cnn(recover):
    fast = sensitivity(CNN, CNN_CALIB, recover=recover)
    exact = sensitivity(CNN, CNN_CALIB, recover=recover, method="model")
    assert fast.method == "gram" and exact.method == "model"
    assert spearman([g.score for g in fast.groups], [g.score for g in exact.groups]) >= 0.9
    # every candidate, not only the 4 group scores (measured 0.98-0.99)
    assert spearman([e for g in fast.groups for e in g.errors], [e for g in exact.groups for e in g.errors]) >= 0.9
    for f, e in zip(fast.groups, exact.groups, strict=True):
        assert f.macs == e.macs and f.params == e.params and f.kept == e.kept
    # with every sample, the anchor is measured on the whole model: equal there
    full = sensitivity(CNN, CNN_CALIB, recover=recover, anchor_samples=None)
    for f, e in zip(full.groups, exact.groups, strict=True):
        mid = len(f.ratios) // 2
        assert f.exact[mid] and f.errors[mid] == pytest.approx(e.errors[mid], rel=1e-9)


def test_costs_without_building_equal_model_stats():
    model = "models/tv_mobilenet_v2.onnx"  # depthwise convs: a group cuts a Conv's input and output
    report = sensitivity(model, [{"input": np.random.default_rng(0).standard_normal((4, 3, 32, 32))
                                  .astype(np.float32)}], ratios=(0.3, 0.7), groups=[0, 1, 2])
    from onnxprune.core.io import load_model

    m = load_model(model)
    dg = analyze(m)
    for g in report.groups:
        for r, macs, params in zip(g.ratios, g.macs, g.params, strict=True):
            st = model_stats(apply_plan(m, single_group_plan(m, dg, g.group, r, importance="l2", statistics=None),
                                        dg=dg))
            assert (macs, params) == (st.macs, st.params)


def test_processes_executor_equals_local_whatever_the_worker_count():
    local = sensitivity(CNN, CNN_CALIB, ratios=(0.3, 0.6), method="model", max_samples=64)
    for workers in (1, 2):
        par = sensitivity(CNN, CNN_CALIB, ratios=(0.3, 0.6), method="model", max_samples=64,
                          executor="processes", workers=workers)
        assert par.to_dict() == local.to_dict()


def test_bad_method_and_executor():
    with pytest.raises(ConfigError, match="sensitivity method must be"):
        sensitivity(mlp3(), _calib(), method="guess")
    with pytest.raises(ConfigError, match="executor must be one of local, processes"):
        sensitivity(mlp3(), _calib(), executor="cluster")
    with pytest.raises(ConfigError, match="workers must be >= 1"):
        sensitivity(mlp3(), _calib(), executor="processes", workers=0)


def test_spearman():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 2], [1, 1, 2]) == pytest.approx(1.0)  # ties get their mean rank


def test_budget_gram_path_is_as_accurate_as_the_whole_model_path_on_digits_cnn():
    """The budget measures only its frontier, on the anchors' samples, so its allocation may differ from the one
    of curves measured entirely on the whole model (here it does): its model is no less accurate on the test
    split (79.44% against 78.89% when measured), within the 0.5 points issue 15 allows."""
    from onnxprune.config import PruneConfig
    from onnxprune.pipeline import prune

    cfg = PruneConfig(target_macs=0.5, calib=CNN_CALIB, eval_data="models/digits_cnn_test.npz")
    fast, exact = prune(CNN, cfg).report, prune(CNN, cfg.with_(sensitivity_method="model")).report
    assert any(float(r) > 0 for r in fast["budget_ratios"].values())
    assert fast["accuracy"]["after"]["top1"] >= exact["accuracy"]["after"]["top1"] - 0.005


def test_stage_lines_when_stderr_is_not_a_terminal(tmp_path, capsys):
    from onnxprune.cli.main import main

    args = ["sensitivity", CNN, "--calib", CNN_CALIB, "--ratios", "0.5", "--max-samples", "32"]
    assert main(args) == 0
    err = capsys.readouterr().err.splitlines()
    stages = [line.split(":")[1].strip() for line in err if line.startswith("onnxprune: ") and line.endswith("total)")]
    assert stages == ["calibration", "candidate plans", "gram scores", "whole-model anchors"], err
    assert "onnxprune: calibration: 32 samples in " in err[0] and err[0].endswith("s total)")
    assert main([*args, "--quiet"]) == 0
    assert capsys.readouterr().err == ""


def test_budget_options_need_a_budget_and_are_checked(tmp_path, capsys):
    from onnxprune.cli.main import main

    out = str(tmp_path / "o.onnx")
    assert main(["prune", CNN, "-o", out, "--executor", "processes"]) == 1
    assert "--executor" in capsys.readouterr().err
    assert main(["prune", CNN, "-o", out, "--target-macs", "0.5", "--executor", "processes", "--workers", "0"]) == 1
    assert "--workers must be >= 1, got 0" in capsys.readouterr().err
    from onnxprune.config import PruneConfig

    with pytest.raises(ConfigError, match="sensitivity_method must be gram or model"):
        PruneConfig(target_macs=0.5, sensitivity_method="guess").validate_options()


@pytest.mark.parametrize("method", ["model", "gram"])
def test_each_distinct_cut_runs_once(monkeypatch, method):
    """A group of 4 at ratios 0.1/0.2/0.3 keeps 4/3/3 channels: the first is the original model (error 0, no
    run) and the other two are one model, run once; the errors are those of measuring each."""
    from onnxprune.recovery.executor import CandidateEvaluator

    model = _grouped_sink_model()
    data = [{"x": np.random.default_rng(1).standard_normal((16, 3, 6, 6)).astype(np.float32)}]
    runs: list[tuple[int, float]] = []
    measure = CandidateEvaluator.measure

    def counted(self, task, **kw):
        runs.append(task)
        return measure(self, task, **kw)

    monkeypatch.setattr(CandidateEvaluator, "measure", counted)
    from onnxprune.recovery.anchor_submodel import SubModelAnchors

    add = SubModelAnchors.add  # the gram path runs its measurements as sub-models (whole model: float32 round-off)
    monkeypatch.setattr(SubModelAnchors, "add", lambda self, key, cand: runs.append(key) or add(self, key, cand))
    (g,) = sensitivity(model, data, ratios=(0.1, 0.2, 0.3), method=method).groups
    assert g.kept == (4, 3, 3) and len(runs) == 1
    assert g.errors[0] == 0.0 and g.exact[0] and g.errors[1] > 0
    assert g.errors[2] == pytest.approx(g.errors[1], rel=1e-12)  # gram: the anchor's scale times the same score
    dg = analyze(model)
    alone = [measure(ev, (g.group, r)).error for ev in [_evaluator(model, dg, data)] for r in g.ratios]
    assert list(g.errors) == pytest.approx(alone, rel=1e-12 if method == "model" else 1e-6)


def _evaluator(model, dg, data):
    from onnxprune.recovery.executor import CandidateEvaluator, CandidateSpec
    from onnxprune.recovery.sensitivity import OutputErrorMeter

    meter = OutputErrorMeter(model, data)
    spec = CandidateSpec(model.SerializeToString(), tuple(meter.batches), tuple(meter.reference),
                         tuple(meter.outputs), "l2", "none", None, None, None, "labels")
    return CandidateEvaluator(spec, model=model, dg=dg)


def test_quadratic_form_equals_the_three_operand_einsum():
    """The energy and grouped-conv terms use a BLAS matmul; the same numbers as the plain einsum to round-off."""
    from onnxprune.recovery.gram_score import quadratic

    rng = np.random.default_rng(0)
    for groups, out, k in ((1, 7, 40), (4, 3, 9)):
        x = rng.standard_normal((groups, 200, k))
        gram = np.einsum("grk,grl->gkl", x, x)
        rows = rng.standard_normal((groups, out, k))
        np.testing.assert_allclose(quadratic(rows, gram), np.einsum("gok,gkl,gol->go", rows, gram, rows),
                                   rtol=1e-12, atol=1e-9)
