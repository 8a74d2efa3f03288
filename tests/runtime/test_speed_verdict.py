"""Slower only beyond the measured spread: deterministic slowdowns are caught, noise is not called slower."""

from __future__ import annotations

import numpy as np

from onnxprune.runtime.speed_verdict import bench_verdicts, confirm_verdict, median_interval, speed_verdict


def test_consistent_slowdown_is_slower():
    v = speed_verdict("cpu", 1, [1.0] * 20, [1.1] * 20)
    assert v.slower and not v.faster and abs(v.speedup - 1 / 1.1) < 1e-9


def test_noise_around_equal_is_not_slower_nor_faster():
    r = np.random.default_rng(0)
    base = 1 + 0.3 * r.standard_normal(30) ** 2
    pruned = 1 + 0.3 * r.standard_normal(30) ** 2
    v = speed_verdict("cpu", 8, list(base), list(pruned))
    assert not v.slower and not v.faster and v.low < 1 < v.high


def test_small_but_steady_slowdown_under_noise_is_caught():
    r = np.random.default_rng(1)
    load = 1 + r.random(60)  # the machine's load, shared by both runs of a round
    v = speed_verdict("cpu", 1, list(load), list(load * 1.05))
    assert v.slower


def test_median_interval_brackets_the_median():
    mid, lo, hi = median_interval(list(range(100)))
    assert lo < mid < hi and lo >= 35 and hi <= 64


def test_verdicts_read_a_bench_report():
    bench = {"results": [
        {"model": "original", "provider": "cpu", "batch": 1, "times_ms": [1.0] * 10},
        {"model": "pruned", "provider": "cpu", "batch": 1, "times_ms": [2.0] * 10},
        {"model": "original", "provider": "cpu", "batch": 8, "times_ms": [4.0] * 10},
        {"model": "pruned", "provider": "cpu", "batch": 8, "times_ms": [2.0] * 10},
    ]}
    got = {v.batch: v for v in bench_verdicts(bench)}
    assert got[1].slower and got[8].faster and got[8].speedup == 2.0


def test_a_steady_one_percent_difference_is_within_the_margin():
    v = speed_verdict("cpu", 1, [1.0] * 30, [1.01] * 30)
    assert not v.slower and not v.faster


# -- the confirmation of a slower verdict (alternating pair order, blocks, halves, fastest runs) -------------
def _series(rounds: int, base: float, pruned: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Both models under a machine load shared by a round's two runs, plus each run's own jitter."""
    r = np.random.default_rng(seed)
    load = 1 + 0.3 * r.random(rounds)
    return (base * load * (1 + 0.03 * r.random(rounds)), pruned * load * (1 + 0.03 * r.random(rounds)))


def test_a_load_burst_in_the_first_half_is_not_read_as_a_slowdown():
    """The pruned model is 1.05x faster; a burst of load hits its runs in the first 28 of 40 rounds (x1.45).
    The first verdict is fooled (the keras_small_cnn refusal at 0.88x); the confirmation is not."""
    base, pruned = _series(40, 1.05, 1.0, seed=3)
    pruned[:28] *= 1.45
    assert speed_verdict("cpu", 1, list(base), list(pruned)).slower
    c = confirm_verdict("cpu", 1, list(base), list(pruned))
    assert not c.slower
    assert c.halves[0] < 0.97 < c.halves[1] and c.fastest > 0.97 and c.rounds == 40


def test_a_genuine_slowdown_to_0_85_is_confirmed_despite_bursts():
    """0.85x in every round, with bursts of load on both models (and on the pruned one alone in a few rounds)."""
    base, pruned = _series(40, 1.0, 1 / 0.85, seed=4)
    base[5:9] *= 2.0
    pruned[20:23] *= 1.5
    c = confirm_verdict("cpu", 8, list(base), list(pruned))
    assert c.slower and c.batch == 8
    assert abs(c.speedup - 0.85) < 0.03 and abs(c.fastest - 0.85) < 0.03 and max(c.halves) < 0.9


def test_blocks_cancel_a_load_that_rises_within_the_rounds():
    """Equal models, load rising linearly run by run; pair order alternates (pruned first in even rounds), so
    the pruned model runs first in one round and second in the next: blocks see the same load for both."""
    t = np.arange(80, dtype=np.float64)
    order_pruned_first = np.arange(40) % 2 == 0
    pruned = 1 + 0.02 * np.where(order_pruned_first, t[0::2], t[1::2])
    base = 1 + 0.02 * np.where(order_pruned_first, t[1::2], t[0::2])
    c = confirm_verdict("cpu", 1, list(base), list(pruned))
    assert not c.slower and abs(c.speedup - 1.0) < 1e-9


def test_confirmation_needs_paired_rounds():
    import pytest

    with pytest.raises(ValueError):
        confirm_verdict("cpu", 1, [1.0] * 3, [1.0] * 3)
    with pytest.raises(ValueError):
        confirm_verdict("cpu", 1, [1.0] * 6, [1.0] * 5)
