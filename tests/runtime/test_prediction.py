"""Latency predictions from a layer table, calibrated on whole-model runs: the logic, on tables given as data.

No timing here (machines are noisy): the tables and measurements are numbers chosen so that each term of
the prediction (the fixed overhead, the scale, each group's factor) changes the answer.
"""

from __future__ import annotations

import pytest

from onnxprune.runtime.prediction import Calibration, LayerTable


def _table(calibration: Calibration | None = None) -> LayerTable:
    # two layers: "a" cut by group 0 (size 10), "b" cut by groups 0 and 1 (size 20)
    return LayerTable({"a": 4.0, "b": 6.0}, {0: ("a", "b"), 1: ("b",)}, {0: 10, 1: 20},
                      {0: {5: {"a": 0.5, "b": 0.6}}}, calibration)


def test_layer_sum_multiplies_each_groups_factor():
    t = _table()
    assert t.layer_sum({}) == pytest.approx(10.0)
    assert t.layer_sum({0: 5}) == pytest.approx(4 * 0.5 + 6 * 0.6)
    # group 1 never measured: kept/size; "b" gets both factors
    assert t.layer_sum({0: 5, 1: 10}) == pytest.approx(4 * 0.5 + 6 * 0.6 * 0.5)
    # a width between measured ones is interpolated (7 of 10: between 5 -> 0.5 and 10 -> 1.0 for "a")
    assert t.factor(0, 7, "a") == pytest.approx(0.7)
    assert t.factor(0, 2, "a") == pytest.approx(0.2)  # between width 0 (0) and 5 (0.5)


def test_calibration_recovers_overhead_and_scale():
    # a model whose run costs 3 ms of fixed overhead plus 0.5 ms per unit of layer sum
    fit = Calibration.fit([(10.0, 3 + 0.5 * 10), (4.0, 3 + 0.5 * 4)])
    assert fit is not None
    assert fit.overhead_ms == pytest.approx(3.0) and fit.scale == pytest.approx(0.5)
    t = _table(fit)
    keep = {0: 5, 1: 10}
    s = t.layer_sum(keep)
    assert t.predict_ms(keep) == pytest.approx(3 + 0.5 * s)
    # the overhead does not shrink with the layers: the speedup is well under the layer sum's ratio
    assert t.speedup(keep) == pytest.approx((3 + 5) / (3 + 0.5 * s))
    assert t.speedup(keep) < 10.0 / s - 0.5
    # dropping the overhead term (a fit through zero) would predict the layer ratio: that is what a
    # tiny model's +88% error came from
    through_zero = LayerTable(t.layers, t.cuts, t.sizes, t.factors, Calibration(0.0, 0.8))
    assert through_zero.speedup(keep) == pytest.approx(10.0 / s)


def test_calibration_scale_covers_layers_that_run_slower_than_timed_alone():
    # with two threads the cut model ran only 1.25x faster where the layers say 2.5x: the fit follows it
    fit = Calibration.fit([(10.0, 10.0), (4.0, 8.0)])
    assert fit is not None
    assert fit.ms(4.0) == pytest.approx(8.0) and fit.ms(10.0) == pytest.approx(10.0)
    assert fit.overhead_ms == pytest.approx(20 / 3) and fit.scale == pytest.approx(1 / 3)


def test_calibration_edge_cases():
    assert Calibration.fit([(10.0, 5.0)]) is None  # one point fixes no line
    assert Calibration.fit([(10.0, 5.0), (10.0, 4.0)]) is None  # no spread in the sum
    slower = Calibration.fit([(10.0, 5.0), (4.0, 6.0)])  # the cut ran slower: no time scales with the layers
    assert slower is not None and slower.scale == 0.0 and slower.overhead_ms == pytest.approx(5.0)
    superlinear = Calibration.fit([(10.0, 5.0), (5.0, 1.0)])  # faster than the layers: no negative overhead
    assert superlinear is not None and superlinear.overhead_ms == 0.0 and superlinear.ms(10.0) == pytest.approx(5.0)
    three = Calibration.fit([(10.0, 8.0), (4.0, 5.0), (7.0, 6.5)])  # least squares through collinear points
    assert three is not None and three.ms(0.0) == pytest.approx(3.0) and three.scale == pytest.approx(0.5)


def test_uncalibrated_prediction_keeps_the_unmodelled_share():
    t = _table()
    keep = {0: 5}
    s = t.layer_sum(keep)
    # the layers are 10 of the model's 20 ms: the other 10 stay
    assert t.predict_ms(keep, 20.0) == pytest.approx(10.0 + s)
    assert t.speedup(keep, 20.0) == pytest.approx(20.0 / (10.0 + s))
    assert t.speedup(keep) == pytest.approx(10.0 / s)  # no measurement at all: the layers are the model
