"""Latency budgets: per-group widths that reach a latency target where they hurt least.

Why this module exists: cutting every group by the same ratio spends the error budget blindly. One group's
channels may cost much time and carry little error (cut it deeply), another's the opposite (leave it). The
MAC budget (:mod:`onnxprune.recovery.budget`) trades MACs for error; MACs are not time, so this trades
*predicted latency* for error: starting from the full model, it repeatedly deepens the cut of the group
whose next step saves the most milliseconds per unit of added error, until the predicted latency meets the
target. Time comes from a calibrated layer table (:mod:`onnxprune.runtime.prediction`) passed in as a
function, error from a sensitivity report or, without calibration data, from :func:`data_free_errors`.
Pure logic on data: the caller measures.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from onnx import ModelProto

from onnxprune.core.ir import GraphIndex
from onnxprune.structured.analysis import DependencyGraph

log = logging.getLogger(__name__)

#: ``(kept width, error)`` per step of one group, in the order the cut deepens (widths non-increasing).
Levels = Sequence[tuple[int, float]]


@dataclass(frozen=True)
class LatencyAllocation:
    """What :func:`allocate_latency` chose.

    Attributes:
        levels: group id -> index of the chosen step in its levels (groups left whole are absent).
        widths: group id -> kept width (groups left whole are absent).
        predicted_ms: predicted latency of the chosen widths.
        error: the ranking's estimate of the damage: the root of the summed squared errors of the chosen steps.
        reached: whether the predicted latency meets the target.
        steps: greedy steps taken.
    """

    levels: dict[int, int]
    widths: dict[int, int]
    predicted_ms: float
    error: float
    reached: bool
    steps: int
    notes: tuple[str, ...] = field(default_factory=tuple)


def allocate_latency(levels: Mapping[int, Levels], sizes: Mapping[int, int],
                     predict_ms: Callable[[Mapping[int, int]], float], target_ms: float) -> LatencyAllocation:
    """Greedy: deepen, one step at a time, the group whose next step costs the least error per millisecond
    saved, until ``predict_ms(widths) <= target_ms``.

    Args:
        levels: per group, its steps ``(width, error)``: the relative L2 error of that group cut alone, as a
            sensitivity report measures it. Errors of different groups are added in squares: independent
            perturbations add their energies, and adding the errors themselves (concave in the energy)
            would favour cutting a few groups very deeply (on ResNet-50 it cut 7 groups by 90% and doubled
            the output error of a uniform cut at the same latency).
        sizes: full width per group.
        predict_ms: predicted latency of a ``{group: width}`` plan (groups absent are whole).
        target_ms: the latency to reach.

    Returns:
        A :class:`LatencyAllocation`; ``reached`` False (with a note) when every step was taken or none saves
        time.
    """
    chosen: dict[int, int] = {}
    widths: dict[int, int] = {}
    now = predict_ms(widths)
    steps = 0
    notes: list[str] = []

    def err(gid: int) -> float:  # errors of different groups add in energy (squares), see the docstring
        return float(levels[gid][chosen[gid]][1]) ** 2 if gid in chosen else 0.0

    while now > target_ms:
        best: tuple[float, float, int, int] | None = None  # (error per ms, -ms saved, group, next level)
        for gid, steps_of in sorted(levels.items()):
            i = chosen.get(gid, -1) + 1
            width_now = widths.get(gid, sizes[gid])
            while i < len(steps_of) and steps_of[i][0] >= width_now:  # a step that keeps the width is free
                i += 1
            saved = 0.0
            # A step that saves no time is passed over for the next one that does: latency is not monotone in
            # width (digits CNN: 16 of 32 channels ran 2.4x faster than the original, odd widths slower), and
            # a group stuck behind such a step could never reach its fast widths.
            while i < len(steps_of):
                saved = now - predict_ms({**widths, gid: int(steps_of[i][0])})
                if saved > 0:
                    break
                i += 1
            if i >= len(steps_of):
                continue
            d_err = max(float(steps_of[i][1]) ** 2 - err(gid), 0.0)
            key = (d_err / saved, -saved, gid, i)
            if best is None or key < best:
                best = key
        if best is None:
            notes.append(f"latency target not reached: the predicted latency stops at {now:.4g} ms "
                         f"(target {target_ms:.4g} ms) with every step that saves time taken")
            break
        _, _, gid, i = best
        chosen[gid] = i
        widths[gid] = int(levels[gid][i][0])
        now = predict_ms(widths)
        steps += 1
    for note in notes:
        log.info(note)
    total = math.sqrt(sum(err(g) for g in chosen))
    return LatencyAllocation(dict(chosen), dict(widths), now, total, now <= target_ms, steps, tuple(notes))


def data_free_errors(model: ModelProto, dg: DependencyGraph, plans: Sequence[object]) -> dict[int, list[float]]:
    """Per group, for each plan: the relative weight energy its cut removes from the layers that read it.

    The data-free stand-in for a measured sensitivity (no calibration data): a group cut at a plan drops
    input channels of its sink layers (the Conv/Gemm/MatMul that read it), and with white inputs the output
    error of such a layer is the energy of the dropped weight columns. Per group, the root of the summed
    relative energies of its sinks (``sqrt(sum_s dropped_s / total_s)``): each reader is perturbed on its own
    and the perturbations add in energy, so a residual stream read by seven blocks weighs seven times one
    block's inner channels (pooled into one ratio, all groups of a random-weight ResNet-50 had the same
    curve, and the allocation cut the streams by 90%). ``0`` where the plan keeps the group whole and ``1``
    where a group has no weighted sink (nothing to weigh it by: it then goes last).
    """
    idx = GraphIndex(model)
    out: dict[int, list[float]] = {}
    for g in dg.prunable_groups:
        sinks = []
        for cut in g.cuts:
            if cut.role != "sink":
                continue
            value = idx.const_value(cut.tensor)
            if value is not None and value.dtype.kind == "f":
                sinks.append((cut, np.asarray(value, dtype=np.float64)))
        errors = []
        for plan in plans:
            keep = getattr(plan, "keep", {}).get(g.id)
            if keep is None or len(keep) >= g.size:
                errors.append(0.0)
                continue
            if not sinks:
                errors.append(1.0)
                continue
            dropped = np.setdiff1d(np.arange(g.size, dtype=np.int64), np.asarray(keep, dtype=np.int64))
            energy = 0.0
            for cut, w in sinks:
                total = float(np.sum(w * w))
                lost = float(np.sum(np.take(w, cut.positions(dropped), axis=cut.axis) ** 2))
                energy += lost / total if total > 0 else 1.0
            errors.append(math.sqrt(energy))
        out[g.id] = errors
    return out
