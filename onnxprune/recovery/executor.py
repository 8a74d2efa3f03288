"""Whole-model evaluation of pruning candidates, in this process or spread over worker processes.

Why this module exists: measuring a candidate (a group cut at a ratio) on the whole model means cutting
the model, optionally recovering it, building an onnxruntime session and running the calibration set:
independent work per candidate. :class:`CandidateSpec` holds everything a process needs to do it (the
serialized model, the calibration batches, the reference outputs and the statistics of the one
calibration pass), so each worker receives it once, when it starts, and then gets only ``(group, ratio)``
tasks. Workers run one onnxruntime session at a time with ``cores // workers`` threads each, so the
machine is not oversubscribed. Results come back in task order whatever the number of workers.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from onnx import ModelProto

from onnxprune.core.errors import ConfigError
from onnxprune.core.progress import progress
from onnxprune.core.stats import model_stats
from onnxprune.recovery.calibrate import ActivationStats
from onnxprune.structured.analysis import ChannelGroup, DependencyGraph, analyze
from onnxprune.structured.importance import ImportanceContext
from onnxprune.structured.plan import PrunePlan, make_plan
from onnxprune.structured.surgery import apply_plan

if TYPE_CHECKING:
    from onnxprune.recovery.costs import CostModel

log = logging.getLogger(__name__)

EXECUTORS = ("local", "processes", "ray")

Task = tuple[int, float]


@dataclass(frozen=True)
class Measured:
    """What one candidate measured: relative L2 output error and top-1 (``None`` when not asked)."""

    error: float | None
    accuracy: float | None


@dataclass(frozen=True)
class CandidateSpec:
    """Everything needed to rebuild and measure candidates in any process (picklable, sent once per worker).

    Attributes:
        model: the serialized original model.
        batches: calibration feed dicts.
        reference: the original model's outputs on ``batches`` (compared against, never recomputed).
        outputs: names of the float outputs compared.
        importance: criterion choosing the channels.
        recover: recovery applied before measuring (``none``, ``bias``, ``lstsq``).
        statistics: criterion statistics (data-aware criteria), or ``None``.
        rstats: calibration statistics recovery uses, or ``None``.
        eval_data: labelled npz for top-1, or ``None``.
        labels: key of the labels in ``eval_data``.
    """

    model: bytes
    batches: tuple[dict[str, np.ndarray], ...]
    reference: tuple[dict[str, np.ndarray], ...]
    outputs: tuple[str, ...]
    importance: str
    recover: str
    statistics: Mapping[str, object] | None
    rstats: ActivationStats | None
    eval_data: str | None
    labels: str


def single_group_plan(model: ModelProto, dg: DependencyGraph, group_id: int, ratio: float, *,
                      importance: str, statistics: Mapping[str, object] | None, seed: int = 0) -> PrunePlan:
    """A plan that cuts only ``group_id`` by ``ratio`` (every other group keeps all its channels)."""
    plan = make_plan(model, dg, ratio=0.0, importance=importance, group_ratios={group_id: ratio},
                     statistics=statistics, seed=seed)
    keep = {g: k for g, k in plan.keep.items() if g == group_id}
    return PrunePlan(fingerprint=plan.fingerprint, keep=keep, sizes={group_id: plan.sizes[group_id]},
                     criterion=plan.criterion, meta=plan.meta)


class ScoredOnce:
    """The criterion ``name``, each group scored on its first call and the scores reused after (plans of one
    model at several ratios score the same groups the same way: same model, statistics and seed). Named as the
    criterion, so plans record it as they would with the name."""

    def __init__(self, name: str) -> None:
        from onnxprune.structured.importance import get_criterion

        self.__name__ = name
        self._criterion = get_criterion(name)
        self._scores: dict[int, np.ndarray] = {}

    def __call__(self, group: ChannelGroup, ctx: ImportanceContext) -> np.ndarray:
        found = self._scores.get(group.id)
        if found is None:
            found = self._scores[group.id] = np.array(self._criterion(group, ctx), dtype=np.float64, copy=True)
        return found


class CandidateEvaluator:
    """Builds single-group candidates of one model and measures them on the whole model."""

    def __init__(self, spec: CandidateSpec, *, model: ModelProto | None = None, dg: DependencyGraph | None = None,
                 threads: int | None = None) -> None:
        from onnxprune.runtime.session import create_session, run_session

        self.spec = spec
        if model is None:
            model = ModelProto()
            model.ParseFromString(spec.model)
        self.model = model
        self.dg = dg if dg is not None else analyze(model)
        self.threads = threads
        self._costs: CostModel | None = None
        #: plans already made for tasks (by :meth:`plans`), reused by :meth:`plan` in this process
        self.known_plans: Mapping[Task, PrunePlan] = {}
        self._create, self._run = create_session, run_session
        ref = spec.reference
        self.ref_norm = float(np.sqrt(sum(float(np.sum(np.square(r[n], dtype=np.float64)))
                                          for r in ref for n in spec.outputs)))

    def plan(self, group_id: int, ratio: float) -> PrunePlan:
        """The plan cutting only ``group_id`` by ``ratio`` with the spec's criterion."""
        known = self.known_plans.get((group_id, ratio))
        if known is not None:
            return known
        return single_group_plan(self.model, self.dg, group_id, ratio, importance=self.spec.importance,
                                 statistics=self.spec.statistics)

    def build(self, plan: PrunePlan, *, infer_shapes: bool = True) -> ModelProto:
        """The candidate model of ``plan``, recovered as the spec says (``infer_shapes``: see ``apply_plan``)."""
        cand = apply_plan(self.model, plan, dg=self.dg, infer_shapes=infer_shapes)
        if self.spec.recover != "none":
            from onnxprune.recovery.recover import recover_structured

            cand = recover_structured(self.model, cand, self.dg, plan, self.spec.rstats, method=self.spec.recover)
        return cand

    def plans(self, group_ids: Sequence[int], ratios: Sequence[float]) -> dict[Task, PrunePlan]:
        """Every single-group plan of ``group_ids`` × ``ratios`` from one ``make_plan`` per ratio.

        Per-group ranking (the default) chooses a group's channels from its own importance and ratio only,
        so the plan cutting all groups at ``r`` holds each single-group plan at ``r``.
        """
        out: dict[Task, PrunePlan] = {}
        scores = ScoredOnce(self.spec.importance)  # a group's channel scores do not depend on the ratio
        for r in ratios:
            plan = make_plan(self.model, self.dg, ratio=0.0, importance=scores,
                             group_ratios=dict.fromkeys(group_ids, r), statistics=self.spec.statistics)
            for g in group_ids:
                out[(g, r)] = PrunePlan(fingerprint=plan.fingerprint, keep={g: plan.keep[g]},
                                        sizes={g: plan.sizes[g]}, criterion=plan.criterion, meta=plan.meta)
        return out

    def cost(self, plan: PrunePlan) -> tuple[int, int]:
        """``(MACs, params)`` of the cut model (batch 1) without building it; recovery does not change them.

        Counted by :class:`onnxprune.recovery.costs.CostModel`; the model is cut and counted only when a
        node's MACs are unknown there.
        """
        if self._costs is None:
            from onnxprune.recovery.costs import CostModel

            self._costs = CostModel(self.model, self.dg)
        found = self._costs.cost(plan.keep)
        if found is None:
            st = model_stats(apply_plan(self.model, plan, dg=self.dg))
            return st.macs, st.params
        return found

    def error(self, candidate: ModelProto) -> float:
        """Relative L2 error of ``candidate``'s float outputs against the original's."""
        sess = self._create(candidate, threads=self.threads)
        total = 0.0
        for batch, ref in zip(self.spec.batches, self.spec.reference, strict=True):
            got = self._run(sess, batch, outputs=list(self.spec.outputs), label="a pruned candidate")
            for n in self.spec.outputs:
                total += float(np.sum(np.square(got[n].astype(np.float64) - ref[n])))
        return float(np.sqrt(total) / self.ref_norm) if self.ref_norm > 0 else float(np.sqrt(total))

    def accuracy(self, candidate: ModelProto) -> float | None:
        """Top-1 of ``candidate`` on the spec's evaluation data (``None`` without it)."""
        if self.spec.eval_data is None:
            return None
        from onnxprune.runtime.evaluate import evaluate_accuracy

        return float(evaluate_accuracy(candidate, self.spec.eval_data, labels=self.spec.labels).top1)

    def measure(self, task: Task, *, error: bool = True, accuracy: bool = True) -> Measured:
        """Build the candidate ``(group, ratio)`` and measure what is asked on the whole model.

        The candidate is run, never kept: its shapes are not re-inferred (onnxruntime infers them from the
        inputs as it would from the value_info; the errors are the same, bit for bit, tested).
        """
        cand = self.build(self.plan(*task), infer_shapes=False)
        return Measured(self.error(cand) if error else None, self.accuracy(cand) if accuracy else None)


# -- executors -------------------------------------------------------------------------------------
_worker: CandidateEvaluator | None = None


def _init_worker(spec: CandidateSpec, threads: int) -> None:
    global _worker
    _worker = CandidateEvaluator(spec, threads=threads)


def _run_task(args: tuple[Task, bool, bool]) -> Measured:
    assert _worker is not None  # set by _init_worker in every worker
    task, error, accuracy = args
    return _worker.measure(task, error=error, accuracy=accuracy)


def check_executor(executor: str, workers: int | None) -> None:
    """ConfigError for an unknown executor, a worker count below 1, or ``ray`` without Ray installed."""
    if executor not in EXECUTORS:
        raise ConfigError(f"executor must be one of {', '.join(EXECUTORS)}, got '{executor}'")
    if workers is not None and workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    if executor == "ray":
        from onnxprune.recovery.ray_executor import import_ray

        import_ray()  # fail before any work when Ray is missing


def measure_candidates(evaluator: CandidateEvaluator, tasks: Sequence[Task], *, error: bool = True,
                       accuracy: bool = True, executor: str = "local", workers: int | None = None,
                       desc: str = "candidates", ray_address: str | None = None) -> list[Measured]:
    """Measure every ``(group, ratio)`` task on the whole model; results in task order.

    Args:
        evaluator: the in-process evaluator (its spec is what workers receive).
        tasks: candidates to measure.
        error / accuracy: what to measure.
        executor: ``local`` (this process), ``processes`` (a pool of worker processes) or ``ray``
            (:mod:`onnxprune.recovery.ray_executor`).
        workers: pool size (default: one per core, at most one per task); for ``ray``, the candidates run at
            a time (default: as many as the cluster takes) and, without an address, the CPUs of the local
            cluster it starts.
        ray_address: the Ray cluster to join (``ray`` only; default: start a local one).
        desc: what the progress bar (or progress lines) call these measurements.

    Raises:
        ConfigError: unknown executor or bad worker count.
    """
    check_executor(executor, workers)
    if executor == "local" or (executor == "processes" and len(tasks) <= 1):
        return [evaluator.measure(task, error=error, accuracy=accuracy)
                for task in progress(tasks, desc=desc, total=len(tasks))]
    if executor == "ray":
        from onnxprune.recovery.ray_executor import measure_on_ray

        return measure_on_ray(evaluator.spec, tasks, error=error, accuracy=accuracy, address=ray_address,
                              workers=workers, desc=desc)
    cores = os.cpu_count() or 1
    n = max(1, min(workers or cores, len(tasks)))
    threads = max(1, cores // n)
    log.debug("measuring %d candidates on %d worker processes, %d threads each", len(tasks), n, threads)
    ctx = multiprocessing.get_context("spawn")  # onnxruntime's threads do not survive a fork
    with ProcessPoolExecutor(max_workers=n, mp_context=ctx, initializer=_init_worker,
                             initargs=(evaluator.spec, threads)) as pool:
        results = pool.map(_run_task, [(t, error, accuracy) for t in tasks])
        return list(progress(results, desc=desc, total=len(tasks)))
