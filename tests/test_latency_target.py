"""--target-speedup through the latency model: calibration on whole-model runs and the sensitivity-weighted
allocation, with the timers as deterministic cost models (our own parameters, never mocks of onnxruntime).

Layer timer: a layer alone costs its weight size / 1000 "ms". Whole-model timer: a fixed overhead plus the
same sum, so the calibrated prediction must find the overhead exactly, and a plan's measured check must
equal its prediction.
"""

from __future__ import annotations

import math

import pytest
from test_latency_widths import _macs_timer, _three_convs

from onnxprune import PruneConfig
from onnxprune.runtime.latency import LatencyCache
from onnxprune.speed import LatencyModel
from onnxprune.speed_target import allocate_for_target
from onnxprune.structured.analysis import analyze

OVERHEAD_MS = 5.0


def _model_timer(models):
    out = []
    for m in models:
        inits = {t.name: list(t.dims) for t in m.graph.initializer}
        out.append(OVERHEAD_MS + sum(math.prod(inits[n.input[1]]) for n in m.graph.node if n.op_type == "Conv") / 1000)
    return out


def _latency(model, dg):
    return LatencyModel(model, dg, batches=(1,), dims={}, timer=_macs_timer(None), cache=LatencyCache(None),
                        model_timer=_model_timer, calibrate=True)


def test_calibration_finds_the_fixed_overhead():
    model = _three_convs()
    dg = analyze(model)
    lm = _latency(model, dg)
    groups = [g for g in dg.prunable_groups]
    table = lm.table(1, {g.id: 16 for g in groups})
    assert table is not None and table.calibration is not None
    assert table.calibration.overhead_ms == pytest.approx(OVERHEAD_MS)
    full = (2304 + 9216 + 512) / 1000
    half = (1152 + 2304 + 256) / 1000
    # the overhead does not shrink: 17.03 / 8.71, not the layers' 12.03 / 3.71
    speedup = lm.predict_speedup({g.id: 16 for g in groups})[1]
    assert speedup == pytest.approx((OVERHEAD_MS + full) / (OVERHEAD_MS + half))
    report = lm.calibration_report()
    assert report is not None and report["1"]["overhead_ms"] == pytest.approx(OVERHEAD_MS)


def test_target_speedup_meets_the_target_and_is_checked_whole():
    model = _three_convs()
    dg = analyze(model)
    lm = _latency(model, dg)
    ratios, info = allocate_for_target(model, dg, PruneConfig(target_speedup=1.5, round_to=1, bench_batches=(1,)), lm)
    assert ratios and info["predicted_speedup"] >= 1.5
    assert info["allocation"].startswith("data-free")
    check = info["checks"][-1]
    assert check["measured_speedup"] == pytest.approx(check["predicted_speedup"], rel=1e-6)  # the model is exact
    assert info["original_ms"] == pytest.approx(OVERHEAD_MS + 12.032, rel=1e-4)
    with pytest.raises(Exception, match="out of reach"):  # the overhead alone is 5 of 17 ms: 3.4x at most
        allocate_for_target(model, dg, PruneConfig(target_speedup=3.5, round_to=1, bench_batches=(1,)), lm)
