"""Work spread over a Ray cluster (``--executor ray``; optional extra ``distributed``).

Why this module exists: a budget on a big model and a real validation set is hours of independent
candidate runs, and a calibration pass over a big data set is one long loop; users who outgrow one machine
already run Ray. What every task shares (the :class:`CandidateSpec`, or the model of a sharded calibration)
goes into Ray's object store once (``ray.put``); each task carries only its own small item and that
reference, boxed in a list so Ray does not fetch the shared object for every task. A worker fetches it and
builds what it needs (an evaluator) once, then reuses it for every later task of the same run. A task whose
worker dies is retried by Ray (:data:`MAX_RETRIES`); items that still fail are named in one error. Results
are gathered in task order and each task is computed alone, so they do not depend on the number of workers.
"""

from __future__ import annotations

import atexit
import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from onnxprune.core.errors import ConfigError, OnnxPruneError
from onnxprune.core.progress import progress
from onnxprune.recovery.executor import CandidateEvaluator, CandidateSpec, Measured, Task

log = logging.getLogger(__name__)

#: How often Ray re-runs a task whose worker process died.
MAX_RETRIES = 3
INSTALL_HINT = 'pip install -e ".[distributed]" (or pip install ray)'

T = TypeVar("T")
R = TypeVar("R")

#: Per worker process: the object a run's shared reference was turned into, keyed by that reference.
_cached: tuple[str, Any] | None = None


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


def shared(box: list[Any], build: Callable[[Any], T]) -> T:
    """In a worker: ``build(value)`` of the object boxed in ``box``, fetched and built once per worker and run."""
    global _cached
    key = box[0].hex()
    if _cached is None or _cached[0] != key:
        import ray

        _cached = (key, build(ray.get(box[0])))
    return _cached[1]


def map_on_ray(body: Callable[[list[Any], T], R], common: object, items: Sequence[T], *, workers: int | None,
               address: str | None, desc: str) -> tuple[list[R | None], list[tuple[int, BaseException]]]:
    """Run ``body(box, item)`` on Ray for every item, ``common`` put in the object store once and boxed.

    At most ``workers`` tasks are in flight at a time (default: as many as the cluster takes), so one
    cluster can be measured at several widths; which worker runs which item does not change its result.

    Returns:
        results in item order (``None`` where the item failed) and ``(index, error)`` of every failed item.

    Raises:
        ConfigError: Ray is not installed, or the cluster cannot be reached.
    """
    ray = import_ray()
    start_ray(ray, address, workers)
    remote = ray.remote(num_cpus=1, max_retries=MAX_RETRIES)(body)
    box = [ray.put(common)]
    limit = len(items) if workers is None else max(1, workers)
    results: list[R | None] = [None] * len(items)
    failed: list[tuple[int, BaseException]] = []
    pending: dict[Any, int] = {}
    queued = iter(range(len(items)))

    def fill() -> None:
        for i in queued:
            pending[remote.remote(box, items[i])] = i
            if len(pending) >= limit:
                return

    fill()
    for _ in progress(range(len(items)), desc=desc, total=len(items)):
        (ref,), _rest = ray.wait(list(pending), num_returns=1)
        i = pending.pop(ref)
        try:
            results[i] = ray.get(ref)
        except (ray.exceptions.RayError, OnnxPruneError) as exc:
            failed.append((i, exc))
        fill()
    return results, sorted(failed, key=lambda f: f[0])


def _measure(box: list[Any], item: tuple[Task, bool, bool]) -> Measured:
    """Ray task body: measure one candidate with this worker's evaluator of the run's spec."""
    task, error, accuracy = item
    evaluator = shared(box, lambda spec: CandidateEvaluator(spec, threads=1))
    return evaluator.measure(task, error=error, accuracy=accuracy)


def measure_on_ray(spec: CandidateSpec, tasks: Sequence[Task], *, error: bool, accuracy: bool,
                   address: str | None, workers: int | None, desc: str = "candidates") -> list[Measured]:
    """Measure ``tasks`` on Ray: join the cluster at ``address``, or start a local one of ``workers`` CPUs;
    at most ``workers`` candidates run at a time.

    Raises:
        ConfigError: Ray is not installed, or the cluster cannot be reached.
        OnnxPruneError: candidates that failed after every retry (named).
    """
    results, failed = map_on_ray(_measure, spec, [(t, error, accuracy) for t in tasks], workers=workers,
                                 address=address, desc=desc)
    if failed:
        names = [f"group {tasks[i][0]} at ratio {tasks[i][1]:g} ({type(exc).__name__})" for i, exc in failed]
        raise OnnxPruneError(f"{len(failed)} of {len(tasks)} candidates failed on Ray (each retried up to "
                             f"{MAX_RETRIES} times when its worker died): {', '.join(names[:10])}"
                             f"{' ...' if len(names) > 10 else ''}")
    return [r for r in results if r is not None]
