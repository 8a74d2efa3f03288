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
    # below the narrowest measured width: along the line through it and the full width ("a" is proportional,
    # "b" keeps 0.2 of its time at any width: a line through the origin would say 0.24 and 0)
    assert t.factor(0, 2, "a") == pytest.approx(0.2)
    assert t.factor(0, 2, "b") == pytest.approx(0.36) and t.factor(0, 0, "b") == 0.0
    assert t.factor(0, 1, "b") == pytest.approx(0.28)


def test_groups_that_slice_one_axis_add_their_savings():
    # layer "c" (10 ms) reads a concatenation: group 0 holds 6 of its 10 input channels, group 1 the other 4;
    # group 2 cuts its output axis. "p" is group 0's producer (its output axis, all of it).
    axes = {0: {"c": ("in", 0.6), "p": ("out0", 1.0)}, 1: {"c": ("in", 0.4)}, 2: {"c": ("out", 1.0)}}
    t = LayerTable({"c": 10.0, "p": 2.0}, {0: ("c", "p"), 1: ("c",), 2: ("c",)}, {0: 6, 1: 4, 2: 8}, axes=axes)
    # unmeasured widths scale only the group's share: half of group 0 is 3 of the 10 input channels
    assert t.layer_sum({0: 3}) == pytest.approx(10 * 0.7 + 2 * 0.5)
    # both slices halved: 5 of 10 input channels; the product of kept/size would say a quarter
    assert t.layer_sum({0: 3, 1: 2}) == pytest.approx(10 * 0.5 + 2 * 0.5)
    # another axis multiplies: half the output channels too
    assert t.layer_sum({0: 3, 1: 2, 2: 4}) == pytest.approx(10 * 0.5 * 0.5 + 2 * 0.5)
    # measured factors of one axis add their savings (0.2 + 0.3), never below nothing
    m = LayerTable(t.layers, t.cuts, t.sizes, {0: {3: {"c": 0.8}}, 1: {2: {"c": 0.7}}}, axes=axes)
    assert m.layer_sum({0: 3, 1: 2}) == pytest.approx(10 * 0.5 + 2 * 0.5)
    w = LayerTable(t.layers, t.cuts, t.sizes, {0: {3: {"c": 0.4}}, 1: {2: {"c": 0.5}}}, axes=axes)
    assert w.layer_sum({0: 3, 1: 2}) == pytest.approx(2 * 0.5)


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


def _blocked(calibration: Calibration | None = None) -> LayerTable:
    # "a" cut by group 0 (32 channels, conv block 16); "b" by groups 0 and 1 (64, block 16); "c" by group 2
    # (8 channels: off the block at full width); "d" by group 3 (a MatMul group: no block)
    return LayerTable({"a": 4.0, "b": 6.0, "c": 1.0, "d": 2.0}, {0: ("a", "b"), 1: ("b",), 2: ("c",), 3: ("d",)},
                      {0: 32, 1: 64, 2: 8, 3: 64}, {}, calibration, {0: 16, 1: 16, 2: 16})


def test_unaligned_sum_holds_the_layers_a_cut_takes_off_the_block():
    t = _blocked()
    assert t.unaligned_sum({}) == 0.0
    assert t.unaligned_sum({0: 16, 1: 32}) == 0.0  # on the block
    assert t.unaligned_sum({0: 24}) == pytest.approx(4 * 0.75 + 6 * 0.75)  # both layers of group 0, at 24/32
    assert t.unaligned_sum({0: 16, 1: 40}) == pytest.approx(6 * 0.5 * 40 / 64)  # "b" only, at both factors
    assert t.unaligned_sum({2: 6}) == 0.0  # off the block already at full width: the original runs so too
    assert t.unaligned_sum({3: 40}) == 0.0  # no conv layout to leave
    assert [t.unaligned_count(k) for k in ({}, {0: 16, 1: 32}, {0: 24}, {0: 16, 1: 40}, {2: 6}, {3: 40})] == \
        [0, 0, 2, 1, 0, 0]


def test_off_block_cuts_do_not_bend_the_line_of_on_block_plans():
    """``ms = 2 + 0.5 * S + 0.4 * U``: the line is fitted on the points with ``U = 0`` and the off-block scale
    on the rest; one line through every point (the old fit) mispredicts the on-block plan."""
    t = _blocked()

    def ms(keep):
        return 2 + 0.5 * t.layer_sum(keep) + 0.4 * t.unaligned_sum(keep)

    points = [{}, {0: 24, 1: 48}, {0: 16, 1: 48}]  # the original, an off-block cut, an on-block cut
    fit = Calibration.fit([(t.layer_sum(k), ms(k)) for k in points], [t.unaligned_sum(k) for k in points])
    assert fit is not None
    assert (fit.overhead_ms, fit.scale, fit.unaligned_scale) == pytest.approx((2.0, 0.5, 0.4))
    table = LayerTable(t.layers, t.cuts, t.sizes, t.factors, fit, t.blocks)
    for plan in ({0: 16, 1: 32}, {0: 24, 1: 32}, {0: 8, 1: 40}):
        assert table.predict_ms(plan) == pytest.approx(ms(plan))
    one_line = Calibration.fit([(t.layer_sum(k), ms(k)) for k in points])
    assert one_line is not None and one_line.unaligned_scale == 0.0
    plan = {0: 16, 1: 32}
    assert abs(one_line.ms(t.layer_sum(plan)) / ms(plan) - 1) > 0.05
    assert fit.to_dict()["unaligned_scale"] == pytest.approx(0.4)


def test_off_block_layers_are_priced_per_layer_and_by_their_time():
    """``ms = 2 + 0.5 * S + 0.3 * U + 0.2 * N`` (``N`` off-block layers): three off-block plans fix both prices,
    and a plan with more, smaller off-block layers than they had is predicted; priced by time alone it is not."""
    t = _blocked()

    def ms(keep):
        return 2 + 0.5 * t.layer_sum(keep) + 0.3 * t.unaligned_sum(keep) + 0.2 * t.unaligned_count(keep)

    points = [{}, {0: 16, 1: 48}, {0: 16, 1: 32}, {0: 24, 1: 48}, {0: 16, 1: 40}, {0: 8, 1: 56}]
    sums = [(t.layer_sum(k), ms(k)) for k in points]
    offs, counts = [t.unaligned_sum(k) for k in points], [t.unaligned_count(k) for k in points]
    fit = Calibration.fit(sums, offs, counts)
    assert fit is not None
    assert (fit.overhead_ms, fit.scale, fit.unaligned_scale, fit.per_unaligned_ms) == pytest.approx((2, 0.5, 0.3, 0.2))
    assert fit.to_dict()["per_unaligned_ms"] == pytest.approx(0.2) and fit.to_dict()["unaligned_counts"] == counts
    table = LayerTable(t.layers, t.cuts, t.sizes, t.factors, fit, t.blocks)
    plan = {0: 8, 1: 8}
    assert table.predict_ms(plan) == pytest.approx(ms(plan))
    by_time = Calibration.fit(sums, offs)
    assert by_time is not None and by_time.per_unaligned_ms == 0.0
    assert abs(by_time.ms(t.layer_sum(plan), t.unaligned_sum(plan)) / ms(plan) - 1) > 0.03
    # two off-block plans would fit any pair of prices exactly: one price only, the one that fits them better
    two = Calibration.fit(sums[:5], offs[:5], counts[:5])
    assert two is not None and (two.unaligned_scale > 0) != (two.per_unaligned_ms > 0)
    per_layer = [(s, m - 0.3 * u) for (s, m), u in zip(sums, offs, strict=True)]  # no time price: found so
    alone = Calibration.fit(per_layer[:5], offs[:5], counts[:5])
    assert alone is not None and (alone.unaligned_scale, alone.per_unaligned_ms) == pytest.approx((0.0, 0.2))


def test_unaligned_calibration_falls_back_to_one_line():
    # one on-block point fixes no line: every point fits one line, and the off-block scale is 0
    fit = Calibration.fit([(10.0, 8.0), (7.0, 7.5)], [0.0, 3.0])
    assert fit is not None and fit.unaligned_scale == 0.0 and fit.ms(7.0) == pytest.approx(7.5)
    # off-block plans that ran faster than the line: no negative price for leaving the block
    faster = Calibration.fit([(10.0, 8.0), (4.0, 5.0), (7.0, 6.0)], [0.0, 0.0, 3.0])
    assert faster is not None and faster.unaligned_scale == 0.0 and faster.ms(4.0) == pytest.approx(5.0)
    # the on-block runs do not fall with the layer sum (a stalled run): no split, one line through every run
    flat = Calibration.fit([(10.0, 8.0), (4.0, 8.5), (6.0, 4.0)], [0.0, 0.0, 1.0])
    assert flat is not None and flat.unaligned_scale == 0.0 and flat.scale > 0
    assert flat.ms(10.0) == pytest.approx(Calibration.fit([(10.0, 8.0), (4.0, 8.5), (6.0, 4.0)]).ms(10.0))
    with pytest.raises(ValueError, match="one off-block sum and count per point"):
        Calibration.fit([(10.0, 8.0), (4.0, 5.0)], [0.0])


def _noisy_and_plain() -> tuple[LayerTable, LayerTable]:
    # layer "a" cut by group 0 (size 8), layer "b" whole; the measured factors say a cut is slower (noise)
    noisy = LayerTable({"a": 4.0, "b": 2.0}, {0: ("a",)}, {0: 8}, {0: {4: {"a": 1.2}, 6: {"a": 1.1}}})
    return noisy, LayerTable(noisy.layers, noisy.cuts, noisy.sizes, {})


def test_the_table_that_predicts_held_out_runs_is_kept():
    from onnxprune.runtime.prediction import held_out_error, steadier_table

    noisy, plain = _noisy_and_plain()
    # whole-model runs that scale with kept/size: 1 ms fixed + 0.5 ms per unit of plain layer sum
    points = [({}, 1 + 0.5 * 6), ({0: 6}, 1 + 0.5 * 5), ({0: 4}, 1 + 0.5 * 4), ({0: 2}, 1 + 0.5 * 3)]
    assert held_out_error(plain, points) == pytest.approx(0.0, abs=1e-12)
    assert held_out_error(noisy, points) > 0.05
    chosen = steadier_table([noisy, plain], points)
    assert chosen.factors == {} and chosen.calibration is not None
    assert chosen.predict_ms({0: 5}) == pytest.approx(1 + 0.5 * 4.5)
    # runs that follow the measured factors keep them (the first table wins a tie)
    measured = [(k, 1 + 0.5 * noisy.layer_sum(k)) for k, _ in points]
    assert steadier_table([noisy, plain], measured).factors == noisy.factors
    assert steadier_table([noisy, noisy], measured) is not None


def test_a_table_the_runs_contradict_is_not_kept_for_its_held_out_error():
    """SqueezeNet's miss: the measured factors read the cut plans as slower than the original while every one
    ran faster whole. Their times barely move, so the flat line such a table gives held them out better than
    kept/size did, and every plan was predicted at the original's speed."""
    from onnxprune.runtime.prediction import contradicted, held_out_error, steadier_table

    noisy, plain = _noisy_and_plain()
    points = [({}, 10.0), ({0: 6}, 9.0), ({0: 4}, 9.0), ({0: 2}, 9.0)]  # every cut ran 10% faster
    assert held_out_error(noisy, points) < held_out_error(plain, points)
    assert contradicted(noisy, points) and not contradicted(plain, points)
    chosen = steadier_table([noisy, plain], points)
    assert chosen.factors == {}
    assert chosen.speedup({0: 4}) > 1.05  # the flat line read 1.00x
    assert steadier_table([noisy], points).factors == noisy.factors  # contradicted, but the only one
    # cuts that ran no faster (within the margin) do not contradict a table that reads them slower
    assert not contradicted(noisy, [({}, 10.0), ({0: 6}, 9.8), ({0: 4}, 10.4)])


def test_held_out_error_needs_a_fit_without_each_point():
    from onnxprune.runtime.prediction import held_out_error

    _, plain = _noisy_and_plain()
    assert held_out_error(plain, [({}, 4.0), ({0: 4}, 3.0)]) == float("inf")
    assert held_out_error(plain, []) == float("inf")
