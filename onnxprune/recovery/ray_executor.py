"""Whole-model candidate measurements on a Ray cluster (``--executor ray``; optional extra ``distributed``).

Why this module exists: a budget on a big model and a real validation set is hours of independent
candidate runs; users who outgrow one machine already run Ray. The :class:`CandidateSpec` goes into Ray's
object store once (``ray.put``); each task carries only its ``(group, ratio)`` and a reference to the spec,
which a worker fetches and turns into an evaluator once, then reuses for every later task of the same run.
A task whose worker dies is retried by Ray (``max_retries``); candidates that still fail are named in one
error. Results are gathered in task order, so they do not depend on the number of workers.
"""

from __future__ import annotations

import atexit
import logging
import uuid
from collections.abc import Sequence
from typing import Any

from onnxprune.core.errors import ConfigError, OnnxPruneError
from onnxprune.core.progress import progress
from onnxprune.recovery.executor import CandidateEvaluator, CandidateSpec, Measured, Task

log = logging.getLogger(__name__)

#: How often Ray re-runs a task whose worker process died.
MAX_RETRIES = 3
INSTALL_HINT = 'pip install -e ".[distributed]" (or pip install ray)'

_cached: tuple[str, CandidateEvaluator] | None = None


def import_ray() -> Any:
    """The ``ray`` module; ConfigError with the install line when it is missing."""
    try:
        import ray
    except ImportError:
        raise ConfigError(f"--executor ray needs Ray, which is not installed; install it with {INSTALL_HINT}") from None
    return ray


def start_ray(ray: Any, address: str | None, workers: int | None) -> None:
    """Join the cluster at ``address`` or start a local one of ``workers`` CPUs, unless Ray already runs here;
    a cluster started here serves every later call of this process and stops when it exits.

    Raises:
        ConfigError: the cluster cannot be started or reached.
    """
    if ray.is_initialized():
        return
    try:
        ray.init(address=address, num_cpus=None if address else workers, include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at '{address}'" if address else "a local Ray cluster"
        raise ConfigError(f"cannot start or join {where}: {exc}; check --ray-address") from None
    atexit.register(ray.shutdown)


def _measure(run_id: str, spec_box: list[Any], task: Task, error: bool, accuracy: bool) -> Measured:
    """Ray task body: build (once per worker and run) the evaluator, measure one candidate."""
    global _cached
    if _cached is None or _cached[0] != run_id:
        import ray

        spec = ray.get(spec_box[0])  # boxed, so Ray does not fetch it for every task
        _cached = (run_id, CandidateEvaluator(spec, threads=1))
    return _cached[1].measure(task, error=error, accuracy=accuracy)


def measure_on_ray(spec: CandidateSpec, tasks: Sequence[Task], *, error: bool, accuracy: bool,
                   address: str | None, workers: int | None, desc: str = "candidates") -> list[Measured]:
    """Measure ``tasks`` on Ray: join the cluster at ``address``, or start a local one of ``workers`` CPUs.

    Raises:
        ConfigError: Ray is not installed, or the cluster cannot be reached.
        OnnxPruneError: candidates that failed after every retry (named).
    """
    ray = import_ray()
    start_ray(ray, address, workers)
    remote = ray.remote(num_cpus=1, max_retries=MAX_RETRIES)(_measure)
    box = [ray.put(spec)]
    run_id = uuid.uuid4().hex
    refs = [remote.remote(run_id, box, t, error, accuracy) for t in tasks]
    out: list[Measured] = []
    failed: list[str] = []
    for task, ref in progress(list(zip(tasks, refs, strict=True)), desc=desc):
        try:
            out.append(ray.get(ref))
        except (ray.exceptions.RayError, OnnxPruneError) as exc:
            failed.append(f"group {task[0]} at ratio {task[1]:g} ({type(exc).__name__})")
            out.append(Measured(None, None))
    if failed:
        raise OnnxPruneError(f"{len(failed)} of {len(tasks)} candidates failed on Ray after {MAX_RETRIES} "
                             f"retries: {', '.join(failed[:10])}{' ...' if len(failed) > 10 else ''}")
    return out
