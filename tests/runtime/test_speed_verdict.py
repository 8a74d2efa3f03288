"""Slower only beyond the measured spread: deterministic slowdowns are caught, noise is not called slower."""

from __future__ import annotations

import numpy as np

from onnxprune.runtime.speed_verdict import bench_verdicts, median_interval, speed_verdict


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
