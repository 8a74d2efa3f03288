"""Latency budgets allocated by sensitivity: the greedy on latency tables given as data, and the data-free
criterion against numpy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from builders import conv_relu_conv

from onnxprune.recovery.latency_budget import allocate_latency, data_free_errors
from onnxprune.runtime.prediction import Calibration, LayerTable
from onnxprune.structured.analysis import analyze
from onnxprune.structured.plan import make_plan

RATIOS = (0.25, 0.5, 0.75)


def _table() -> LayerTable:
    # group 0 (size 16) cuts layer "x" (6 ms), group 1 (size 16) cuts layer "y" (6 ms); 2 ms fixed overhead
    return LayerTable({"x": 6.0, "y": 6.0}, {0: ("x",), 1: ("y",)}, {0: 16, 1: 16},
                      calibration=Calibration(2.0, 1.0))


def _levels(err0: float, err1: float) -> dict[int, list[tuple[int, float]]]:
    widths = [12, 8, 4]
    return {0: [(w, err0 * (i + 1)) for i, w in enumerate(widths)],
            1: [(w, err1 * (i + 1)) for i, w in enumerate(widths)]}


def test_cheap_error_is_cut_deeper_than_costly_error():
    t = _table()
    original = t.predict_ms({})
    assert original == pytest.approx(14.0)
    got = allocate_latency(_levels(0.01, 0.2), {0: 16, 1: 16}, t.predict_ms, original / 2)
    assert got.reached and got.predicted_ms <= 7.0 + 1e-9
    assert got.widths[0] < got.widths.get(1, 16)  # same time saved per step, far less error: group 0 goes first
    assert got.widths == {0: 4, 1: 8}  # 2 + 1.5 + 3 = 6.5 ms <= 7
    # the other way round, the other group
    flipped = allocate_latency(_levels(0.2, 0.01), {0: 16, 1: 16}, t.predict_ms, original / 2)
    assert flipped.widths == {0: 8, 1: 4}


def test_time_saved_counts_not_only_error():
    # group 1's steps cost a little more error, but its layer takes 5x the time: it saves more per unit of error
    t = LayerTable({"x": 2.0, "y": 10.0}, {0: ("x",), 1: ("y",)}, {0: 16, 1: 16}, calibration=Calibration(1.0, 1.0))
    got = allocate_latency(_levels(0.08, 0.1), {0: 16, 1: 16}, t.predict_ms, 8.0)
    assert got.reached and got.widths.get(0, 16) == 16 and got.widths[1] <= 8


def test_unreachable_target_says_so():
    t = _table()
    got = allocate_latency(_levels(0.1, 0.1), {0: 16, 1: 16}, t.predict_ms, 3.0)  # the overhead alone is 2 ms
    assert not got.reached and got.widths == {0: 4, 1: 4}
    assert got.notes and "not reached" in got.notes[0]


def test_a_step_that_keeps_the_width_is_skipped():
    t = _table()
    levels = {0: [(16, 0.0), (8, 0.1)], 1: [(12, 0.5)]}  # rounding kept group 0 whole at its first ratio
    got = allocate_latency(levels, {0: 16, 1: 16}, t.predict_ms, 11.0)
    assert got.widths == {0: 8} and got.levels == {0: 1}


def test_data_free_errors_are_the_dropped_columns_energy():
    model = conv_relu_conv(c_in=4, c_mid=16, c_out=8, hw=6, batch=1)
    dg = analyze(model)
    g = next(x for x in dg.prunable_groups if x.size == 16)
    plans = [make_plan(model, dg, ratio=r) for r in RATIOS]
    errors = data_free_errors(model, dg, plans)
    sink = next(c for c in g.cuts if c.role == "sink")
    w = next(np.asarray(__import__("onnx").numpy_helper.to_array(t), dtype=np.float64)
             for t in model.graph.initializer if t.name == sink.tensor)
    for plan, e in zip(plans, errors[g.id], strict=True):
        dropped = np.setdiff1d(np.arange(16), plan.keep[g.id])
        want = math.sqrt(np.sum(w[:, dropped] ** 2) / np.sum(w ** 2))
        assert e == pytest.approx(want)
    assert errors[g.id] == sorted(errors[g.id]) and 0 < errors[g.id][0] < errors[g.id][-1] < 1


def test_errors_of_groups_add_in_squares():
    # relative errors 0.3, 0.5, 0.6 per step (like sqrt of the energy removed): summed as they are, a second
    # step on group 0 (+0.2) would look cheaper than a first on group 1 (+0.3); in energy it is not
    # (+0.16 against +0.09), so two equal groups are cut alike
    t = _table()
    levels = {g: [(12, 0.3), (8, 0.5), (4, 0.6)] for g in (0, 1)}
    got = allocate_latency(levels, {0: 16, 1: 16}, t.predict_ms, 11.0)  # two steps of 1.5 ms
    assert got.widths == {0: 12, 1: 12}
    assert got.error == pytest.approx(math.sqrt(2 * 0.09))


def test_each_reader_of_a_group_adds_its_own_share():
    """A group read by two layers weighs both: its error energy is the sum of their relative energies."""
    from builders import init, make_model, rng, vinfo
    from onnx import helper

    r = rng(1)
    w2a = r.standard_normal((8, 16, 1, 1)).astype(np.float32)
    w2b = (r.standard_normal((8, 16, 1, 1)) * np.linspace(0.1, 2.0, 16)[None, :, None, None]).astype(np.float32)
    inits = [init("w1", r.standard_normal((16, 4, 3, 3)).astype(np.float32)), init("w2a", w2a), init("w2b", w2b)]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="c1", pads=[1] * 4),
             helper.make_node("Relu", ["a"], ["ra"], name="r1"),
             helper.make_node("Conv", ["ra", "w2a"], ["b"], name="c2a"),
             helper.make_node("Conv", ["ra", "w2b"], ["c"], name="c2b"),
             helper.make_node("Add", ["b", "c"], ["out"], name="add")]
    model = make_model(nodes, [vinfo("x", [1, 4, 6, 6])], [vinfo("out", [1, 8, 6, 6])], inits)
    dg = analyze(model)
    g = next(x for x in dg.prunable_groups if x.size == 16)
    plan = make_plan(model, dg, ratio=0.5)
    dropped = np.setdiff1d(np.arange(16), plan.keep[g.id])
    want = sum(float(np.sum(w[:, dropped].astype(np.float64) ** 2) / np.sum(w.astype(np.float64) ** 2))
               for w in (w2a, w2b))
    assert data_free_errors(model, dg, [plan])[g.id][0] == pytest.approx(math.sqrt(want))


def test_a_step_that_saves_no_time_is_passed_over():
    # group 0's 12-wide step runs slower than 16 (an odd width off the kernel's fast path); 8 is fast
    t = LayerTable({"x": 6.0, "y": 6.0}, {0: ("x",), 1: ("y",)}, {0: 16, 1: 16},
                   {0: {12: {"x": 1.3}, 8: {"x": 0.3}, 4: {"x": 0.25}}}, calibration=Calibration(2.0, 1.0))
    got = allocate_latency(_levels(0.01, 0.2), {0: 16, 1: 16}, t.predict_ms, 10.5)
    assert got.reached and got.widths == {0: 8}  # 2 + 1.8 + 6 = 9.8 ms, without cutting the costly group 1
