"""The latency section says on what basis it predicts: an uncalibrated layer sum is never printed as fact.

Timers are deterministic cost models given as data (our own parameters, never mocks of onnxruntime): a
layer alone costs its weight size / 1000 ms; the whole model costs a fixed 5 ms per run plus that sum. The
real speedup of a plan is then ``(5 + full sum) / (5 + plan sum)``; the layer sum alone claims
``full sum / plan sum``, the overestimate the console printed as "predicted 5.49x" for a model measured at
1.37x (hf_vit_legacy, MAC ideal 3.26x).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_latency_target import OVERHEAD_MS, _model_timer
from test_latency_widths import _macs_timer, _three_convs

from onnxprune import PruneConfig, prune
from onnxprune.cli.summary import latency_lines
from onnxprune.runtime.latency import LatencyCache
from onnxprune.speed import LatencyModel
from onnxprune.speed_report import CALIBRATED, LAYER_SUM, SHARE, latency_report
from onnxprune.structured.analysis import analyze

ROOT = Path(__file__).resolve().parents[1]
FULL = (2304 + 9216 + 512) / 1000  # the three convs' weight sizes / 1000
HALF = (1152 + 2304 + 256) / 1000  # every group at 16 of 32 channels


def _uncalibrated():
    model = _three_convs()
    dg = analyze(model)
    calls = []

    def model_timer(models):
        calls.append(len(models))
        return _model_timer(models)

    lm = LatencyModel(model, dg, batches=(1,), dims={}, timer=_macs_timer(None), cache=LatencyCache(None),
                      model_timer=model_timer, calibrate=False)
    return lm, {g.id: 16 for g in dg.prunable_groups}, calls


def test_without_a_benchmark_the_original_timed_alone_keeps_the_fixed_cost():
    lm, keep, calls = _uncalibrated()
    (row,) = latency_report(lm, keep, None, ideal=FULL / HALF, time_original=True)["prediction"]
    assert row["basis"] == SHARE
    assert row["predicted_speedup"] == pytest.approx((OVERHEAD_MS + FULL) / (OVERHEAD_MS + HALF), abs=1e-4)
    assert calls == [1]  # the original alone, once: no reference cuts
    assert "above_mac_ideal" not in row


def test_a_bare_layer_sum_is_labelled_uncalibrated_and_above_the_ideal():
    lm, keep, calls = _uncalibrated()
    (row,) = latency_report(lm, keep, None, ideal=2.0)["prediction"]
    assert row["basis"] == LAYER_SUM and calls == []
    assert row["predicted_speedup"] == pytest.approx(FULL / HALF, abs=1e-4) and row["above_mac_ideal"]
    (line,) = latency_lines({"latency": {"prediction": [row]}})
    assert "layer sum 3.24x (uncalibrated; above the MAC ideal 2.00x" in line and "predicted" not in line


def test_a_calibrated_prediction_says_so():
    model = _three_convs()
    dg = analyze(model)
    lm = LatencyModel(model, dg, batches=(1,), dims={}, timer=_macs_timer(None), cache=LatencyCache(None),
                      model_timer=_model_timer, calibrate=True)
    (row,) = latency_report(lm, {g.id: 16 for g in dg.prunable_groups}, None, time_original=True)["prediction"]
    assert row["basis"] == CALIBRATED
    assert row["predicted_speedup"] == pytest.approx((OVERHEAD_MS + FULL) / (OVERHEAD_MS + HALF), abs=1e-4)


def test_summary_prints_the_hf_vit_case_for_what_it_is():
    """The rows the console got for hf_vit_legacy without a benchmark (MAC ideal 3.26x)."""
    rows = [{"batch": 1, "predicted_speedup": 5.49, "basis": LAYER_SUM, "mac_ideal": 3.26, "above_mac_ideal": True},
            {"batch": 8, "predicted_speedup": 1.08, "basis": LAYER_SUM, "mac_ideal": 3.26}]
    lines = latency_lines({"latency": {"prediction": rows}})
    assert "predicted 5.49x" not in "\n".join(lines)
    assert "layer sum 5.49x (uncalibrated; above the MAC ideal 3.26x" in lines[0]
    assert "layer sum 1.08x (uncalibrated; --bench calibrates it)" in lines[1]


def test_shipped_transformer_without_bench_predicts_on_the_original_timed_alone(tmp_path, monkeypatch):
    """digits_transformer --ratio 0.5 --no-bench: every row has the measured original as its basis (before,
    a bare layer sum: 1.68x / 1.95x predicted where --bench measured 1.12x / 1.87x; timing-free asserts)."""
    monkeypatch.setenv("ONNXPRUNE_CACHE_DIR", str(tmp_path / "cache"))
    result = prune(str(ROOT / "models" / "digits_transformer.onnx"), PruneConfig(ratio=0.5, bench=False))
    rows = result.report["latency"]["prediction"]
    assert [r["batch"] for r in rows] == [1, 8]
    assert all(r["basis"] == SHARE and r["mac_ideal"] > 1 for r in rows)


def test_summary_says_what_timing_again_found():
    from onnxprune.cli.summary import confirmation_lines

    report = {"speed": {"confirmation": [
        {"provider": "cpu", "batch": 1, "speedup": 1.02, "low": 0.99, "high": 1.05, "halves": [1.0, 1.03],
         "fastest": 1.04, "rounds": 200, "seconds": 0.4, "slower": False}]}}
    (line,) = confirmation_lines(report)
    assert "timed again" in line and "cpu batch 1: 1.02x (95% 0.99-1.05), fastest runs 1.04x, 200 rounds" in line
    assert line.endswith("not slower (the first timing met load)")
    assert confirmation_lines({"speed": {}}) == []
