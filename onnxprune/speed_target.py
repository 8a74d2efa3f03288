"""``--target-speedup`` / ``--target-latency``: per-group widths allocated by latency saved per unit of error.

Why here (top level): it joins the latency model (:mod:`onnxprune.speed`, timing in onnxruntime), the
sensitivity machinery (:mod:`onnxprune.recovery`) and planning (:mod:`onnxprune.structured.plan`).

How: every group's steps are the widths a uniform cut at :data:`TARGET_RATIOS` keeps it at (the same
criterion and width choice as the final cut); each step's error comes from a sensitivity report on the
calibration data, or without data from the data-free criterion
(:func:`onnxprune.recovery.latency_budget.data_free_errors`, logged); each plan's latency from the
calibrated layer table. :func:`onnxprune.recovery.latency_budget.allocate_latency` then deepens the cheapest
cuts until the predicted latency meets the target. The chosen plan is then timed whole against the original;
that measurement joins the calibration and, when it misses the target by more than
:data:`TARGET_TOLERANCE`, the allocation runs again on the corrected predictions (at most
:data:`TARGET_CHECKS` times), so the promise rests on a measurement of the plan itself.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from onnx import ModelProto

from onnxprune.config import PruneConfig
from onnxprune.speed import LatencyModel, keep_counts

log = logging.getLogger(__name__)

#: The steps of every group's cut (uniform ratios; the widths they keep per group are the steps).
TARGET_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
#: A plan whose measured speedup is within this share of the target is kept without another allocation.
TARGET_TOLERANCE = 0.05
#: Whole-model checks (each times the plan and the original alternately) before the last plan is kept.
TARGET_CHECKS = 2


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
    checks: list[dict[str, Any]] = []
    while True:
        table = latency.table(batch)
        assert table is not None and table.calibration is not None
        base = table.calibration.ms(table.layer_sum({}))
        goal = base / target
        found = allocate_latency(levels, sizes, table.calibrated_ms, goal)
        if not found.reached and not checks:  # predicted out of reach: time the deepest plan, then decide
            measured = latency.add_measurement(batch, found.widths)
            checks.append({"predicted_speedup": round(base / found.predicted_ms, 4),
                           "measured_speedup": None if measured is None else round(measured, 4)})
            if measured is not None and measured >= target:
                continue
        if not found.reached:
            timed = checks[-1]["measured_speedup"] if checks else None
            raise ConfigError(f"a {target:.2f}x speedup is out of reach: cutting every group to ratio "
                              f"{TARGET_RATIOS[-1]} is predicted at {base / found.predicted_ms:.2f}x"
                              f"{f' and timed at {timed:.2f}x' if timed is not None else ''} (batch {batch}); "
                              f"ask for less")
        predicted = base / found.predicted_ms
        measured = latency.add_measurement(batch, found.widths)
        checks.append({"predicted_speedup": round(predicted, 4),
                       "measured_speedup": None if measured is None else round(measured, 4)})
        if measured is None or abs(measured / target - 1) <= TARGET_TOLERANCE or len(checks) >= TARGET_CHECKS:
            break
        log.info("latency budget: plan measured at %.2fx for a %.2fx target; allocating again with the "
                 "measurement in the calibration", measured, target)
    ratios = {gid: float(TARGET_RATIOS[i]) for gid, i in found.levels.items()}
    kept = {str(g): w for g, w in sorted(found.widths.items())}
    return ratios, {**info, "allocation": how, "group_ratios": {str(g): r for g, r in sorted(ratios.items())},
                    "widths": kept, "predicted_speedup": round(predicted, 4),
                    "measured_speedup": checks[-1]["measured_speedup"], "checks": checks,
                    "error_estimate": round(found.error, 6)}


def uniform_keep(model: ModelProto, dg: Any, config: PruneConfig, ratio: float, latency: LatencyModel,
                 statistics: Mapping[str, object] | None = None) -> dict[int, int]:
    """Kept widths of a uniform cut at ``ratio`` (the comparison a latency budget is judged against)."""
    from onnxprune.structured.plan import AUTO, make_plan

    plan = make_plan(model, dg, ratio=ratio, importance=config.importance, round_to=config.round_to,
                     min_channels=config.min_channels, exclude=config.exclude, seed=config.seed, statistics=statistics,
                     width_chooser=latency.choose if config.round_to == AUTO else None)
    return keep_counts(plan)
