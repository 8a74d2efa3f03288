"""round_to="auto": candidate widths near the ratio, a chooser decides, multiples of 8 without one."""

from __future__ import annotations

import pytest
from builders import conv_relu_conv

from onnxprune.core.errors import ConfigError
from onnxprune.structured.analysis import analyze
from onnxprune.structured.plan import auto_candidates, make_plan


def test_candidates_never_far_below_the_ask():
    assert auto_candidates(64, 45) == [45, 48]
    assert auto_candidates(512, 358) == [352, 358, 360, 368, 384]  # 352 is within 3% of 512 below
    assert auto_candidates(32, 30) == [30, 32]  # rounding to 8 may reach the full width
    assert auto_candidates(64, 64) == [64]
    assert auto_candidates(6, 3) == [3]  # a group under 16 is never rounded back to its full width
    assert auto_candidates(8, 6) == [6]  # small test and user models must still lose channels by default
    assert auto_candidates(16, 11) == [11, 16]
    for size in (7, 33, 100, 2048):
        for k in range(1, size):
            c = auto_candidates(size, k)
            assert k in c and all(1 <= w <= size for w in c)
            assert min(c) >= k - max(1, int(0.03 * size))


def test_chooser_decides_each_width():
    model = conv_relu_conv(c_mid=40)
    dg = analyze(model)
    asked = []

    def chooser(group, k):
        asked.append((group.size, k))
        return k + 3

    plan = make_plan(model, dg, ratio=0.5, round_to="auto", width_chooser=chooser)
    assert asked == [(40, 20)]
    assert [len(k) for k in plan.keep.values()] == [23]


def test_auto_without_chooser_rounds_up_to_8_and_keeps_min_channels():
    model = conv_relu_conv(c_mid=40)
    dg = analyze(model)
    assert [len(k) for k in make_plan(model, dg, ratio=0.5, round_to="auto").keep.values()] == [24]
    plan = make_plan(model, dg, ratio=0.5, round_to="auto", min_channels=30, width_chooser=lambda g, k: 1)
    assert [len(k) for k in plan.keep.values()] == [30]


def test_bad_round_to_is_refused():
    model = conv_relu_conv()
    with pytest.raises(ConfigError, match="round_to"):
        make_plan(model, analyze(model), ratio=0.5, round_to="fast")
