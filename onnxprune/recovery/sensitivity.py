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

import dataclasses
import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
from onnx import ModelProto

from onnxprune.core.errors import ConfigError
from onnxprune.core.io import load_model
from onnxprune.core.progress import Stages
from onnxprune.core.stats import model_stats
from onnxprune.recovery.anchor_submodel import SubModelAnchors, measure_anchors
from onnxprune.recovery.calibrate import ActivationStats, collect_stats, iter_feeds
from onnxprune.recovery.executor import (
    CandidateEvaluator,
    CandidateSpec,
    Task,
    check_executor,
    measure_candidates,
    single_group_plan,  # noqa: F401 - re-exported: it lived here first
)
from onnxprune.runtime.feeds import check_finite
from onnxprune.structured.analysis import ChannelGroup, DependencyGraph, analyze

if TYPE_CHECKING:
    from onnxprune.recovery.gram_score import GramScorer

log = logging.getLogger(__name__)

DEFAULT_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
METRIC = "relative_l2"
#: How candidates are measured: Gram-scored and anchored (fast), or each on the whole model (reference).
METHODS = ("gram", "model")
#: Calibration samples an anchor (the one whole-model run that scales a group's Gram curve) runs on: it sets
#: the scale only, and budgets measure their frontier on these same samples (see :func:`sensitivity`).
DEFAULT_ANCHOR_SAMPLES = 64

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
        exact: per ratio, whether the error was measured on the whole model (else Gram-estimated).
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
    exact: tuple[bool, ...] = ()

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
        method: ``gram`` or ``model`` (how candidates were measured, see :func:`sensitivity`).
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
    method: str = "model"

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


def parse_anchor_samples(text: str | int | None, *, flag: str = "anchor_samples") -> int | None:
    """``"all"`` (or ``None``) → ``None`` (anchors on every sample); a positive integer → itself; ConfigError
    naming ``flag`` otherwise.

    Example:
        >>> parse_anchor_samples("all"), parse_anchor_samples("32")
        (None, 32)
    """
    if text is None or (isinstance(text, str) and text.strip().lower() == "all"):
        return None
    if isinstance(text, bool):
        value = None
    elif isinstance(text, int):
        value = text
    else:
        value = int(text.strip()) if text.strip().isdigit() else None
    if value is None or value < 1:
        raise ConfigError(f"{flag} must be a positive number of samples or 'all', got '{text}'; e.g. "
                          f"{flag} {DEFAULT_ANCHOR_SAMPLES}")
    return value


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


def criterion_statistics(model: ModelProto, dg: DependencyGraph, importance: str,
                         data: object) -> Mapping[str, object] | None:
    """Calibration statistics a data-aware criterion needs (``None`` for weight-only criteria)."""
    from onnxprune.recovery.data_criteria import DATA_CRITERIA, collect_group_stats

    if importance not in DATA_CRITERIA:
        return None
    if data is None:
        raise ConfigError(f"importance '{importance}' needs calibration data; pass --calib data.npz")
    return collect_group_stats(model, dg, data)  # type: ignore[arg-type]


def recovery_stats(model: ModelProto, dg: DependencyGraph, data: object, recover: str, *,
                   collect: Callable[..., ActivationStats] | None = None) -> ActivationStats | None:
    """Statistics for recovering any cut of ``dg``'s groups: every sink's Gram (lstsq) or input (bias), or
    both in one pass (``"both"``: what Gram scoring with bias recovery needs); grouped Conv sinks included.
    ``collect`` runs the pass (default :func:`~onnxprune.recovery.calibrate.collect_stats`; see
    :func:`calibration_pass`)."""
    if recover == "none" or data is None:
        return None
    from onnxprune.recovery.recover import recovery_input_axis, sink_cuts

    # keeping one channel of every group makes every sink of a prunable group show up as cut
    one = {g.id: np.zeros(1, dtype=np.int64) for g in dg.prunable_groups if g.size > 1}
    every = sink_cuts(model, dg, one) if one else []
    run: Callable[..., ActivationStats] = collect or collect_stats
    if recover == "lstsq":
        return run(model, data, gram_for=[c.key for c in every])
    axes = {c.activation: recovery_input_axis(c) for c in every}
    grams = [c.key for c in every] if recover == "both" else []
    return run(model, data, tensors=axes, gram_for=grams)


#: Calibration samples per shard when sensitivity's calibration pass is spread over workers: shards depend on
#: the data only, so the statistics (and the report) do not depend on the number of workers.
SHARD_SAMPLES = 64


def calibration_pass(calib: object, batches: Sequence[Mapping[str, np.ndarray]], *, samples: int, batch_size: int,
                     executor: str, workers: int | None, ray_address: str | None
                     ) -> tuple[object, Callable[..., ActivationStats] | None]:
    """What sensitivity's one calibration pass reads, and how it runs: the meter's ``batches`` in this process,
    or, with ``processes`` or ``ray`` and an npz path, shards of :data:`SHARD_SAMPLES` of its first ``samples``
    reduced by the workers and summed (:func:`onnxprune.recovery.shards.collect_stats_sharded`: equal to the
    single pass up to float64 round-off)."""
    if executor == "local" or not isinstance(calib, (str, os.PathLike)):
        return list(batches), None
    from functools import partial

    from onnxprune.recovery.shards import collect_stats_sharded

    shards = max(1, -(-samples // SHARD_SAMPLES))
    return calib, partial(collect_stats_sharded, shards=shards, batch_size=batch_size, executor=executor,
                          workers=workers, ray_address=ray_address, max_samples=samples)


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
    method: str = "gram",
    executor: str = "local",
    workers: int | None = None,
    ray_address: str | None = None,
    anchor_samples: int | None = DEFAULT_ANCHOR_SAMPLES,
) -> SensitivityReport:
    """Prune each prunable group alone at each ratio and measure the damage.

    With ``method="model"`` every candidate is measured on the whole model (one onnxruntime session and
    a pass over the calibration set each). With ``method="gram"`` (the default) one calibration pass
    collects the input Gram matrix of every layer a group cut acts on; each candidate's curve is its
    consumers' reconstruction error from those Grams (:mod:`onnxprune.recovery.gram_score`), scaled per
    group by *one* whole-model measurement at the middle ratio, so it is on the model's output scale
    and exact there. Groups whose cut reaches no Conv/Gemm/MatMul, or scores zero at the middle ratio,
    are measured on the whole model at every ratio.

    Args:
        model: path or ``ModelProto`` (not modified).
        calib: calibration data (npz path or feed dicts) on which output errors are measured.
        ratios: shares of a group's channels to remove, in ``(0, 1)``.
        eval_data: labelled npz for top-1 accuracy per candidate (optional; always whole-model).
        importance: criterion that picks the channels (data-aware ones use ``calib``).
        recover: ``none``, ``bias`` or ``lstsq`` applied to every candidate before measuring.
        dg: the model's dependency graph, if already built.
        groups: restrict to these group ids (default: every prunable group).
        batch_size, max_samples: calibration batching (the reference outputs of ``max_samples`` are kept).
        labels: key of the labels in ``eval_data``.
        method: ``gram`` (fast, see above) or ``model`` (every candidate on the whole model: the reference).
        executor: ``local``, ``processes`` (whole-model measurements spread over worker processes) or ``ray``
            (over a Ray cluster; needs the ``distributed`` extra).
        workers: worker processes for ``processes``, CPUs of the local Ray cluster for ``ray`` (default: all).
        ray_address: Ray cluster to join (``ray`` only; default: start a local one).
        anchor_samples: ``gram`` only: the anchors run on the first calibration batches holding at least this
            many samples (``None``: all), and the Grams that only score (every recovery but ``lstsq``, whose
            re-fits read them) are accumulated on those same batches, so the whole estimate is that of those
            samples. An anchor only scales its group's curve, so it is reported as an estimate (``exact``
            false); a budget measures its frontier (each group's chosen and next ratio) the same way.

    Returns:
        A :class:`SensitivityReport`.

    Raises:
        ConfigError: bad ratios, criterion, recovery, method or executor; CalibrationError: bad data.

    Example:
        >>> report = sensitivity("cnn.onnx", "calib.npz", ratios=(0.2, 0.5))  # doctest: +SKIP
        >>> print(report.table())  # doctest: +SKIP
    """
    return start_sensitivity(model, calib, ratios=ratios, eval_data=eval_data, importance=importance, recover=recover,
                             dg=dg, groups=groups, batch_size=batch_size, max_samples=max_samples, labels=labels,
                             method=method, executor=executor, workers=workers, ray_address=ray_address,
                             anchor_samples=anchor_samples).report()


def start_sensitivity(
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
    method: str = "gram",
    executor: str = "local",
    workers: int | None = None,
    ray_address: str | None = None,
    anchor_samples: int | None = DEFAULT_ANCHOR_SAMPLES,
    defer_anchors: bool = False,
) -> SensitivityRun:
    """As :func:`sensitivity`, but returns the :class:`SensitivityRun` (its ``report()``, and ``refine()`` to
    measure more points on the whole model).

    ``defer_anchors`` (the Gram path; what budgets use): a group whose first ratio cuts nothing is neither
    scored nor anchored until :meth:`SensitivityRun.anchor` asks; until then its estimated points read as
    +inf. Why: a budget's greedy steps into such a group only when no step that saves anything is left, so
    most of these anchors (44 of RegNetX-400MF's 49 four-channel groups) would never be read.

    Raises:
        ConfigError, CalibrationError: as :func:`sensitivity`.
    """
    ratios = parse_ratios(ratios)
    if recover not in ("none", "bias", "lstsq"):
        raise ConfigError(f"recover must be none, bias or lstsq, got '{recover}'")
    if method not in METHODS:
        raise ConfigError(f"sensitivity method must be one of {', '.join(METHODS)}, got '{method}'")
    check_executor(executor, workers)
    if anchor_samples is not None and (isinstance(anchor_samples, bool) or not isinstance(anchor_samples, int)
                                       or anchor_samples < 1):
        raise ConfigError(f"anchor_samples must be a positive integer or None (every sample), got {anchor_samples!r}")
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
    return SensitivityRun(m, dg, chosen, calib, ratios=ratios, eval_data=eval_data, importance=importance,
                          recover=recover, batch_size=batch_size, max_samples=max_samples, labels=labels,
                          method=method, executor=executor, workers=workers, ray_address=ray_address,
                          anchor_samples=anchor_samples, defer_anchors=defer_anchors)


class SensitivityRun:
    """One sensitivity analysis, with what it built kept (calibration, reference outputs, plans, costs), so
    a budget can ask for more points measured (:meth:`measure_frontier` on the anchors' samples, :meth:`refine`
    on every sample) without calibrating again.

    Made by :func:`start_sensitivity`.
    """

    def __init__(self, m: ModelProto, dg: DependencyGraph, chosen: Sequence[ChannelGroup],
                 calib: str | os.PathLike[str] | Iterable[Mapping[str, np.ndarray]], *, ratios: tuple[float, ...],
                 eval_data: str | os.PathLike[str] | None, importance: str, recover: str, batch_size: int,
                 max_samples: int | None, labels: str, method: str, executor: str, workers: int | None,
                 ray_address: str | None = None, anchor_samples: int | None = None,
                 defer_anchors: bool = False) -> None:
        self.model, self.dg, self.chosen, self.ratios = m, dg, list(chosen), ratios
        self.anchor_samples = anchor_samples
        self.importance, self.recover, self.method = importance, recover, method
        self.executor, self.workers, self.ray_address = executor, workers, ray_address
        clock = self.clock = Stages()
        meter = OutputErrorMeter(m, calib, batch_size=batch_size, max_samples=max_samples)
        self.samples = meter.samples
        # a file is read again whole (as before); an iterable was consumed by the meter, which kept its batches
        statistics = criterion_statistics(m, dg, importance, calib if isinstance(calib, (str, os.PathLike))
                                          else meter.batches)
        scorer = None
        data, collect = calibration_pass(calib, meter.batches, samples=meter.samples, batch_size=batch_size,
                                         executor=executor, workers=workers, ray_address=ray_address)
        if method == "gram":
            from functools import partial

            from onnxprune.recovery.gram_score import GramScorer

            # the one calibration pass: every consumer's Gram (and input means) serves scoring and recovery alike;
            # Grams that only score (no lstsq re-fit reads them) see the anchors' samples, see gram_samples()
            grams_on = None if recover == "lstsq" else self.gram_samples(meter.batches)
            stats = recovery_stats(m, dg, data, "lstsq" if recover != "bias" else "both",  # Grams (+ means)
                                   collect=partial(collect or collect_stats, gram_samples=grams_on))
            assert stats is not None
            rstats = stats if recover != "none" else None
            scorer = GramScorer(m, dg, stats, recover=recover)
        else:
            rstats = recovery_stats(m, dg, data, recover, collect=collect)
        clock.done("calibration", meter.samples, "samples")
        spec = CandidateSpec(m.SerializeToString(), tuple(meter.batches), tuple(meter.reference),
                             tuple(meter.outputs), importance, recover, statistics, rstats,
                             None if eval_data is None else str(eval_data), labels)
        evaluator = self.evaluator = CandidateEvaluator(spec, model=m, dg=dg)
        tasks: list[Task] = [(g.id, r) for g in chosen for r in ratios]
        self.plans = evaluator.plans([g.id for g in chosen], ratios)
        self.costs = {t: evaluator.cost(p) for t, p in self.plans.items()}
        clock.done("candidate plans", len(tasks), "candidates")
        evaluator.known_plans = self.plans
        self.errors: dict[Task, float] = {}
        self.exact: set[Task] = set()
        self._cuts: dict[tuple[int, bytes], float] = {}  # whole-model error of each distinct cut measured
        self._rough: dict[tuple[int, bytes], float] = {}  # the same on the anchors' first samples only
        self._local: dict[Task, float | None] = {}  # each point's Gram score: the shape of its group's curve
        #: points measured as anchors are (the anchors' samples): each group's anchor, and a budget's frontier
        self.measured: dict[Task, float] = {}
        #: groups whose curve is not anchored yet (``defer_anchors``): their estimated points read as +inf
        self.deferred: set[int] = set()
        self._scorer = scorer
        if scorer is not None:
            self.refine([t for t in self.plans if self.cut(t) is None], stage="uncut candidates")  # error 0, no run
            if defer_anchors:
                self.deferred = {g.id for g in chosen if (g.id, ratios[0]) in self.exact}
                self.errors.update({(g, r): math.inf for g in self.deferred for r in ratios
                                    if (g, r) not in self.exact})
            self.errors.update(_gram_errors(scorer, self, [g for g in chosen if g.id not in self.deferred], ratios))
        else:
            self.refine(tasks, stage="whole-model candidates")
        self.base_acc = None
        self.accs: dict[Task, float | None] = dict.fromkeys(tasks)
        if eval_data is not None:
            self.base_acc = evaluator.accuracy(m)
            measured = measure_candidates(evaluator, tasks, error=False, executor=executor, workers=workers,
                                          desc="accuracy", ray_address=ray_address)
            self.accs = {t: r.accuracy for t, r in zip(tasks, measured, strict=True)}
            clock.done("accuracy", len(tasks), "candidates")
        self.base = model_stats(m)

    def anchor(self, group_ids: Iterable[int]) -> None:
        """Score and anchor the curves of deferred groups (see ``defer_anchors`` of :func:`start_sensitivity`)."""
        todo = [g for g in self.chosen if g.id in set(group_ids) & self.deferred]
        if todo and self._scorer is not None:
            self.deferred -= {g.id for g in todo}
            found = _gram_errors(self._scorer, self, todo, self.ratios)
            self.errors.update({t: e for t, e in found.items() if t not in self.exact})

    def measure_frontier(self, tasks: Iterable[Task], *, stage: str = "budget frontier") -> int:
        """Measure ``tasks`` as anchors are (on the anchors' samples, see :meth:`estimate`) and draw each of their
        groups' estimated curves through every point so measured (:meth:`_curve`); how many points were new.

        Why: a budget's choice turns on each group's chosen ratio and the next one, so those are the points it
        measures (:func:`onnxprune.recovery.budget.refine_allocation`), at an anchor's cost, not every point it
        reads on every sample.
        """
        todo = [t for t in dict.fromkeys(tasks) if t not in self.exact and t not in self.measured]
        if not todo:
            return 0
        deferred = {g for g, _ in todo} & self.deferred
        if deferred:  # scored and anchored first
            self.anchor(deferred)
            todo = [t for t in todo if t not in self.exact and t not in self.measured]
        self.measured.update(self.estimate(todo, stage=stage))
        for gid in dict.fromkeys(g for g, _ in todo):
            self.errors.update(self._curve(gid))
        return len(todo)

    def _curve(self, gid: int) -> dict[Task, float]:
        """Group ``gid``'s errors off the exact points: each measured point as measured, the others its Gram score
        times the ratio measured / Gram score, linear in the ratio between measured points and constant beyond
        them (with the anchor alone: the anchor's scale, as :func:`sensitivity` describes)."""
        ts = [(gid, r) for r in self.ratios]
        known = [(t[1], self.measured[t] / score) for t in ts
                 if t in self.measured and (score := self._local.get(t)) is not None and score > 0]
        finite = [(r, s) for r, s in known if math.isfinite(s)]  # an unmeasurable point (inf) scales all by inf
        xs, fs = [r for r, _ in finite], [s for _, s in finite]
        out: dict[Task, float] = {}
        for t in ts:
            if t in self.exact:
                continue
            if t in self.measured:
                out[t] = self.measured[t]
            elif known:
                score = float(self._local.get(t) or 0.0)
                out[t] = score * float(np.interp(t[1], xs, fs)) if len(finite) == len(known) else (
                    math.inf if score > 0 else 0.0)
        return out

    def refine(self, tasks: Iterable[Task], *, stage: str = "whole-model refinement") -> int:
        """Measure ``tasks`` not measured yet on the whole model, replacing their estimates; how many were.

        A candidate that cuts nothing is the original model (error 0), and candidates of one group whose
        plans keep the same channels (a small group at neighbouring ratios) are the same model: each
        distinct cut runs once.
        """
        todo = [t for t in dict.fromkeys(tasks) if t not in self.exact]
        if not todo:
            return 0
        runs: dict[tuple[int, bytes], Task] = {}
        for t in todo:
            key = self.cut(t)
            if key is not None and key not in self._cuts:
                runs.setdefault(key, t)
        self._cuts.update(self._measure(self.evaluator, runs, stage))
        for t in todo:
            key = self.cut(t)
            self.errors[t] = 0.0 if key is None else self._cuts[key]
            self.exact.add(t)
        if runs:
            self.clock.done(stage, len(runs), "candidates")
        return len(todo)

    def estimate(self, tasks: Sequence[Task], *, stage: str = "whole-model anchors") -> dict[Task, float]:
        """Whole-model errors of ``tasks`` on the first calibration batches holding ``anchor_samples`` samples.

        Why: an anchor only scales a Gram curve, and its running time grows with the samples while the
        ranking it serves barely moves (RegNetX-400MF, see the README). These errors are not marked exact,
        so :meth:`refine` measures a point again on every sample when a budget reads it. With every batch
        within ``anchor_samples`` (or ``None``), this is :meth:`refine`.
        """
        spec = self.evaluator.spec
        count, kept = self._first_batches(spec.batches)
        if self.anchor_samples is None or kept == len(spec.batches):
            self.refine(tasks, stage=stage)
            return {t: self.errors[t] for t in tasks}
        runs: dict[tuple[int, bytes], Task] = {}
        for t in dict.fromkeys(tasks):
            key = self.cut(t)
            if key is not None and key not in self._rough:
                runs.setdefault(key, t)
        if runs:
            sub = CandidateEvaluator(dataclasses.replace(spec, batches=spec.batches[:kept],
                                                         reference=spec.reference[:kept]),
                                     model=self.model, dg=self.dg)
            sub.known_plans = self.plans
            self._rough.update(self._measure(sub, runs, stage))
            self.clock.done(stage, len(runs), f"candidates on {count} samples")
        return {t: 0.0 if (key := self.cut(t)) is None else self._rough[key] for t in tasks}

    def _first_batches(self, batches: Sequence[Mapping[str, np.ndarray]]) -> tuple[int, int]:
        """``(samples, batches)`` of the first calibration batches holding ``anchor_samples`` samples."""
        count, kept = 0, 0
        for batch in batches:
            if self.anchor_samples is None or count >= self.anchor_samples:
                break
            count += next(iter(batch.values())).shape[0]
            kept += 1
        return count, kept

    def gram_samples(self, batches: Sequence[Mapping[str, np.ndarray]]) -> int | None:
        """Samples the scoring Grams are accumulated on: the anchors' first batches (``None``: every sample).

        Why: a Gram costs ``rows × K²`` (im2col Grams of a full-size ResNet-50 up to 4608² per 3×3 conv), far
        more than the calibration run, and it only shapes a group's curve, which an anchor on those same
        samples then scales; a budget measures its frontier on those samples too, so the Grams only shape the
        curves between measured points (see :func:`onnxprune.recovery.budget.refine_allocation`). Channel
        statistics (bias recovery's means) still see every sample.
        """
        count, kept = self._first_batches(batches)
        return None if self.anchor_samples is None or kept == len(batches) else count

    def _measure(self, evaluator: CandidateEvaluator, runs: Mapping[tuple[int, bytes], Task],
                 stage: str) -> dict[tuple[int, bytes], float]:
        """The error of each cut in ``runs`` on ``evaluator``'s batches.

        The Gram path in this process runs only what each cut changes, fed the dense model's activations
        (:mod:`onnxprune.recovery.anchor_submodel`: equal to the whole-model error to float32 round-off);
        ``method="model"`` (the reference) and the other executors run each candidate on the whole model.
        """
        if not runs:
            return {}
        spec = evaluator.spec
        if self.method == "gram" and self.executor == "local" and SubModelAnchors.supported(self.model):
            def build(key: tuple[int, bytes]) -> ModelProto:  # a throwaway candidate: no shape inference
                return evaluator.build(evaluator.plan(*runs[key]), infer_shapes=False)

            return measure_anchors(self.model, build, list(runs), spec.batches, spec.reference, spec.outputs,
                                   desc=stage)
        measured = measure_candidates(evaluator, list(runs.values()), accuracy=False, executor=self.executor,
                                      workers=self.workers, desc=stage, ray_address=self.ray_address)
        out: dict[tuple[int, bytes], float] = {}
        for key, r in zip(runs, measured, strict=True):
            assert r.error is not None  # asked for
            out[key] = r.error
        return out

    def cut(self, task: Task) -> tuple[int, bytes] | None:
        """What candidate ``task`` builds: its group and kept channels, ``None`` when it cuts nothing."""
        plan = self.plans[task]
        keep = np.asarray(plan.keep[task[0]], dtype=np.int64)
        return None if keep.size == plan.sizes[task[0]] else (task[0], keep.tobytes())

    def report(self) -> SensitivityReport:
        """The report of what is measured now (estimates and exact points, see ``GroupSensitivity.exact``)."""
        results: list[GroupSensitivity] = []
        for g in self.chosen:
            ts = [(g.id, r) for r in self.ratios]
            source = g.sources[0].node if g.sources else (g.nodes[0] if g.nodes else f"group {g.id}")
            results.append(GroupSensitivity(
                g.id, g.size, source, self.ratios, tuple(len(self.plans[t].keep[g.id]) for t in ts),
                tuple(self.errors[t] for t in ts), tuple(self.accs[t] for t in ts),
                tuple(self.costs[t][0] for t in ts), tuple(self.costs[t][1] for t in ts),
                tuple(t in self.exact for t in ts)))
            log.debug("group %d: errors %s", g.id, [self.errors[t] for t in ts])
        return SensitivityReport(METRIC, self.ratios, self.importance, self.recover, self.samples, self.base.macs,
                                 self.base.params, self.base_acc, tuple(results), self.method)


def _gram_errors(scorer: GramScorer, run: SensitivityRun, chosen: Sequence[ChannelGroup],
                 ratios: Sequence[float]) -> dict[Task, float]:
    """``chosen``'s Gram-scored curves, each scaled by one whole-model measurement at the middle ratio (see
    :func:`sensitivity`); uncut candidates must be measured (error 0) before."""
    mine = [(g.id, r) for g in chosen for r in ratios]
    local = {t: 0.0 if t in run.exact else scorer.score(run.plans[t]) for t in mine}
    run._local.update(local)
    run.clock.done("gram scores", len(local), "candidates")
    anchor = ratios[len(ratios) // 2]
    model_tasks: list[Task] = []
    anchor_tasks: list[Task] = []
    for g in chosen:
        curve = [local[(g.id, r)] for r in ratios]
        at = local[(g.id, anchor)]
        if any(v is None for v in curve) or at is None or at <= 0:
            model_tasks += [(g.id, r) for r in ratios]  # nothing to scale: measure every ratio
        else:
            anchor_tasks.append((g.id, anchor))
    run.refine(model_tasks, stage="whole-model candidates")
    run.measured.update(run.estimate(anchor_tasks))
    errors: dict[Task, float] = {}
    for g in chosen:
        if all((g.id, r) in run.exact for r in ratios):
            errors.update({(g.id, r): run.errors[(g.id, r)] for r in ratios})
            continue
        errors.update({t: run.errors[t] for t in [(g.id, r) for r in ratios] if t in run.exact})
        errors.update(run._curve(g.id))  # the anchor alone scales the Gram curve
    return errors


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation of two score lists (ties get their mean rank): how well a fast
    sensitivity ranks groups like the whole-model one.

    Example:
        >>> spearman([0.1, 0.5, 0.3], [1.0, 9.0, 2.0])
        1.0
    """
    def ranks(x: Sequence[float]) -> np.ndarray:
        arr = np.asarray(x, dtype=np.float64)
        order = np.argsort(arr, kind="stable")
        r = np.empty(len(arr))
        r[order] = np.arange(len(arr), dtype=np.float64)
        for v in np.unique(arr):
            tie = arr == v
            r[tie] = r[tie].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    if len(ra) < 2 or ra.std() == 0 or rb.std() == 0:
        return 1.0 if np.array_equal(ra, rb) else 0.0
    return float(np.corrcoef(ra, rb)[0, 1])
