"""``--target-speedup`` / ``--target-latency``: per-group widths allocated by latency saved per unit of error.

Why here (top level): it joins the latency model (:mod:`onnxprune.speed`, timing in onnxruntime), the
sensitivity machinery (:mod:`onnxprune.recovery`) and planning (:mod:`onnxprune.structured.plan`).

How: every group's steps are the widths a uniform cut at :data:`TARGET_RATIOS` keeps it at (the same
criterion and width choice as the final cut); each step's error comes from a sensitivity report on the
calibration data, or without data from the data-free criterion
(:func:`onnxprune.recovery.latency_budget.data_free_errors`, logged); each plan's latency from the
calibrated layer table. :func:`onnxprune.recovery.latency_budget.allocate_latency` then deepens the cheapest
cuts until the predicted latency meets a goal. The loop is closed on measurements: the chosen plan is timed
whole against the original (alternating rounds, a spread-aware verdict), and while its measured speedup misses
the target by more than :data:`TARGET_TOLERANCE` (twice that when the measured interval holds the target), the goal
handed to the prediction is corrected from the measured plans (:func:`onnxprune.runtime.target_steps.next_goal`,
a secant on predicted against measured speedup) and the allocation runs again, at most :data:`TARGET_CHECKS`
times. The plan measured nearest the target is kept, so the promise rests on a measurement of the plan itself.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

from onnx import ModelProto

from onnxprune.config import PruneConfig
from onnxprune.runtime.target_steps import next_goal, within
from onnxprune.speed import LatencyModel, keep_counts

log = logging.getLogger(__name__)

#: The steps of every group's cut (uniform ratios; the widths they keep per group are the steps).
TARGET_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
#: A plan whose measured speedup is within this share of the target (or whose measured 95% interval holds the
#: target) ends the search.
TARGET_TOLERANCE = 0.05
#: Whole-model checks at most (each times a plan and the original alternately); the plan measured nearest
#: the target is kept.
TARGET_CHECKS = 4


def _errors(model: ModelProto, dg: Any, config: PruneConfig, plans: list[Any]) -> tuple[dict[int, list[float]], str]:
    """Per group, the error of each step; and how it was measured (for the report)."""
    from onnxprune.recovery.latency_budget import data_free_errors

    if config.calib:
        from onnxprune.recovery.sensitivity import start_sensitivity

        run = start_sensitivity(model, config.calib, ratios=TARGET_RATIOS, importance=config.importance,
                                recover=config.recovery if config.recovery in ("none", "bias", "lstsq") else "none",
                                dg=dg, method=config.sensitivity_method, executor=config.executor,
                                workers=config.workers, ray_address=config.ray_address,
                                anchor_samples=config.anchor_samples)
        report = run.report()
        return {g.group: list(g.errors) for g in report.groups}, f"sensitivity on --calib ({report.method})"
    log.info("latency budget: no --calib, so groups are ranked by the data-free criterion (weight energy of the "
             "inputs each cut removes from the layers that read it); pass --calib data.npz to rank them by measured "
             "output error")
    return data_free_errors(model, dg, plans), "data-free (weight energy of dropped inputs)"


def allocate_for_target(model: ModelProto, dg: Any, config: PruneConfig, latency: LatencyModel, *,
                        statistics: Mapping[str, object] | None = None) -> tuple[dict[int, float], dict[str, Any]]:
    """Per-group ratios that meet ``--target-speedup`` (or ``--target-latency``) on the first ``--batches``
    size, chosen by latency saved per unit of sensitivity; and the report's ``latency_target``.

    Raises:
        ConfigError: the target is out of reach (even every group at ratio 0.9 is predicted slower), or the
            latency model could not be calibrated on this model.
    """
    from onnxprune.core.errors import ConfigError
    from onnxprune.recovery.latency_budget import allocate_latency
    from onnxprune.structured.plan import AUTO, make_plan

    batch = int(config.bench_batches[0])
    chooser = latency.choose if config.round_to == AUTO else None
    plans = [make_plan(model, dg, ratio=r, importance=config.importance, global_rank=False, round_to=config.round_to,
                       min_channels=config.min_channels, exclude=config.exclude, seed=config.seed,
                       statistics=statistics, width_chooser=chooser) for r in TARGET_RATIOS]
    for plan in plans:  # every step's widths in the table planned on, so the report predicts from the same one
        latency.table(batch, keep_counts(plan))
    table = latency.table(batch)
    if table is None or table.calibration is None:
        raise ConfigError(f"a latency target needs the model timed at batch {batch}, which failed here; "
                          f"use --ratio instead")
    original_ms = table.calibration.ms(table.layer_sum({}))
    target = config.target_speedup or original_ms / float(config.target_latency or original_ms)
    info: dict[str, Any] = {"target_speedup": round(target, 4), "batch": batch, "original_ms": round(original_ms, 4)}
    if target <= 1.0:
        return {}, {**info, "group_ratios": {}, "predicted_speedup": 1.0}
    errors, how = _errors(model, dg, config, plans)
    sizes = {g.id: g.size for g in dg.prunable_groups if g.id in errors}
    levels = {gid: [(len(p.keep[gid]) if gid in p.keep else sizes[gid], errors[gid][i]) for i, p in enumerate(plans)]
              for gid in sizes}
    base = original_ms
    reach = base / allocate_latency(levels, sizes, table.calibrated_ms, 0.0).predicted_ms  # every step that saves
    checks: list[dict[str, Any]] = []
    tried: dict[tuple[tuple[int, int], ...], dict[str, Any]] = {}
    goal = min(target, reach)
    if reach < target:  # predicted out of reach: the deepest plan is timed before the target is refused
        log.info("latency budget: %.2fx predicted at most, %.2fx asked; timing the deepest plan", reach, target)
    for _ in range(TARGET_CHECKS):
        found = allocate_latency(levels, sizes, table.calibrated_ms, base / goal)
        key = tuple(sorted(found.widths.items()))
        if key in tried:  # the allocation is discrete: a corrected goal that gives a timed plan again ends it
            break
        predicted = base / found.predicted_ms
        verdict = latency.check_plan(batch, found.widths)
        check = {"goal_speedup": round(goal, 4), "predicted_speedup": round(predicted, 4),
                 "measured_speedup": None if verdict is None else round(verdict.speedup, 4),
                 "low": None if verdict is None else round(verdict.low, 4),
                 "high": None if verdict is None else round(verdict.high, 4)}
        checks.append(check)
        tried[key] = {"found": found, "check": check, "verdict": verdict}
        if verdict is None:
            break
        if within(verdict.speedup, verdict.low, verdict.high, target, TARGET_TOLERANCE):
            break
        pairs = [(c["predicted_speedup"], c["measured_speedup"]) for c in checks]
        new_goal = min(next_goal(pairs, target), reach)
        if abs(new_goal / goal - 1) < 1e-6:  # out of reach, or no step left to take
            break
        log.info("latency budget: plan predicted %.2fx measured %.2fx for a %.2fx target; asking %.2fx of the "
                 "prediction next", predicted, verdict.speedup, target, new_goal)
        goal = new_goal
    timed = [t for t in tried.values() if t["verdict"] is not None]
    # a plan that cuts nothing is no answer to a speedup target: it is kept only when nothing else was timed
    timed = [t for t in timed if t["found"].levels] or timed
    if timed:  # the plan measured nearest the target (in ratio) is kept
        pick = min(timed, key=lambda t: abs(math.log(t["verdict"].speedup / target)))
    else:
        pick = next(reversed(tried.values()))
    found, verdict = pick["found"], pick["verdict"]
    if verdict is not None and verdict.speedup < target * (1 - TARGET_TOLERANCE) and reach < target \
            and not within(verdict.speedup, verdict.low, verdict.high, target, TARGET_TOLERANCE):
        raise ConfigError(f"a {target:.2f}x speedup is out of reach: cutting every group to ratio "
                          f"{TARGET_RATIOS[-1]} is predicted at {reach:.2f}x and timed at {verdict.speedup:.2f}x "
                          f"(batch {batch}); ask for less")
    if verdict is None and reach < target:
        raise ConfigError(f"a {target:.2f}x speedup is out of reach: cutting every group to ratio "
                          f"{TARGET_RATIOS[-1]} is predicted at {reach:.2f}x (batch {batch}); ask for less")
    ratios = {gid: float(TARGET_RATIOS[i]) for gid, i in found.levels.items()}
    kept = {str(g): w for g, w in sorted(found.widths.items())}
    return ratios, {**info, "allocation": how, "group_ratios": {str(g): r for g, r in sorted(ratios.items())},
                    "widths": kept, "predicted_speedup": pick["check"]["predicted_speedup"],
                    "measured_speedup": pick["check"]["measured_speedup"],
                    "measured_interval": None if verdict is None else [pick["check"]["low"], pick["check"]["high"]],
                    "checks": checks, "error_estimate": round(found.error, 6)}


def uniform_keep(model: ModelProto, dg: Any, config: PruneConfig, ratio: float, latency: LatencyModel,
                 statistics: Mapping[str, object] | None = None) -> dict[int, int]:
    """Kept widths of a uniform cut at ``ratio`` (the comparison a latency budget is judged against)."""
    from onnxprune.structured.plan import AUTO, make_plan

    plan = make_plan(model, dg, ratio=ratio, importance=config.importance, global_rank=config.global_rank,
                     round_to=config.round_to, min_channels=config.min_channels, exclude=config.exclude,
                     seed=config.seed, statistics=statistics,
                     width_chooser=latency.choose if config.round_to == AUTO else None)
    return keep_counts(plan)


#: A latency budget scans ratios on this grid, then bisects inside the bracket found (0.05 / 2**3).
TARGET_GRID = 0.05
TARGET_STEPS = 3
MAX_TARGET_RATIO = 0.95


def original_latency_ms(model: ModelProto, config: PruneConfig, batch: int) -> float:
    """The original's p50 latency at ``batch`` on the first provider (10 runs after 2, no memory probe)."""
    from onnxprune.runtime.bench import benchmark

    report = benchmark([model], names=["original"], providers=config.providers[:1], batches=(batch,), runs=10,
                       warmup=2, threads=config.threads, dims=config.dims, memory=False)
    return float(report.results[0].p50_ms)


def ratio_for_target(model: ModelProto, dg: Any, config: PruneConfig, latency: LatencyModel, *,
                     statistics: Mapping[str, object] | None = None,
                     original_ms: float | None = None) -> tuple[float, dict[str, Any]]:
    """The lowest uniform ratio whose predicted speedup reaches ``--target-speedup`` (or the speedup that
    ``--target-latency`` asks of the original's measured latency) on the first ``--batches`` size.

    Every candidate ratio is planned as the final cut will be (criterion, widths chosen by latency), and its
    speedup predicted from the latency table with the original's measured latency (``original_ms``, measured
    when not given). Groups are cut uniformly: the pipeline allocates by sensitivity instead
    (:func:`onnxprune.speed_target.allocate_for_target`); this is the uniform cut it is compared with.

    Raises:
        ConfigError: the target is out of reach even at ratio 0.95.
    """
    from onnxprune.core.errors import ConfigError

    batch = int(config.bench_batches[0])
    if original_ms is None:
        original_ms = original_latency_ms(model, config, batch)
    target = config.target_speedup or original_ms / float(config.target_latency or original_ms)

    def predicted(ratio: float) -> float:
        keep = uniform_keep(model, dg, config, ratio, latency, statistics)
        return latency.predict_speedup(keep, {batch: original_ms}).get(batch, 1.0)

    info: dict[str, Any] = {"target_speedup": round(target, 4), "batch": batch,
                            "original_ms": round(original_ms, 4)}
    if target <= 1.0:
        return 0.0, {**info, "ratio": 0.0, "predicted_speedup": 1.0}
    best = predicted(MAX_TARGET_RATIO)
    if best < target:
        raise ConfigError(f"a {target:.2f}x speedup is out of reach: even ratio {MAX_TARGET_RATIO} is predicted "
                          f"at {best:.2f}x (batch {batch}); ask for less")
    # Predictions of tiny layers are noisy and need not rise with the ratio: take the lowest grid ratio from
    # which every higher one reaches the target, then refine inside that bracket.
    grid = [round(TARGET_GRID * i, 4) for i in range(1, int(MAX_TARGET_RATIO / TARGET_GRID) + 1)]
    hi = MAX_TARGET_RATIO
    for r in reversed(grid):
        if predicted(r) < target:
            break
        hi = r
    lo = max(0.0, hi - TARGET_GRID)
    for _ in range(TARGET_STEPS):
        mid = (lo + hi) / 2
        if predicted(mid) >= target:
            hi = mid
        else:
            lo = mid
    ratio = round(hi, 4)
    return ratio, {**info, "ratio": ratio, "predicted_speedup": round(predicted(ratio), 4)}
