"""Data-aware head criteria: output norm through the output projection, and ablation (the head silenced).

Both are checked against what they claim to measure, computed here from onnxruntime runs: the head's
contribution ``x_h W_hᵀ`` on the calibration activations, and the oracle model that drops only that head.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import numpy_helper
from oracle_check import run_ort

from onnxprune import PruneConfig, prune
from onnxprune.core.errors import ConfigError
from onnxprune.core.io import load_model
from onnxprune.recovery.calibrate import with_outputs
from onnxprune.recovery.data_criteria import collect_group_stats
from onnxprune.recovery.head_criteria import head_ablation, head_output_norm, head_sinks
from onnxprune.runtime.feeds import load_npz_feeds
from onnxprune.structured.analysis import analyze
from onnxprune.structured.attention import attention_heads
from onnxprune.structured.importance import ImportanceContext, get_criterion
from onnxprune.structured.oracle import zeroed_reference
from onnxprune.structured.plan import PrunePlan

MODELS = Path(__file__).resolve().parents[2] / "models"
MODEL = MODELS / "digits_transformer.onnx"
CALIB = MODELS / "digits_transformer_calib.npz"


@pytest.fixture(scope="module")
def setting():  # type: ignore[no-untyped-def]
    model = load_model(MODEL)
    dg = analyze(model)
    heads = [g for g in dg.prunable_groups if attention_heads(g)]
    assert len(heads) == 2
    return model, dg, heads


def _weight(model, name: str) -> np.ndarray:  # type: ignore[no-untyped-def]
    return numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == name)).astype(np.float64)


def test_output_norm_is_the_rms_of_each_heads_contribution_to_the_projection(setting) -> None:  # type: ignore[no-untyped-def]
    model, dg, heads = setting
    stats = collect_group_stats(model, dg, str(CALIB))["activations"]
    feeds = load_npz_feeds(CALIB, model)
    for group in heads:
        (sink,) = head_sinks(group)
        w = _weight(model, sink.tensor)  # Gemm transB: [out, in]
        node = next(n for n in model.graph.node if (n.name or n.output[0]) == sink.node)
        x = np.asarray(run_ort(with_outputs(model, [node.input[0]]), feeds)[-1], dtype=np.float64)
        want = [np.sqrt(np.mean(np.sum((x[:, p] @ w[:, p].T) ** 2, axis=1)))
                for p in (sink.positions(np.array([h])) for h in range(group.size))]
        got = head_output_norm(group, {sink.tensor: w}, stats)
        np.testing.assert_allclose(got, want, rtol=1e-6)
        ctx = ImportanceContext(model, dg, statistics={"activations": stats})
        np.testing.assert_allclose(get_criterion("activation")(group, ctx), np.asarray(want) / max(want), rtol=1e-6)


def test_ablation_is_the_output_error_of_the_oracle_dropping_that_head_alone(setting) -> None:  # type: ignore[no-untyped-def]
    model, dg, heads = setting
    feeds = load_npz_feeds(CALIB, model)
    base = np.asarray(run_ort(model, feeds)[0], dtype=np.float64)
    group = heads[0]
    got = head_ablation(group, model, str(CALIB))
    assert got is not None
    for h in range(group.size):
        keep = np.setdiff1d(np.arange(group.size), [h])
        plan = PrunePlan(fingerprint=dg.fingerprint, keep={group.id: keep}, sizes={group.id: group.size})
        silenced = np.asarray(run_ort(zeroed_reference(model, dg, plan), feeds)[0], dtype=np.float64)
        want = np.sum((silenced - base) ** 2) / np.sum(base ** 2)
        assert got[h] == pytest.approx(want, rel=1e-4)
    assert len(set(np.round(got, 6))) == group.size  # the heads really differ


def test_pruning_heads_by_ablation_drops_the_least_harmful_heads_and_says_how_ffn_was_scored() -> None:
    result = prune(str(MODEL), PruneConfig(ratio=0.5, importance="ablation", calib=str(CALIB), recover="none",
                                           round_to=1, bench=False))
    model = load_model(MODEL)
    dg = analyze(model)
    for group in (g for g in dg.prunable_groups if attention_heads(g)):
        errors = head_ablation(group, model, str(CALIB))
        assert errors is not None
        assert result.plan is not None
        assert list(result.plan.kept(group.id)) == sorted(np.argsort(errors)[2:].tolist())
        assert result.plan.criterion_for(group.id) == "ablation"
    ffn = next(g for g in dg.prunable_groups if not attention_heads(g))
    assert result.plan.criterion_for(ffn.id) == "ablation (not attention heads: activation)"
    assert result.report["validation"]["exact"]["passed"]


def test_ablation_is_a_structured_criterion_only() -> None:
    with pytest.raises(ConfigError, match="ablation"):
        PruneConfig(mode="unstructured", sparsity=0.5, importance="ablation", calib=str(CALIB))
    with pytest.raises(ConfigError, match="calibration"):
        PruneConfig(importance="ablation")
