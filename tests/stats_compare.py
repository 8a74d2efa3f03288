"""Comparisons of calibration statistics and sensitivity reports computed in other orders (shards, workers)."""

from __future__ import annotations

import numpy as np
import pytest


def same_stats(a, b):
    """Equal to float64 round-off: the same sums added in another order."""
    assert a.samples == b.samples and set(a.channels) == set(b.channels) and set(a.grams) == set(b.grams)
    for name, c in a.channels.items():
        d = b.channels[name]
        assert c.count == d.count
        for f in ("mean", "mean_sq", "mean_abs", "zero_frac"):
            np.testing.assert_allclose(getattr(c, f), getattr(d, f), rtol=1e-12, atol=1e-15)
    for name, g in a.grams.items():
        h = b.grams[name]
        assert g.rows == h.rows
        np.testing.assert_allclose(g.gram, h.gram, rtol=1e-12, atol=1e-9)
        np.testing.assert_allclose(g.col_sum, h.col_sum, rtol=1e-12, atol=1e-9)


def close_reports(a, b):
    """Same groups, ratios, costs and exactness; errors equal to round-off (float64 statistics summed in
    another order, and whole-model anchors in workers against local sub-model anchors: float32)."""
    assert [(g.group, g.ratios, g.kept, g.macs, g.params, g.exact) for g in a.groups] == \
        [(g.group, g.ratios, g.kept, g.macs, g.params, g.exact) for g in b.groups]
    for g, h in zip(a.groups, b.groups, strict=True):
        assert g.errors == pytest.approx(h.errors, rel=1e-6, abs=1e-12)
