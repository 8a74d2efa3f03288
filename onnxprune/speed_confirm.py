"""Confirm a slower verdict before retrying or refusing: a busy machine must not invent a slowdown.

Why: the benchmark's verdict is spread-aware, but its interval assumes both runs of a round saw the same
load. Beside a test suite, ``tools/real_exports_table.py`` had keras_small_cnn refused at 0.88x (95%
0.86-0.91), a model that runs faster than the original alone. So a provider × batch that the first verdict
calls slower is timed again, pair order alternating, for at most :data:`CONFIRM_SET_S` seconds, and decided
by :func:`onnxprune.runtime.speed_verdict.confirm_verdict`; only a slowdown that holds there is retried or
refused. A genuinely slower model (its kernels cost more) is slower in every round and in its fastest runs,
so it is still refused; the confirmation costs time only when the first verdict says slower.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

from onnx import ModelProto

from onnxprune.config import PruneConfig
from onnxprune.speed import SpeedDecision, speed_decision

log = logging.getLogger(__name__)

#: Rounds of a confirmation (each times both models once): at most ``CONFIRM_ROUNDS``; after
#: ``CONFIRM_SET_S`` seconds once ``CONFIRM_MIN_ROUNDS`` were made.
CONFIRM_ROUNDS = 200
CONFIRM_MIN_ROUNDS = 20
CONFIRM_SET_S = 3.0

Timer = Callable[[Any, ModelProto, PruneConfig], Mapping[str, Any]]


def _times(bench: Mapping[str, Any], provider: str, batch: int) -> tuple[list[float], list[float]] | None:
    rows = {r["model"]: r for r in bench.get("results", []) if r.get("provider") == provider
            and int(r.get("batch", -1)) == batch}
    a, b = rows.get("original"), rows.get("pruned")
    if not a or not b or len(a.get("times_ms") or []) != len(b.get("times_ms") or []):
        return None
    return list(a["times_ms"]), list(b["times_ms"])


def confirm(baseline: str | os.PathLike[str] | ModelProto, pruned: ModelProto, verdicts: Any,
            config: PruneConfig, *, timer: Timer | None = None) -> list[Any]:
    """A :class:`~onnxprune.runtime.speed_verdict.Confirmation` per slower verdict: timed in alternating pair
    order on onnxruntime, or with ``timer`` (the pipeline's benchmark function, for tests) at that batch."""
    from onnxprune.runtime.speed_verdict import confirm_verdict

    out = []
    for v in verdicts:
        if not v.slower:
            continue
        if timer is None:
            from onnxprune.runtime.paired_timing import time_pair

            base, mine, seconds = time_pair(baseline, pruned, provider=v.provider, batch=v.batch,
                                            threads=config.threads, dims=config.dims,
                                            rounds=CONFIRM_ROUNDS, min_rounds=CONFIRM_MIN_ROUNDS,
                                            set_seconds=CONFIRM_SET_S)
        else:
            got = _times(timer(baseline, pruned, config.with_(bench_batches=(v.batch,))), v.provider, v.batch)
            if got is None or len(got[0]) < 4:
                continue
            (base, mine), seconds = got, 0.0
        c = confirm_verdict(v.provider, v.batch, base, mine, seconds)
        log.info("confirmation of %s batch %d: %.2fx (95%% %.2f-%.2f), halves %.2fx/%.2fx, fastest runs %.2fx, "
                 "%d rounds in %.2g s: %s", v.provider, v.batch, c.speedup, c.low, c.high, *c.halves, c.fastest,
                 c.rounds, c.seconds, "slower" if c.slower else "not slower")
        out.append(c)
    return out


def confirmed_decision(baseline: str | os.PathLike[str] | ModelProto, pruned: ModelProto,
                       bench: Mapping[str, Any], config: PruneConfig, *, retried: bool,
                       timer: Timer | None = None) -> tuple[SpeedDecision, list[dict[str, Any]]]:
    """:func:`onnxprune.speed.speed_decision` on the confirmed slowdowns, and the confirmations' dicts.

    A structured result the first verdict calls slower is timed again (see the module doc); when no slowdown
    holds, it is kept with a note saying what the first timing read and what the confirmation measured.
    """
    first = speed_decision(bench, config, retried=retried)
    if first.message is None or config.mode != "structured":
        return first, []
    confirmations = confirm(baseline, pruned, first.verdicts, config, timer=timer)
    if not confirmations:  # nothing could be timed again: the first verdict stands
        return first, []
    dicts = [c.to_dict() for c in confirmations]
    decision = speed_decision(bench, config, retried=retried, confirmed=confirmations)
    if decision.message is None:
        read = ", ".join(f"{v.provider} batch {v.batch}: {v.speedup:.2f}x" for v in first.verdicts if v.slower)
        again = ", ".join(f"{c.speedup:.2f}x (95% {c.low:.2f}-{c.high:.2f}, fastest runs {c.fastest:.2f}x, "
                          f"{c.rounds} rounds)" for c in confirmations)
        decision = SpeedDecision(decision.verdicts,
                                 f"timings were noisy: the first benchmark read the pruned model as slower ({read}), "
                                 f"but timed again in alternating order it is not ({again}); kept")
    return decision, dicts
