"""The next goal of a latency target's closed loop, from measured plans given as data."""

from __future__ import annotations

import math

import pytest

from onnxprune.runtime.target_steps import MAX_STEP, next_goal, within


def test_one_check_scales_the_prediction_by_the_miss():
    # predicted 2.0x, measured 1.6x: the prediction overshoots by 1.25, so ask 2.5x of it for a 2x target
    assert next_goal([(2.0, 1.6)], 2.0) == pytest.approx(2.5)
    assert next_goal([(2.0, 2.4)], 2.0) == pytest.approx(2.0 * 2.0 / 2.4)  # overshot: ask less


def test_two_checks_take_the_secant_in_log_space():
    # measured = predicted ** 0.5 exactly: the secant through two checks finds the goal whose measurement is 2x
    checks = [(2.0, math.sqrt(2.0)), (3.0, math.sqrt(3.0))]
    assert next_goal(checks, 2.0) == pytest.approx(4.0)
    # a proportional step would ask 3 * 2 / sqrt(3) = 3.46 (and miss)
    assert abs(3.0 * 2.0 / math.sqrt(3.0) - next_goal(checks, 2.0)) > 0.5


def test_a_flat_secant_falls_back_to_the_proportional_step():
    checks = [(2.0, 1.60), (2.4, 1.61)]  # barely moved: noise, not a slope
    assert next_goal(checks, 2.0) == pytest.approx(2.4 * 2.0 / 1.61)


def test_a_bracketed_target_keeps_the_goal_inside_the_bracket():
    # a hit at 3.0 (2.2x) and a miss at 2.0 (1.5x): whatever the secant says, the goal stays between them
    checks = [(3.0, 2.2), (2.0, 1.5)]
    goal = next_goal(checks, 2.0)
    assert 2.0 < goal < 3.0
    # the secant through them (slope log(2.2/1.5)/log(1.5) = 0.94) is inside already and is taken
    slope = math.log(2.2 / 1.5) / math.log(3.0 / 2.0)
    assert goal == pytest.approx(math.exp(math.log(2.0) + math.log(2.0 / 1.5) / slope))


def test_one_step_is_bounded_and_never_below_one():
    assert next_goal([(2.0, 0.5)], 2.0) == pytest.approx(2.0 * MAX_STEP)  # a wild measurement: one bounded step
    assert next_goal([(1.05, 3.0)], 1.1) == 1.0
    with pytest.raises(ValueError):
        next_goal([], 2.0)
    with pytest.raises(ValueError):
        next_goal([(2.0, 0.0)], 2.0)


def test_within_reads_the_tolerance_and_the_measured_interval():
    assert within(1.92, 1.90, 1.94, 2.0, 0.05)  # 4% off
    assert not within(1.85, 1.80, 1.90, 2.0, 0.05)  # 7.5% off and the interval excludes the target
    assert within(1.85, 1.70, 2.05, 2.0, 0.05)  # 7.5% off, but the spread cannot tell it from 2x
    assert not within(1.78, 1.60, 2.10, 2.0, 0.05)  # 11% off: a wide interval is no reason to stop
