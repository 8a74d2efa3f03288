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


#: A confirmation's decision reads the 5th percentile of each model's runs as its unloaded speed: load
#: only ever adds time, so the fastest runs show what the kernels cost.
FAST_PERCENTILE = 5


@dataclass(frozen=True)
class Confirmation:
    """A second, longer look at a provider × batch the first verdict called slower (see :func:`confirm_verdict`).

    Attributes:
        speedup, low, high: median and 95% interval of the per-block speedups (original / pruned).
        halves: median per-block speedup of the first and the second half of the rounds.
        fastest: the original's 5th-percentile run over the pruned model's.
        rounds: rounds timed (each times both models once).
    """

    provider: str
    batch: int
    speedup: float
    low: float
    high: float
    halves: tuple[float, float]
    fastest: float
    rounds: int
    seconds: float = 0.0

    @property
    def slower(self) -> bool:
        """Slower beyond the spread, in both halves of the rounds, and in the fastest runs (see the function)."""
        bound = 1.0 - MARGIN
        return self.high < bound and max(self.halves) < bound and self.fastest < bound

    def to_dict(self) -> dict[str, object]:
        """JSON-able dict."""
        return {"provider": self.provider, "batch": self.batch, "speedup": round(self.speedup, 4),
                "low": round(self.low, 4), "high": round(self.high, 4),
                "halves": [round(h, 4) for h in self.halves], "fastest": round(self.fastest, 4),
                "rounds": self.rounds, "seconds": round(self.seconds, 3), "slower": self.slower}


def confirm_verdict(provider: str, batch: int, base_ms: Sequence[float], pruned_ms: Sequence[float],
                    seconds: float = 0.0) -> Confirmation:
    """Decide again on rounds timed in alternating pair order (pruned, original | original, pruned | ...).

    Why a second decision: the first benchmark always runs the original first in a round, and its interval
    assumes every round saw one load for both runs. On a busy machine (CI, a shared server) load changes
    within seconds, and a burst that lands on one model's runs for a stretch of rounds read as a 0.88x
    slowdown of a model that runs faster alone. Here:

    * consecutive rounds form blocks ``P O | O P``: a block's speedup (sum of the original's two runs over
      the pruned model's two) cancels a load that rises or falls linearly across the block and any cost of
      running second;
    * the median block speedup's 95% interval must lie below ``1 - MARGIN`` (as in :func:`speed_verdict`);
    * so must the median of each half of the blocks: a genuine slowdown holds all along, a burst does not;
    * and so must the ratio of the two models' fastest runs (5th percentile): load only adds time, so a
      pruned model whose fastest runs match the original's is not slower.

    A model that is slower (the kernels cost more) fails all three tests on any machine; load must fool all
    three at once to invent a slowdown.

    Raises:
        ValueError: the two lists differ in length or hold fewer than 4 rounds.
    """
    if len(base_ms) != len(pruned_ms) or len(base_ms) < 4:
        raise ValueError("a confirmation needs at least 4 rounds timing both models")
    b = np.asarray(base_ms, dtype=np.float64)
    p = np.maximum(np.asarray(pruned_ms, dtype=np.float64), 1e-12)
    n = b.size - b.size % 2
    blocks = (b[:n:2] + b[1:n:2]) / (p[:n:2] + p[1:n:2])
    mid, lo, hi = median_interval(list(blocks))
    half = blocks.size // 2
    halves = (float(np.median(blocks[:half])), float(np.median(blocks[half:])))
    fastest = float(np.percentile(b, FAST_PERCENTILE) / np.percentile(p, FAST_PERCENTILE))
    return Confirmation(provider, int(batch), mid, lo, hi, halves, fastest, int(b.size), float(seconds))
