"""Sensitivity analysis: how much does pruning each channel group alone hurt the model?

Why this module exists: layers are not equally robust. Pruning the first convolution by 30% may cost far
more accuracy than pruning a wide middle layer by 70%. Measuring each prunable group alone, at a few
ratios, ranks the groups (least sensitive first) and gives the per-group curves that
:mod:`onnxprune.recovery.budget` uses to spend a MACs or parameter budget where it hurts least.

The error of a candidate is the **relative L2 error** of the model outputs against the original on the
calibration set: ``‖y − y_ref‖₂ / ‖y_ref‖₂`` over every float output, all samples together. Accuracy on
labelled evaluation data is reported as well when given. The reference outputs are computed once and kept
(calibration sets are small; use ``max_samples`` to bound memory).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from onnx import ModelProto

from onnxprune.core.errors import ConfigError
from onnxprune.core.io import load_model
from onnxprune.core.progress import progress
from onnxprune.core.stats import model_stats
from onnxprune.recovery.calibrate import ActivationStats, collect_stats, iter_feeds
from onnxprune.runtime.feeds import check_finite
from onnxprune.structured.analysis import DependencyGraph, analyze
from onnxprune.structured.plan import PrunePlan, make_plan
from onnxprune.structured.surgery import apply_plan

log = logging.getLogger(__name__)

DEFAULT_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
METRIC = "relative_l2"

@dataclass(frozen=True)
class GroupSensitivity:
    """One group's curve: what pruning it alone at each ratio does.

    Attributes:
        group: group id.
        size: number of channels.
        source: the first node producing the group's channels (how tables name the group).
        ratios: the ratios tried (ascending).
        kept: channels kept at each ratio.
        errors: relative L2 output error vs the original on the calibration set, per ratio.
        accuracies: top-1 on the evaluation data per ratio (``None`` without eval data).
        macs: MACs (batch 1) of the model with only this group pruned, per ratio.
        params: parameters of that model, per ratio.
    """

    group: int
    size: int
    source: str
    ratios: tuple[float, ...]
    kept: tuple[int, ...]
    errors: tuple[float, ...]
    accuracies: tuple[float | None, ...]
    macs: tuple[int, ...]
    params: tuple[int, ...]

    @property
    def score(self) -> float:
        """Mean error over the ratios: the ranking key (lower = less sensitive)."""
        return float(np.mean(self.errors)) if self.errors else 0.0


@dataclass(frozen=True)
class SensitivityReport:
    """The result of :func:`sensitivity`.

    Attributes:
        metric: ``"relative_l2"`` (see the module doc).
        ratios: ratios tried.
        importance: criterion that chose the channels.
        recover: recovery applied to each candidate before measuring.
        samples: calibration samples used.
        macs / params: of the original model.
        accuracy: top-1 of the original model on the evaluation data, if given.
        groups: one :class:`GroupSensitivity` per prunable group, in group-id order.
    """

    metric: str
    ratios: tuple[float, ...]
    importance: str
    recover: str
    samples: int
    macs: int
    params: int
    accuracy: float | None
    groups: tuple[GroupSensitivity, ...]

    def ranked(self) -> list[GroupSensitivity]:
        """Groups from least to most sensitive (mean error over the ratios, then id)."""
        return sorted(self.groups, key=lambda g: (g.score, g.group))

    def group(self, group_id: int) -> GroupSensitivity:
        """The curve of one group; ConfigError when it was not measured."""
        for g in self.groups:
            if g.group == group_id:
                return g
        raise ConfigError(f"group {group_id} is not in the sensitivity report (not prunable or excluded)")

    def to_dict(self) -> dict[str, object]:
        """JSON-able form (groups ranked least sensitive first)."""
        out = asdict(self)
        out["groups"] = [asdict(g) | {"score": g.score} for g in self.ranked()]
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def table(self) -> str:
        """A Markdown table: one row per group, least sensitive first, error (and accuracy) per ratio."""
        head = ["rank", "group", "channels", "source"] + [f"err@{r:g}" for r in self.ratios]
        with_acc = self.accuracy is not None
        if with_acc:
            head += [f"acc@{r:g}" for r in self.ratios]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for rank, g in enumerate(self.ranked(), start=1):
            cells = [str(rank), str(g.group), str(g.size), f"`{g.source}`"] + [f"{e:.4f}" for e in g.errors]
            if with_acc:
                cells += ["-" if a is None else f"{a:.2%}" for a in g.accuracies]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)


def parse_ratios(text: str | Sequence[float]) -> tuple[float, ...]:
    """Parse ``"0.1,0.2,0.5"`` into sorted unique ratios in ``(0, 1)``; ConfigError otherwise."""
    items = [t for t in text.split(",") if t.strip()] if isinstance(text, str) else list(text)
    try:
        values = sorted({float(v) for v in items})
    except ValueError as exc:
        raise ConfigError(f"--ratios '{text}' must be comma-separated numbers, e.g. 0.1,0.3,0.5") from exc
    if not values or not all(math.isfinite(v) and 0 < v < 1 for v in values):
        raise ConfigError(f"--ratios must be numbers in (0, 1), got '{text}'")
    return tuple(values)


class OutputErrorMeter:
    """Runs candidate models on fixed calibration batches and measures their error against the original.

    The original's outputs are computed once; every candidate is compared on the same batches.
    """

    def __init__(self, model: ModelProto, data: str | os.PathLike[str] | Iterable[Mapping[str, np.ndarray]], *,
                 batch_size: int = 32, max_samples: int | None = 256) -> None:
        from onnxprune.runtime.session import create_session, run_session

        self._create, self._run = create_session, run_session
        self.batches = list(iter_feeds(model, data, batch_size=batch_size, max_samples=max_samples))
        if not self.batches:
            from onnxprune.core.errors import CalibrationError

            raise CalibrationError("calibration data holds no samples")
        sess = create_session(model)
        self.outputs = [o.name for o in sess.get_outputs() if "float" in o.type]
        if not self.outputs:
            raise ConfigError("the model has no float output to compare; sensitivity needs one")
        self.reference = [run_session(sess, b, outputs=self.outputs) for b in self.batches]
        for ref in self.reference:  # an error against non-finite outputs would be NaN, and rank anywhere
            for n in self.outputs:
                check_finite(ref[n], f"output '{n}' of the original model on the calibration data (--calib)")
        self.ref_norm = math.sqrt(sum(float(np.sum(np.square(r[n], dtype=np.float64)))
                                      for r in self.reference for n in self.outputs))
        self.samples = sum(next(iter(b.values())).shape[0] for b in self.batches)

    def error(self, candidate: ModelProto) -> float:
        """Relative L2 error of ``candidate``'s float outputs against the original's."""
        sess = self._create(candidate)
        total = 0.0
        for batch, ref in zip(self.batches, self.reference, strict=True):
            got = self._run(sess, batch, outputs=self.outputs, label="a pruned candidate")
            for n in self.outputs:
                total += float(np.sum(np.square(got[n].astype(np.float64) - ref[n])))
        err = math.sqrt(total) / self.ref_norm if self.ref_norm > 0 else math.sqrt(total)
        return math.inf if math.isnan(err) else err  # NaN outputs: an error that cannot be measured is the worst


def single_group_plan(model: ModelProto, dg: DependencyGraph, group_id: int, ratio: float, *,
                      importance: str, statistics: Mapping[str, object] | None, seed: int = 0) -> PrunePlan:
    """A plan that cuts only ``group_id`` by ``ratio`` (every other group keeps all its channels)."""
    plan = make_plan(model, dg, ratio=0.0, importance=importance, group_ratios={group_id: ratio},
                     statistics=statistics, seed=seed)
    keep = {g: k for g, k in plan.keep.items() if g == group_id}
    return PrunePlan(fingerprint=plan.fingerprint, keep=keep, sizes={group_id: plan.sizes[group_id]},
                     criterion=plan.criterion, meta=plan.meta)


def criterion_statistics(model: ModelProto, dg: DependencyGraph, importance: str,
                         data: object) -> Mapping[str, object] | None:
    """Calibration statistics a data-aware criterion needs (``None`` for weight-only criteria)."""
    from onnxprune.recovery.data_criteria import DATA_CRITERIA, collect_group_stats

    if importance not in DATA_CRITERIA:
        return None
    if data is None:
        raise ConfigError(f"importance '{importance}' needs calibration data; pass --calib data.npz")
    return collect_group_stats(model, dg, data)  # type: ignore[arg-type]


def recovery_stats(model: ModelProto, dg: DependencyGraph, data: object, recover: str) -> ActivationStats | None:
    """Statistics for recovering any cut of ``dg``'s groups: every sink's Gram (lstsq) or input (bias)."""
    if recover == "none" or data is None:
        return None
    from onnxprune.recovery.recover import recovery_input_axis, sink_cuts

    # keeping one channel of every group makes every sink of a prunable group show up as cut
    one = {g.id: np.zeros(1, dtype=np.int64) for g in dg.prunable_groups if g.size > 1}
    cuts = sink_cuts(model, dg, one) if one else []
    if recover == "lstsq":
        return collect_stats(model, data, gram_for=[c.key for c in cuts])  # type: ignore[arg-type]
    axes = {c.activation: recovery_input_axis(c) for c in cuts}
    return collect_stats(model, data, tensors=axes)  # type: ignore[arg-type]


def sensitivity(
    model: str | os.PathLike[str] | ModelProto,
    calib: str | os.PathLike[str] | Iterable[Mapping[str, np.ndarray]],
    *,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    eval_data: str | os.PathLike[str] | None = None,
    importance: str = "l2",
    recover: str = "none",
    dg: DependencyGraph | None = None,
    groups: Sequence[int] | None = None,
    batch_size: int = 32,
    max_samples: int | None = 256,
    labels: str = "labels",
) -> SensitivityReport:
    """Prune each prunable group alone at each ratio and measure the damage.

    Args:
        model: path or ``ModelProto`` (not modified).
        calib: calibration data (npz path or feed dicts) on which output errors are measured.
        ratios: shares of a group's channels to remove, in ``(0, 1)``.
        eval_data: labelled npz for top-1 accuracy per candidate (optional).
        importance: criterion that picks the channels (data-aware ones use ``calib``).
        recover: ``none``, ``bias`` or ``lstsq`` applied to every candidate before measuring.
        dg: the model's dependency graph, if already built.
        groups: restrict to these group ids (default: every prunable group).
        batch_size, max_samples: calibration batching (the reference outputs of ``max_samples`` are kept).
        labels: key of the labels in ``eval_data``.

    Returns:
        A :class:`SensitivityReport`.

    Raises:
        ConfigError: bad ratios, criterion or recovery; CalibrationError: bad data.

    Example:
        >>> report = sensitivity("cnn.onnx", "calib.npz", ratios=(0.2, 0.5))  # doctest: +SKIP
        >>> print(report.table())  # doctest: +SKIP
    """
    ratios = parse_ratios(ratios)
    if recover not in ("none", "bias", "lstsq"):
        raise ConfigError(f"recover must be none, bias or lstsq, got '{recover}'")
    m = load_model(model)
    if eval_data is not None:  # refuse bad labels now, not after the calibration statistics
        from onnxprune.runtime.evaluate import check_eval_data

        check_eval_data(m, eval_data, labels=labels)
    dg = dg if dg is not None else analyze(m)
    chosen = [g for g in dg.prunable_groups if g.size > 1 and (groups is None or g.id in set(groups))]
    if groups is not None:
        missing = sorted(set(groups) - {g.id for g in chosen})
        if missing:
            raise ConfigError(f"groups {missing} are not prunable groups of this model; see 'onnxprune analyze'")
    meter = OutputErrorMeter(m, calib, batch_size=batch_size, max_samples=max_samples)
    statistics = criterion_statistics(m, dg, importance, calib)
    rstats = recovery_stats(m, dg, calib, recover)
    evaluate = None
    base_acc = None
    if eval_data is not None:
        from onnxprune.runtime.evaluate import evaluate_accuracy

        def evaluate(candidate: ModelProto) -> float:
            return float(evaluate_accuracy(candidate, eval_data, labels=labels).top1)

        base_acc = evaluate(m)
    base = model_stats(m)
    results: list[GroupSensitivity] = []
    for g in progress(chosen, desc="sensitivity", total=len(chosen)):
        kept, errs, accs, macs, params = [], [], [], [], []
        for r in ratios:
            plan = single_group_plan(m, dg, g.id, r, importance=importance, statistics=statistics)
            cand = apply_plan(m, plan, dg=dg)
            if recover != "none":
                from onnxprune.recovery.recover import recover_structured

                cand = recover_structured(m, cand, dg, plan, rstats, method=recover)
            st = model_stats(cand)
            kept.append(len(plan.keep[g.id]))
            errs.append(meter.error(cand))
            accs.append(evaluate(cand) if evaluate is not None else None)
            macs.append(st.macs)
            params.append(st.params)
        source = g.sources[0].node if g.sources else (g.nodes[0] if g.nodes else f"group {g.id}")
        results.append(GroupSensitivity(g.id, g.size, source, ratios, tuple(kept), tuple(errs), tuple(accs),
                                        tuple(macs), tuple(params)))
        log.debug("group %d: errors %s", g.id, errs)
    return SensitivityReport(METRIC, ratios, importance, recover, meter.samples, base.macs, base.params, base_acc,
                             tuple(results))
