"""What a benchmark's numbers can be trusted to say: noisy rounds, implausible speedups, a slower model.

Why: on a shared machine one stall can turn a 1.3x speedup into "8.86x against an ideal of 1.40", and a
pruned model with odd channel widths can run slower than the original while its MACs halved. A table
that prints such numbers without comment misleads; these checks say when to distrust a row and what to
do about a slower model. They read ``BenchReport.to_dict()`` rows (also as read back from JSON), so the
console, the JSON report and the Markdown report flag the same rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

#: A model's latency is noisy when its p90 exceeds its p50 by more than this factor.
SPREAD_LIMIT = 1.5
#: A pruned model's speedup is noisy when its per-round speedups (one per A B round) spread wider than
#: this factor between their 10th and 90th percentile.
ROUND_SPREAD_LIMIT = 2.0
#: A speedup above the MAC-ideal speedup by more than this factor is implausible (noise, or caches).
IMPLAUSIBLE_MARGIN = 1.5


def _round_ratios(base: Mapping[str, Any], row: Mapping[str, Any]) -> np.ndarray | None:
    a, b = base.get("times_ms") or [], row.get("times_ms") or []
    if not a or len(a) != len(b):
        return None
    b_arr = np.asarray(b, dtype=np.float64)
    if np.any(b_arr <= 0):
        return None
    return np.asarray(a, dtype=np.float64) / b_arr


def row_flags(row: Mapping[str, Any], base: Mapping[str, Any] | None = None) -> list[str]:
    """Why one result row should not be trusted (empty: nothing found).

    Args:
        row: a ``BenchResult.to_dict()``.
        base: the first model's row of the same provider and batch (for the per-round speedups).
    """
    flags = []
    p50, p90 = float(row.get("p50_ms") or 0.0), float(row.get("p90_ms") or 0.0)
    if p50 > 0 and p90 / p50 > SPREAD_LIMIT:
        flags.append(f"NOISY: p90/p50 {p90 / p50:.2f} > {SPREAD_LIMIT:g}")
    if base is not None and base is not row:
        ratios = _round_ratios(base, row)
        if ratios is not None and ratios.size >= 5:
            lo, hi = (float(v) for v in np.percentile(ratios, [10, 90]))
            if lo > 0 and hi / lo > ROUND_SPREAD_LIMIT:
                flags.append(f"NOISY: speedup varies {lo:.2f}x-{hi:.2f}x across rounds")
    speedup, ideal = row.get("speedup"), row.get("ideal_speedup")
    if speedup is not None and ideal and float(speedup) > float(ideal) * IMPLAUSIBLE_MARGIN:
        flags.append(f"IMPLAUSIBLE: {float(speedup):.2f}x speedup against a MAC ideal of {float(ideal):.2f}x")
    return flags


def bench_flags(results: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``[{model, provider, batch, reasons}]`` for every row with a flag; the first model of a case is its base."""
    bases: dict[tuple[Any, Any], Mapping[str, Any]] = {}
    out = []
    for r in results:
        key = (r.get("provider"), r.get("batch"))
        base = bases.setdefault(key, r)
        reasons = row_flags(r, base)
        if reasons:
            out.append({"model": r.get("model"), "provider": r.get("provider"), "batch": r.get("batch"),
                        "reasons": reasons})
    return out


NOISE_ADVICE = "timings are noisy: rerun with more --runs (e.g. 200) or on a quieter machine"


def _case(v: Any) -> tuple[str, int]:
    return (v["provider"], int(v["batch"])) if isinstance(v, Mapping) else (v.provider, int(v.batch))


def _called_slower(v: Any) -> bool:
    return bool(v["slower"] if isinstance(v, Mapping) else v.slower)


def ties(slow: Sequence[Mapping[str, Any]], verdicts: Sequence[Any] | None) -> bool:
    """Whether every row of ``slow`` (slower by its median) has a spread-aware verdict (a ``SpeedVerdict`` or its
    dict) that does not call it slower: a tie within the verdict's margin, which the never-slower check keeps."""
    by_case = {_case(v): v for v in verdicts or ()}
    found = [by_case.get((r["provider"], int(r["batch"]))) for r in slow]
    return bool(by_case) and all(v is not None and not _called_slower(v) for v in found)


def slower_warning(bench: Mapping[str, Any], *, round_to: int | str | None, mode: str = "structured",
                   verdicts: Sequence[Any] | None = None) -> str | None:
    """A loud one-line warning when a pruned model ran slower than the original, with what helps.

    ``round_to`` is the ``--round-to`` the model was pruned with: without one the hint is ``--round-to 8``
    (odd channel widths often run slower on CPU kernels than the original's); with one, a larger value or a
    lower ratio. In the sparse modes zeros do not make dense kernels faster, so the hint says that.
    ``verdicts``: the never-slower decision's verdicts; where each slower row's verdict calls it a tie (within
    its margin, see :mod:`onnxprune.runtime.speed_verdict`), the line says so instead of "SLOWER", since the
    model was kept as not slower (ShuffleNetV2 x0.5 at 0.5 read 0.97x, 95% 0.967-0.980, and was kept under a
    line that called it SLOWER). ``None`` when no row is slower.
    """
    slow = [r for r in bench.get("results", []) if r.get("slower")]
    if not slow:
        return None
    where = ", ".join(f"{r['provider']} batch {r['batch']}: {float(r['speedup']):.2f}x" for r in slow)
    if mode != "structured":
        hint = "zeroed weights do not speed up dense kernels; use --mode structured for speed"
    elif round_to is None:
        hint = "prune again with --round-to 8 (widths that are multiples of 8 run faster on CPU)"
    elif not isinstance(round_to, int):
        hint = "try --round-to 16 or a lower --ratio"
    else:
        hint = f"try a larger --round-to than {round_to} (e.g. {max(16, 2 * round_to)}) or a lower --ratio"
    if ties(slow, verdicts):
        from onnxprune.runtime.speed_verdict import MARGIN

        return (f"the pruned model is no faster than the original ({where}), within the {MARGIN:.0%} margin that "
                f"counts as a tie, so it was kept; for a speedup, {hint}")
    return f"the pruned model is SLOWER than the original ({where}); {hint}, then compare with --bench"
