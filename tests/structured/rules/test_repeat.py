"""Repeat rules: Expand (a carried axis is identity, its target entry rewritten) and Tile (a tiled channel
axis holds every channel once per repeat)."""

from __future__ import annotations

import numpy as np
import pytest
from oracle_check import check_prune, first_group, prove_random_cuts, sandwich


@pytest.mark.parametrize("target", [[1, 6, 5, 5], [6, 1, 1], [1, 1, 5, 5], [2, 6, 5, 5]])
def test_expand_carries_channels_and_rewrites_its_target(target: list[int]) -> None:
    def middle(g, y):
        e = g.op("Expand", [y, g.const(np.array(target, np.int64))])
        return e if target[0] == 1 or len(target) < 4 else g.op("ReduceMean", [e], axes=[0], keepdims=1)

    model = sandwich(middle)
    dg, g = first_group(model)
    assert g.prunable, dg.explain(g.id)
    prove_random_cuts(model)


def test_tile_of_the_channel_axis_keeps_each_channel_in_every_copy() -> None:
    def middle(g, y):
        return g.op("Tile", [y, g.const(np.array([1, 2, 1, 1], np.int64))])

    model = sandwich(middle, c_mid=12)
    dg, g = first_group(model)
    assert g.prunable and g.size == 6 and len(g.sinks[0].positions(np.array([0]))) == 2
    prove_random_cuts(model)
    check_prune(model, ratio=0.5)
