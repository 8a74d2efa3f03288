"""Is the pruned model slower than the original? A decision that accounts for the measured spread.

Why: on a shared machine a single comparison of medians flips with the load: a 2% noise swing must not
refuse a good model, and a 10% slowdown must not pass because one round stalled. The benchmark times
both models alternately, so round ``i`` of each saw the same load; the per-round speedups
(original / pruned) are compared with a distribution-free confidence interval of their median. The
model is *slower* only when the whole interval lies below 0.97 (a slowdown the spread cannot explain),
*faster* when it lies above 1, and *unclear* otherwise (not refused; the report says so); both beyond a
margin of 3%.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: z of the two-sided 95% interval of the median.
Z95 = 1.96
#: Slower means slower by more than this share: two models of equal speed would otherwise be called slower
#: in 2.5% of comparisons (the interval's tail), and a 1-2% difference is below what a shared machine
#: measures reliably.
MARGIN = 0.03


@dataclass(frozen=True)
class SpeedVerdict:
    """One provider × batch: the median per-round speedup, its 95% interval, and the decision."""

    provider: str
    batch: int
    speedup: float
    low: float
    high: float

    @property
    def slower(self) -> bool:
        """The pruned model is slower beyond the measured spread (and the margin)."""
        return self.high < 1.0 - MARGIN

    @property
    def faster(self) -> bool:
        return self.low > 1.0 + MARGIN

    def to_dict(self) -> dict[str, object]:
        """JSON-able dict."""
        return {"provider": self.provider, "batch": self.batch, "speedup": round(self.speedup, 4),
                "low": round(self.low, 4), "high": round(self.high, 4), "slower": self.slower,
                "faster": self.faster}


def median_interval(values: Sequence[float], z: float = Z95) -> tuple[float, float, float]:
    """Median and its distribution-free interval (order statistics ``n/2 ± z·√n/2``)."""
    v = np.sort(np.asarray(values, dtype=np.float64))
    n = v.size
    if n == 0:
        raise ValueError("no values")
    half = z * math.sqrt(n) / 2
    lo = max(0, int(math.floor(n / 2 - half)))
    hi = min(n - 1, int(math.ceil(n / 2 + half)) - 1)
    return float(np.median(v)), float(v[lo]), float(v[max(hi, lo)])


def speed_verdict(provider: str, batch: int, base_ms: Sequence[float], pruned_ms: Sequence[float]) -> SpeedVerdict:
    """Compare two models timed in the same rounds (``times_ms`` of one benchmark case).

    Raises:
        ValueError: the two lists differ in length or are empty.
    """
    if len(base_ms) != len(pruned_ms) or not base_ms:
        raise ValueError("the two models were not timed in the same rounds")
    b = np.asarray(base_ms, dtype=np.float64)
    p = np.maximum(np.asarray(pruned_ms, dtype=np.float64), 1e-12)
    mid, lo, hi = median_interval(list(b / p))
    return SpeedVerdict(provider, int(batch), mid, lo, hi)


def bench_verdicts(bench: Mapping[str, Any], base: str = "original", pruned: str = "pruned") -> list[SpeedVerdict]:
    """Verdicts for every provider × batch of a ``BenchReport.to_dict()`` holding both models."""
    rows = {(r["model"], r["provider"], r["batch"]): r for r in bench.get("results", [])}
    out = []
    for (model, provider, batch), row in rows.items():
        other = rows.get((pruned, provider, batch))
        if model != base or other is None:
            continue
        if row.get("times_ms") and len(row["times_ms"]) == len(other.get("times_ms") or []):
            out.append(speed_verdict(provider, batch, row["times_ms"], other["times_ms"]))
    return out
