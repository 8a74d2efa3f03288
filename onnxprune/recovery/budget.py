"""Budgets: per-group pruning ratios that reach a MACs or parameter target where it hurts least.

Why this module exists: one global ratio over-prunes sensitive layers and under-prunes robust ones. Given
a :class:`~onnxprune.recovery.sensitivity.SensitivityReport`, :func:`allocate` raises group ratios greedily in small
steps (the ratios of the report), always taking the step with the smallest increase in measured error
per MAC (or parameter) saved, until the model keeps at most a fraction ``F`` of its MACs (params). The
target is checked on the *actual* pruned model (``apply_plan`` then :func:`onnxprune.core.stats.model_stats`),
because savings of neighbouring groups do not add up (a layer between two cut groups loses
``1 − (1−a)(1−b)`` of its MACs). With ``max_error``, every step is measured on the calibration set and a
step that would push the output error above ``E`` is refused, so the allocation stops before it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
from onnx import ModelProto

from onnxprune.core.errors import ConfigError
from onnxprune.core.io import load_model
from onnxprune.core.stats import model_stats
from onnxprune.recovery.calibrate import ActivationStats
from onnxprune.recovery.costs import CostModel
from onnxprune.recovery.executor import ScoredOnce, Task
from onnxprune.recovery.sensitivity import (
    DEFAULT_ANCHOR_SAMPLES,
    DEFAULT_RATIOS,
    OutputErrorMeter,
    SensitivityReport,
    SensitivityRun,
    criterion_statistics,
    recovery_stats,
    start_sensitivity,
)
from onnxprune.structured.analysis import DependencyGraph
from onnxprune.structured.plan import PrunePlan, make_plan
from onnxprune.structured.surgery import apply_plan

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Allocation:
    """What :func:`allocate_detailed` chose and measured.

    Attributes:
        ratios: group id → ratio (groups left whole are absent).
        macs / params: of the model pruned with these ratios (batch 1).
        macs_fraction / params_fraction: kept share of the original's MACs / params.
        error: relative L2 output error on the calibration set (``None`` when not measured).
        reached: whether the asked target was met.
        steps: how many greedy steps were taken.
    """

    ratios: dict[int, float]
    macs: int
    params: int
    macs_fraction: float
    params_fraction: float
    error: float | None
    reached: bool
    steps: int
    notes: tuple[str, ...] = field(default_factory=tuple)


def _check_target(name: str, value: float | None) -> None:
    if value is not None and not (0 < value <= 1):
        raise ConfigError(f"{name} must be in (0, 1], got {value}")


class _Candidate:
    """Prunes the model with given group ratios and measures it (cached per ratio set)."""

    def __init__(self, model: ModelProto, dg: DependencyGraph, *, importance: str,
                 statistics: Mapping[str, object] | None, meter: OutputErrorMeter | None, recover: str,
                 rstats: ActivationStats | None, plan_options: Mapping[str, object] | None = None) -> None:
        self.model, self.dg, self.importance, self.statistics = model, dg, importance, statistics
        # The final plan's own options (round_to, min_channels, exclude, seed): a candidate measured without
        # them would keep other widths than the final cut and miss the budget.
        self.plan_options = dict(plan_options or {})
        self.meter, self.recover, self.rstats = meter, recover, rstats
        self._cache: dict[tuple, tuple[int, int, ModelProto, object]] = {}
        self._costs: CostModel | None = None
        # every greedy step plans the whole model: score each group once (the same plans)
        self._criterion = ScoredOnce(importance)

    def plan(self, ratios: Mapping[int, float]) -> PrunePlan:
        return make_plan(self.model, self.dg, ratio=0.0, importance=self._criterion,
                         group_ratios={g: r for g, r in ratios.items() if r > 0}, statistics=self.statistics,
                         **self.plan_options)  # type: ignore[arg-type]

    def cost(self, ratios: Mapping[int, float]) -> tuple[int, int]:
        """``(MACs, params)`` counted without building the model (exact, see :mod:`onnxprune.recovery.costs`)."""
        if self._costs is None:
            self._costs = CostModel(self.model, self.dg)
        found = self._costs.cost(self.plan(ratios).keep)
        return found if found is not None else self.build(ratios)[:2]

    def build(self, ratios: Mapping[int, float]) -> tuple[int, int, ModelProto, object]:
        key = tuple(sorted((g, round(r, 9)) for g, r in ratios.items() if r > 0))
        if key not in self._cache:
            plan = make_plan(self.model, self.dg, ratio=0.0, importance=self._criterion,
                             group_ratios={g: r for g, r in key}, statistics=self.statistics,
                             **self.plan_options)  # type: ignore[arg-type]
            pruned = apply_plan(self.model, plan, dg=self.dg)
            st = model_stats(pruned)
            self._cache = {key: (st.macs, st.params, pruned, plan)}  # keep one model in memory
        return self._cache[key]

    def error(self, ratios: Mapping[int, float]) -> float:
        assert self.meter is not None
        _, _, pruned, plan = self.build(ratios)
        if self.recover != "none":
            from onnxprune.recovery.recover import recover_structured

            pruned = recover_structured(self.model, pruned, self.dg, plan, self.rstats, method=self.recover)
        return self.meter.error(pruned)


def allocate_detailed(
    model: str | os.PathLike[str] | ModelProto,
    dg: DependencyGraph,
    report: SensitivityReport,
    *,
    target_macs: float | None = None,
    target_params: float | None = None,
    max_error: float | None = None,
    calib: str | os.PathLike[str] | Iterable[Mapping[str, np.ndarray]] | None = None,
    importance: str | None = None,
    recover: str | None = None,
    max_samples: int | None = 256,
    plan_options: Mapping[str, object] | None = None,
) -> Allocation:
    """Greedy, sensitivity-guided per-group ratios; see :func:`allocate` (this also returns the measurements)."""
    _check_target("target_macs", target_macs)
    _check_target("target_params", target_params)
    if target_macs is None and target_params is None:
        raise ConfigError("give a budget: target_macs or target_params (fraction of the original to keep)")
    if max_error is not None and not max_error > 0:
        raise ConfigError(f"max_error must be > 0, got {max_error}")
    if max_error is not None and calib is None:
        raise ConfigError("max_error needs calibration data to measure the error; pass --calib data.npz")
    m = load_model(model, check=False)
    importance = importance or report.importance
    recover = recover or report.recover
    base = model_stats(m)
    meter = OutputErrorMeter(m, calib, max_samples=max_samples) if max_error is not None and calib else None
    statistics = criterion_statistics(m, dg, importance, calib)
    rstats = recovery_stats(m, dg, calib, recover) if meter is not None else None
    cand = _Candidate(m, dg, importance=importance, statistics=statistics, meter=meter, recover=recover,
                      rstats=rstats, plan_options=plan_options)

    def fractions(ratios: Mapping[int, float]) -> tuple[float, float]:
        macs, params = cand.cost(ratios)
        return macs / max(base.macs, 1), params / max(base.params, 1)

    def reached(ratios: Mapping[int, float]) -> bool:
        fm, fp = fractions(ratios)
        return (target_macs is None or fm <= target_macs + 1e-12) and (
            target_params is None or fp <= target_params + 1e-12)

    use_params = target_macs is None
    curves = {g.group: g for g in report.groups}
    level = dict.fromkeys(curves, -1)  # index into the curve's ratios; -1 = not cut
    frozen: set[int] = set()
    ratios: dict[int, float] = {}
    notes: list[str] = []
    steps = 0
    error: float | None = None
    while not reached(ratios):
        best: tuple[float, int] | None = None
        for gid, curve in curves.items():
            i = level[gid]
            if gid in frozen or i + 1 >= len(curve.ratios):
                continue
            err_now = curve.errors[i] if i >= 0 else 0.0
            cost_now = (curve.params[i] if use_params else curve.macs[i]) if i >= 0 else (
                base.params if use_params else base.macs)
            cost_next = curve.params[i + 1] if use_params else curve.macs[i + 1]
            saved = cost_now - cost_next
            d_err = max(curve.errors[i + 1] - err_now, 0.0)
            key = d_err / saved if saved > 0 else float("inf")
            if best is None or key < best[0]:
                best = (key, gid)
        if best is None:
            fm, fp = fractions(ratios)
            why = (f"stopped before --max-error {max_error:g}" if frozen else
                   "every group is at its largest ratio")
            notes.append(f"target not reached ({why}): the model keeps {fm:.1%} of MACs and {fp:.1%} of params; "
                         f"relax the target{' or --max-error' if frozen else ' or add larger ratios'}")
            break
        gid = best[1]
        trial = dict(ratios)
        trial[gid] = curves[gid].ratios[level[gid] + 1]
        if max_error is not None:
            e = cand.error(trial)
            if not e <= max_error:  # NaN (unmeasurable) is refused too
                frozen.add(gid)
                notes.append(f"group {gid}: ratio {trial[gid]:g} refused (error {e:.4f} > max_error {max_error:g})")
                continue
            error = e
        ratios = trial
        level[gid] += 1
        steps += 1
    for note in notes:
        log.info(note)
    macs, params = cand.build(ratios)[:2]  # verified on the actual pruned model
    fm, fp = macs / max(base.macs, 1), params / max(base.params, 1)
    ok = (target_macs is None or fm <= target_macs + 1e-12) and (target_params is None or fp <= target_params + 1e-12)
    return Allocation(ratios=ratios, macs=macs, params=params, macs_fraction=fm, params_fraction=fp, error=error,
                      reached=ok, steps=steps, notes=tuple(notes))


def allocate(
    model: str | os.PathLike[str] | ModelProto,
    dg: DependencyGraph,
    sensitivity_report: SensitivityReport,
    *,
    target_macs: float | None = None,
    target_params: float | None = None,
    max_error: float | None = None,
    calib: str | os.PathLike[str] | Iterable[Mapping[str, np.ndarray]] | None = None,
    importance: str | None = None,
    recover: str | None = None,
    plan_options: Mapping[str, object] | None = None,
) -> dict[int, float]:
    """Per-group ratios so the pruned model keeps at most ``target_macs`` of MACs (or ``target_params`` of
    parameters), spending the budget on the least sensitive groups first.

    Args:
        model: the model (not modified).
        dg: its dependency graph.
        sensitivity_report: from :func:`onnxprune.recovery.sensitivity.sensitivity` (its ratios are the steps).
        target_macs: fraction of the original MACs to keep, in ``(0, 1]``.
        target_params: fraction of the original parameters to keep.
        max_error: refuse steps that push the relative L2 output error on ``calib`` above this.
        calib: calibration data (needed with ``max_error``).
        importance / recover: criterion and recovery (default: the report's).
        plan_options: the other ``make_plan`` options the final cut will use (``round_to``, ``min_channels``,
            ``exclude``, ``seed``), so candidates are measured exactly as they will be cut.

    Returns:
        group id → ratio for every group of the report (``0.0`` for groups left whole), for
        ``make_plan(..., group_ratios=...)``; the target is verified on the actual pruned model (a warning
        is logged when it cannot be reached).

    Raises:
        ConfigError: no target, a target outside ``(0, 1]``, or ``max_error`` without data.

    Example:
        >>> ratios = allocate(model, dg, sensitivity(model, "calib.npz"), target_macs=0.5)  # doctest: +SKIP
        >>> plan = make_plan(model, dg, ratio=0.0, group_ratios=ratios)  # doctest: +SKIP
    """
    result = allocate_detailed(model, dg, sensitivity_report, target_macs=target_macs, target_params=target_params,
                               max_error=max_error, calib=calib, importance=importance, recover=recover,
                               plan_options=plan_options)
    if not result.reached:
        for note in result.notes:
            log.warning(note)
    return {g.group: float(result.ratios.get(g.group, 0.0)) for g in sensitivity_report.groups}


def allocate_budget(model: ModelProto, dg: DependencyGraph, config: object) -> dict[int, float]:
    """The pipeline's entry: sensitivity on ``config.calib`` (seeded random inputs when there is none),
    then :func:`allocate` with ``config``'s targets, criterion, recovery and ``max_error``. The sensitivity
    method (``gram`` or ``model``), executor and workers come from ``config`` too.

    Raises:
        ConfigError: as :func:`allocate`.
    """
    calib = getattr(config, "calib", None)
    importance = str(getattr(config, "importance", "l2"))
    recover = str(getattr(config, "recovery", "none"))
    data: object = calib
    if calib is None:
        from onnxprune.runtime.feeds import random_feeds

        dims = dict(getattr(config, "dims", {}) or {})
        data = [random_feeds(model, seed=int(getattr(config, "seed", 0)) + i, batch=16, dims=dims)
                for i in range(4)]
        if recover == "lstsq":
            recover = "none"
    run = start_sensitivity(model, data, ratios=DEFAULT_RATIOS + (0.8, 0.9), importance=importance,  # type: ignore[arg-type]
                            recover=recover, dg=dg, method=str(getattr(config, "sensitivity_method", "gram")),
                            executor=str(getattr(config, "executor", "local")),
                            workers=getattr(config, "workers", None), ray_address=getattr(config, "ray_address", None),
                            anchor_samples=getattr(config, "anchor_samples", DEFAULT_ANCHOR_SAMPLES),
                            defer_anchors=True)
    options = {k: getattr(config, k) for k in ("round_to", "min_channels", "exclude", "seed") if hasattr(config, k)}

    def allocate_run(report: SensitivityReport) -> dict[int, float]:
        return allocate(model, dg, report, target_macs=getattr(config, "target_macs", None),
                        target_params=getattr(config, "target_params", None),
                        max_error=getattr(config, "max_error", None), calib=data,  # type: ignore[arg-type]
                        importance=importance, recover=recover, plan_options=options)

    return refine_allocation(run, allocate_run)


#: Frontier passes (measure the frontier, allocate again) a budget makes at most: each pass measures only points it
#: has not measured, so the passes after the first measure few (see :func:`refine_allocation`).
FRONTIER_PASSES = 4


def frontier(report: SensitivityReport, ratios: Mapping[int, float]) -> tuple[list[Task], list[Task]]:
    """``(read, edge)`` of an allocation: every curve point the greedy read (each group's ratios up to one past
    the chosen one), and the edge of those, each group's chosen ratio (if any) and the next one."""
    read: list[Task] = []
    edge: list[Task] = []
    for g in report.groups:
        r = ratios.get(g.group, 0.0)
        level = g.ratios.index(r) if r in g.ratios else -1
        read += [(g.group, q) for q in g.ratios[:level + 2]]
        edge += [(g.group, q) for q in g.ratios[max(level, 0):level + 2]]
    return read, edge


def refine_allocation(run: SensitivityRun, allocate_run: Callable[[SensitivityReport], dict[int, float]], *,
                      passes: int = FRONTIER_PASSES) -> dict[int, float]:
    """Allocate on ``run``'s curves, measure the allocation's frontier (:func:`frontier`: each group's chosen and
    next ratio) as anchors are, on the anchors' samples (:meth:`SensitivityRun.measure_frontier`, which draws
    each group's curve through its measured points), and allocate again, until the frontier is all measured or
    after ``passes`` passes.

    Why the frontier: the greedy's last choices compare, group by group, the step it took into the chosen ratio
    with the step it did not take out of it; both ends measured, a Gram curve's shape decides only the steps
    well inside the budget. Measuring every point the greedy reads, on every sample (what this did before),
    took most of a full-size ResNet-50's budget: see the README. A deferred group (``defer_anchors``) is
    anchored, and the allocation made again, as soon as the greedy reads one of its (+inf) estimates. The
    target is met on the pruned model whatever the curves (:func:`allocate_detailed` checks it there).
    """
    done = 0
    while True:
        report = run.report()
        ratios = allocate_run(report)
        read, edge = frontier(report, ratios)
        unanchored = {gid for gid, q in read if gid in run.deferred and (gid, q) not in run.exact}
        if unanchored:
            run.anchor(unanchored)
            continue
        if done == passes:
            left = [t for t in edge if t not in run.exact and t not in run.measured]
            if left:
                log.info("budget: %d frontier points still estimated after %d passes", len(left), passes)
            return ratios
        if not run.measure_frontier(edge):
            return ratios
        done += 1
