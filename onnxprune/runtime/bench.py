"""Latency, throughput, size and memory of models in onnxruntime, timed fairly against each other.

Why this module exists: "pruned to half the MACs" means nothing until the pruned model is measured
beside the original on the same machine. On a shared, noisy machine two models timed one after the
other see different loads, so ``benchmark`` times them **alternately** (A B A B ...) in one process and
drift hits both alike. Each model's speedup over the first model is set against its *ideal* speedup,
the MAC ratio from :func:`onnxprune.core.stats.model_stats`; their quotient (the efficiency) shows how much
of the saved compute the runtime turns into time, and any pruned model slower than the first is flagged.

How things are measured:

* Latency: wall time of one ``session.run`` (``time.perf_counter_ns``) after ``warmup`` untimed runs;
  p50/p90/p99 over ``runs`` runs. Throughput = batch / p50 latency (the median, so that a few stalls
  on a shared machine do not move it).
* CUDA (and TensorRT): inputs are copied to the GPU once and bound with I/O binding, outputs stay on the
  GPU, so the timed run is the model's cost, not host↔device copies.
* Memory: peak resident-set growth while creating the session and running it once at that batch,
  measured in a fresh Python subprocess per model × provider × batch (in one process, memory freed by an
  earlier model is reused and hides a later model's cost). Linux: ``/proc/self/clear_refs`` resets
  ``VmHWM`` after imports and input generation; growth = ``VmHWM`` after minus ``VmRSS`` before. Host
  memory only (not GPU memory); ``None`` where the OS offers no such counters or with ``memory=False``.
"""

from __future__ import annotations

import dataclasses
import datetime
import gc
import logging
import math
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from onnx import ModelProto

from onnxprune.core.errors import ConfigError
from onnxprune.core.io import file_size, load_model, save_model
from onnxprune.core.progress import progress
from onnxprune.core.stats import model_stats
from onnxprune.runtime.bench_verdict import NOISE_ADVICE, bench_flags
from onnxprune.runtime.feeds import fixed_batch_size, input_specs, random_feeds

log = logging.getLogger(__name__)

MEMORY_METHOD = ("peak RSS growth while creating the session and running it once, in a fresh subprocess "
                 "per model and batch (VmHWM reset via /proc/self/clear_refs, minus VmRSS before); "
                 "host memory only")
HOST_TIMING = "session.run on host arrays (input/output copies included, as an application sees them)"
DEVICE_TIMING = "I/O binding with inputs and outputs resident on the GPU (no host copies timed)"


# -- memory ----------------------------------------------------------------------------------------
def _proc_status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
    except OSError:
        return False
    return True


def measure_peak_rss_growth(action: Callable[[], object]) -> tuple[object, int | None]:
    """Run ``action`` and return its result with the peak RSS growth it caused, in bytes.

    ``None`` for the growth where the OS does not allow measuring it (not Linux, or no ``clear_refs``).
    """
    gc.collect()
    before = _proc_status_kb("VmRSS")
    reset = _reset_peak_rss()
    result = action()
    peak = _proc_status_kb("VmHWM")
    if before is None or peak is None or not reset:
        return result, None
    return result, max(0, peak - before) * 1024


# -- results ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelInfo:
    """Static facts about one benchmarked model."""

    name: str
    source: str
    params: int
    macs: int
    file_size: int
    fixed_batch: int | None

    def to_dict(self) -> dict[str, object]:
        """JSON-able dict."""
        return {"name": self.name, "source": self.source, "params": self.params, "macs": self.macs,
                "file_size": self.file_size, "fixed_batch": self.fixed_batch}


@dataclass(frozen=True)
class BenchResult:
    """Timing of one model on one provider at one batch size.

    Attributes:
        speedup: first model's p50 / this model's p50 (1.0 for the first model; ``None`` when the first
            model was skipped at this batch).
        ideal_speedup: first model's MACs / this model's MACs (``None`` when MACs are unknown/zero).
        efficiency: speedup / ideal_speedup.
        slower: True when this (non-first) model is slower than the first.
        peak_rss_bytes: see the module doc; ``None`` where not measurable.
        times_ms: every timed run's latency in run order; run ``i`` of every model of one case was timed
            in the same round, so ``paired_ratio`` can compare two models round by round.
    """

    model: str
    provider: str
    batch: int
    runs: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    throughput: float
    peak_rss_bytes: int | None
    io_binding: bool
    speedup: float | None = None
    ideal_speedup: float | None = None
    efficiency: float | None = None
    slower: bool = False
    times_ms: tuple[float, ...] = ()

    def to_dict(self) -> dict[str, object]:
        """JSON-able dict."""
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        out["times_ms"] = list(self.times_ms)
        return out


@dataclass(frozen=True)
class BenchSkip:
    """A model × provider × batch that was not run, and why."""

    model: str
    provider: str
    batch: int
    reason: str

    def to_dict(self) -> dict[str, object]:
        """JSON-able dict."""
        return {"model": self.model, "provider": self.provider, "batch": self.batch, "reason": self.reason}


@dataclass(frozen=True)
class BenchCase:
    """One provider × batch: which models ran, and the order of their timed runs (for auditing)."""

    provider: str
    batch: int
    order: tuple[str, ...]

    def to_dict(self) -> dict[str, object]:
        """JSON-able dict."""
        return {"provider": self.provider, "batch": self.batch, "order": list(self.order)}


@dataclass(frozen=True)
class BenchReport:
    """Everything ``benchmark`` measured; ``to_dict()`` is the ``--json`` output."""

    models: tuple[ModelInfo, ...]
    results: tuple[BenchResult, ...]
    skipped: tuple[BenchSkip, ...]
    cases: tuple[BenchCase, ...]
    settings: dict[str, object] = field(default_factory=dict)
    machine: dict[str, object] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def result(self, model: str, provider: str, batch: int) -> BenchResult:
        """The result of one model × provider × batch.

        Raises:
            KeyError: that combination was not run.
        """
        for r in self.results:
            if (r.model, r.provider, r.batch) == (model, provider, batch):
                return r
        raise KeyError((model, provider, batch))

    @property
    def slower(self) -> tuple[BenchResult, ...]:
        """Results of models slower than the first model."""
        return tuple(r for r in self.results if r.slower)

    def to_dict(self) -> dict[str, object]:
        """JSON-able dict."""
        return {
            "models": [m.to_dict() for m in self.models],
            "results": [r.to_dict() for r in self.results],
            "skipped": [s.to_dict() for s in self.skipped],
            "cases": [c.to_dict() for c in self.cases],
            "settings": dict(self.settings),
            "machine": dict(self.machine),
            "notes": list(self.notes),
            "flags": bench_flags([r.to_dict() for r in self.results]),
        }

    def to_text(self) -> str:
        """Human tables: models, then timings with speedups; notes and slower-than-first flags last."""
        return format_bench(self.to_dict())


def _num(x: object, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def format_bench(report: Mapping[str, object]) -> str:
    """Render a ``BenchReport.to_dict()`` (also as read back from JSON) as plain-text tables."""
    models = list(report.get("models", []))  # type: ignore[call-overload]
    results = list(report.get("results", []))  # type: ignore[call-overload]
    lines = [f"{'model':<16} {'params':>12} {'MACs':>15} {'file size':>12}  fixed batch"]
    for m in models:
        lines.append(f"{str(m['name'])[:16]:<16} {m['params']:>12,} {m['macs']:>15,} "
                     f"{m['file_size'] / 1e6:>10.2f}MB  {m['fixed_batch'] or '-'}")
    head = (f"{'model':<16} {'provider':<8} {'batch':>5} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} "
            f"{'items/s':>10} {'speedup':>8} {'ideal':>7} {'sp/ideal':>8} {'peak MB':>8}")
    lines += ["", head, "-" * len(head)]
    flagged = {(f["model"], f["provider"], f["batch"]): f["reasons"] for f in bench_flags(results)}
    for r in results:
        mem = r["peak_rss_bytes"]
        flag = "  SLOWER than the first model" if r["slower"] else ""
        reasons = flagged.get((r["model"], r["provider"], r["batch"]))
        if reasons:
            flag += "  " + "; ".join(reasons)
        lines.append(
            f"{str(r['model'])[:16]:<16} {r['provider']:<8} {r['batch']:>5} {r['p50_ms']:>9.3f} "
            f"{r['p90_ms']:>9.3f} {r['p99_ms']:>9.3f} {r['throughput']:>10.1f} "
            f"{_num(r['speedup'], '.2f'):>8} {_num(r['ideal_speedup'], '.2f'):>7} "
            f"{_num(r['efficiency'], '.2f'):>8} {_num(None if mem is None else mem / 2**20, '.1f'):>8}{flag}"
        )
    for s in report.get("skipped", []):  # type: ignore[attr-defined]
        lines.append(f"skipped {s['model']} on {s['provider']} at batch {s['batch']}: {s['reason']}")
    slow = [r for r in results if r["slower"]]
    if slow:
        lines.append("WARNING: slower than the first model: " + ", ".join(
            f"{r['model']} ({r['provider']}, batch {r['batch']}, speedup {r['speedup']:.2f})" for r in slow))
    if flagged:
        lines.append(f"WARNING: {NOISE_ADVICE}")
    for note in report.get("notes", []):  # type: ignore[attr-defined]
        lines.append(f"note: {note}")
    return "\n".join(lines)


# -- running ---------------------------------------------------------------------------------------
def _machine() -> dict[str, object]:
    import onnxruntime as ort

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
    }


def _percentiles(times_ns: Sequence[int]) -> tuple[float, float, float, float, float]:
    ms = np.asarray(times_ns, dtype=np.float64) / 1e6
    p50, p90, p99 = (float(v) for v in np.percentile(ms, [50, 90, 99]))
    return p50, p90, p99, float(ms.mean()), float(ms.min())


def _positive(name: str, values: Sequence[int], minimum: int = 1) -> None:
    for v in values:
        if not isinstance(v, (int, np.integer)) or v < minimum:
            raise ConfigError(f"{name} must be integers >= {minimum}, got {list(values)}")


def _names(models: Sequence[object], names: Sequence[str] | None) -> list[str]:
    if names is not None:
        if len(names) != len(models):
            raise ConfigError(f"got {len(names)} names for {len(models)} models; give one name per model")
        out = [str(n) for n in names]
    else:
        out = []
        for i, m in enumerate(models):
            out.append((m.graph.name or f"model{i}") if isinstance(m, ModelProto) else Path(str(m)).stem)
    seen: dict[str, int] = {}
    unique = []
    for n in out:  # two files both named model.onnx must still be told apart
        seen[n] = seen.get(n, 0) + 1
        unique.append(n if seen[n] == 1 else f"{n}#{seen[n]}")
    return unique


def benchmark(
    models: Sequence[str | os.PathLike[str] | ModelProto],
    *,
    providers: Sequence[str] = ("cpu",),
    batches: Sequence[int] = (1,),
    threads: int | None = None,
    warmup: int = 5,
    runs: int = 50,
    dims: Mapping[str, int] | None = None,
    seed: int = 0,
    names: Sequence[str] | None = None,
    memory: bool = True,
    cuda_graph: bool = False,
    min_seconds: float = 0.0,
    max_runs: int | None = None,
) -> BenchReport:
    """Time ``models`` alternately per provider and batch; the first model is the baseline.

    Args:
        models: paths or ``ModelProto`` s (not modified); the first one is the reference for speedups.
        providers: short provider names (``cpu``, ``cuda``, ...).
        batches: batch sizes; a model whose batch dim is fixed to another value is skipped with a note.
        threads: onnxruntime intra-op threads (``None``: its default, one per core).
        warmup: untimed runs per model before timing.
        runs: timed runs per model.
        dims: values of named dynamic dims other than the batch (``--dim``).
        seed: seed of the generated inputs (the same inputs for every model).
        names: display names (default: file stems or graph names).
        memory: measure each session's peak memory (one short subprocess per model × provider × batch).
        cuda_graph: on CUDA, run each model as a captured CUDA graph (see
            :func:`~onnxprune.runtime.session.create_session`); other providers run as usual.
        min_seconds: after ``runs`` rounds, go on until this much time was spent timing each provider and
            batch, up to ``max_runs`` rounds (default ``runs``: no more). Why: 30 rounds of a model that runs in
            0.1 ms take 6 ms, and their median's interval is too wide to tell a 5% slowdown from noise.
        max_runs: the most rounds ``min_seconds`` may add up to.

    Returns:
        A :class:`BenchReport`.

    Raises:
        ConfigError: bad options, an unavailable provider, or a dynamic dim without a value.
        ModelLoadError: a model file is missing or unreadable.
        UnsupportedModelError: onnxruntime cannot load or run a model.

    Example:
        >>> report = benchmark(["model.onnx", "pruned.onnx"], batches=(1, 8), runs=50)  # doctest: +SKIP
        >>> print(report.to_text())  # doctest: +SKIP
    """
    from onnxprune.runtime.session import is_gpu_provider, parse_providers, warm_up_provider

    if not models:
        raise ConfigError("no model to benchmark; pass at least one .onnx file")
    _positive("batches", list(batches))
    _positive("runs", [runs])
    _positive("warmup", [warmup], minimum=0)
    most = max(runs, max_runs or runs) if min_seconds > 0 else runs  # the rounds a case may reach
    provider_names = parse_providers(providers)
    if cuda_graph and "cuda" not in provider_names:
        raise ConfigError("CUDA graphs need the CUDA provider; add --providers cuda (or drop --cuda-graph)")
    labels = _names(models, names)
    dims = dict(dims or {})

    with tempfile.TemporaryDirectory(prefix="onnxprune-bench-") as tmp:
        paths: list[Path] = []
        infos: list[ModelInfo] = []
        for label, source in zip(labels, models, strict=True):
            proto = load_model(source)
            if not paths:  # dynamic axes without --dim: the sizes the first model accepts (runtime/dims.py)
                from onnxprune.runtime.dims import resolve_dims

                dims = resolve_dims(proto, dims=dims, seed=seed).dims
            if isinstance(source, ModelProto):
                # Sessions load from a file, so the session's memory excludes a serialized copy.
                path = save_model(proto, Path(tmp) / f"{len(paths)}.onnx")
                src = f"<in memory: {proto.graph.name or label}>"
            else:
                path, src = Path(source), str(source)
            stats = model_stats(proto, dims=dims)
            infos.append(ModelInfo(label, src, stats.params, stats.macs, file_size(path),
                                   fixed_batch_size(input_specs(proto))))
            paths.append(path)
            del proto
        results: list[BenchResult] = []
        skipped: list[BenchSkip] = []
        cases: list[BenchCase] = []
        for provider in provider_names:
            on_device = is_gpu_provider(provider)
            warm_up_provider(provider)  # one-time runtime setup (CUDA context) is not timed
            for batch in batches:
                active: list[int] = []
                for i, info in enumerate(infos):
                    if info.fixed_batch is not None and info.fixed_batch != batch:
                        reason = (f"the model's batch dim is fixed to {info.fixed_batch}; "
                                  f"re-export it with a dynamic batch to time batch {batch}")
                        skipped.append(BenchSkip(info.name, provider, batch, reason))
                        log.info("skipping %s at batch %d: %s", info.name, batch, reason)
                    else:
                        active.append(i)
                if not active:
                    continue
                case_results, order = _time_case(
                    [infos[i] for i in active], [paths[i] for i in active], provider=provider, batch=batch,
                    threads=threads, warmup=warmup, runs=runs, dims=dims, seed=seed, on_device=on_device,
                    memory=memory, cuda_graph=cuda_graph and provider == "cuda", min_seconds=min_seconds,
                    max_runs=most,
                )
                cases.append(BenchCase(provider, batch, order))
                results.extend(_with_speedups(case_results, infos, baseline_active=active[0] == 0))
    notes = [f"memory: {MEMORY_METHOD}" if memory else "memory: not measured",
             "timing: models timed alternately (A B A B ...) in one process; p50 drives the speedup"]
    for provider in provider_names:
        notes.append(f"{provider}: {DEVICE_TIMING if is_gpu_provider(provider) else HOST_TIMING}"
                     f"{'; replayed as a CUDA graph' if cuda_graph and provider == 'cuda' else ''}")
    settings = {"providers": list(provider_names), "batches": [int(b) for b in batches], "threads": threads,
                "warmup": warmup, "runs": runs, "dims": dims, "seed": seed, "memory": memory,
                "cuda_graph": cuda_graph}
    if most > runs:  # each result's runs say how many rounds were made
        settings.update(min_seconds=min_seconds, max_runs=most)
    return BenchReport(tuple(infos), tuple(results), tuple(skipped), tuple(cases), settings, _machine(),
                       tuple(notes))


def _runner(path: Path | ModelProto, feeds: dict[str, np.ndarray], *, name: str, provider: str,
            threads: int | None, on_device: bool, cuda_graph: bool = False) -> tuple[object, Callable[[], object]]:
    """A session and a no-argument function that runs it once on ``feeds`` (a session timed in turn with
    others: no spin-waiting threads, see :data:`~onnxprune.runtime.session.ALTERNATED_SPINNING`). On a GPU the
    inputs and outputs stay on the device (I/O binding), so no host copy is timed."""
    from onnxprune.runtime.session import DeviceRunner, create_session, run_session

    outputs = None
    if cuda_graph:  # the outputs' shapes, from a plain run, so the graph's buffers are bound before its capture
        plain = create_session(path, provider=provider, threads=threads, name=name)
        outputs = list(run_session(plain, feeds, label=name).values())
        del plain
    session = create_session(path, provider=provider, threads=threads, name=name, alternated=True,
                             cuda_graph=cuda_graph)
    if on_device:
        return session, DeviceRunner(session, feeds, outputs=outputs).run

    def run() -> object:
        return run_session(session, feeds, label=name)

    return session, run


def _memory_child() -> None:
    """Entry point of the memory-measuring subprocess: argv[1] is a JSON dict of ``_runner`` arguments."""
    import json
    import sys

    from onnxprune.runtime.session import warm_up_provider

    spec = json.loads(sys.argv[1])
    warm_up_provider(spec["provider"])
    feeds = random_feeds(spec["path"], seed=spec["seed"], batch=spec["batch"], dims=spec["dims"])

    def start() -> object:
        _, run = _runner(Path(spec["path"]), feeds, name=spec["name"], provider=spec["provider"],
                         threads=spec["threads"], on_device=spec["on_device"])
        return run()

    _, grew = measure_peak_rss_growth(start)
    sys.stdout.write(json.dumps({"peak_rss_growth": grew}) + "\n")


def session_peak_memory(path: Path, *, name: str, provider: str, batch: int, threads: int | None,
                        dims: Mapping[str, int], seed: int, on_device: bool) -> int | None:
    """Peak RSS growth (bytes) of creating and running a session once, in a fresh subprocess.

    ``None`` where it cannot be measured (no ``/proc`` counters, or the subprocess failed: the failure is
    logged, and the timing run in this process reports the real error if there is one).
    """
    import json
    import subprocess
    import sys

    spec = {"path": str(path), "name": name, "provider": provider, "batch": batch, "threads": threads,
            "dims": dict(dims), "seed": seed, "on_device": on_device}
    code = "from onnxprune.runtime.bench import _memory_child; _memory_child()"
    try:
        done = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True,
                              timeout=600, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("memory of %s not measured: %s", name, exc)
        return None
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        log.warning("memory of %s not measured: the subprocess failed (%s)", name, tail)
        return None
    value = json.loads(done.stdout.strip().splitlines()[-1])["peak_rss_growth"]
    return None if value is None else int(value)


def _time_case(infos: list[ModelInfo], paths: list[Path], *, provider: str, batch: int, threads: int | None,
               warmup: int, runs: int, dims: Mapping[str, int], seed: int, on_device: bool, memory: bool,
               cuda_graph: bool = False, min_seconds: float = 0.0, max_runs: int | None = None
               ) -> tuple[list[BenchResult], tuple[str, ...]]:
    """Measure each model's session memory (subprocess), warm up, then time the models alternately: ``runs``
    rounds, then, up to ``max_runs`` (default ``runs``), more until ``min_seconds`` were spent (see
    :func:`benchmark`)."""
    runners: list[Callable[[], object]] = []
    peaks: list[int | None] = []
    keep_alive: list[object] = []
    for info, path in zip(infos, paths, strict=True):
        if memory:
            peaks.append(session_peak_memory(path, name=info.name, provider=provider, batch=batch,
                                             threads=threads, dims=dims, seed=seed, on_device=on_device))
        else:
            peaks.append(None)
        feeds = random_feeds(path, seed=seed, batch=batch, dims=dims)
        session, run = _runner(path, feeds, name=info.name, provider=provider, threads=threads,
                               on_device=on_device, cuda_graph=cuda_graph)
        run()
        keep_alive.append(session)
        runners.append(run)
    most = max_runs or runs
    times = time_alternately(runners, progress(range(most), desc=f"bench {provider} batch {batch}", total=most),
                             warmup=warmup, stop_after_s=min_seconds if most > runs else None, min_rounds=runs)
    runs = len(times[0])
    order = [info.name for _ in range(runs) for info in infos]
    results = []
    for k, info in enumerate(infos):
        p50, p90, p99, mean, fastest = _percentiles(times[k])
        results.append(BenchResult(info.name, provider, batch, runs, p50, p90, p99, mean, fastest,
                                   batch / (p50 / 1e3) if p50 > 0 else math.inf, peaks[k], on_device,
                                   times_ms=tuple(t / 1e6 for t in times[k])))
    del keep_alive
    return results, tuple(order)


def time_alternately(runners: Sequence[Callable[[], object]], rounds: Iterable[int], *, warmup: int,
                     stop_after_s: float | None = None, min_rounds: int = 0) -> list[list[int]]:
    """Warm each runner up, then run them in turn once per round, timing every run (ns, one list per runner).

    Why alternate: a slow phase of a shared machine then hits every model of a round alike. ``stop_after_s``
    ends the rounds early once that much time has passed and ``min_rounds`` were made (the latency table's
    time budget); the benchmark runs every round.
    """
    for _ in range(warmup):
        for run in runners:
            run()
    times: list[list[int]] = [[] for _ in runners]
    clock = time.perf_counter_ns
    started = clock()
    for i in rounds:
        if stop_after_s is not None and i >= min_rounds and clock() - started > stop_after_s * 1e9:
            break
        for k, run in enumerate(runners):
            t0 = clock()
            run()
            times[k].append(clock() - t0)
    return times


def paired_ratio(a: BenchResult, b: BenchResult) -> float:
    """Median over rounds of ``a``'s latency / ``b``'s latency in the same round.

    Two models of one case were timed back to back in every round, so a slow phase of a shared machine
    hits both runs of a round alike; the median of per-round ratios cancels such drift better than the
    ratio of medians.

    Raises:
        ConfigError: the two results are not from the same case (different run counts).
    """
    if len(a.times_ms) != len(b.times_ms) or not a.times_ms:
        raise ConfigError(f"{a.model} and {b.model} were not timed in the same rounds; compare one case's results")
    return float(np.median(np.asarray(a.times_ms) / np.asarray(b.times_ms)))


def _with_speedups(case: list[BenchResult], infos: Sequence[ModelInfo], *, baseline_active: bool) -> list[BenchResult]:
    """Fill speedup, ideal speedup (MAC ratio), efficiency and the slower flag against the first model."""
    if not baseline_active:
        return case
    base = case[0]
    base_macs = infos[0].macs
    macs = {i.name: i.macs for i in infos}
    out = []
    for k, r in enumerate(case):
        speedup = base.p50_ms / r.p50_ms if r.p50_ms > 0 else None
        ideal = base_macs / macs[r.model] if macs[r.model] > 0 and base_macs > 0 else None
        efficiency = speedup / ideal if speedup is not None and ideal else None
        slower = k > 0 and speedup is not None and speedup < 1.0
        out.append(dataclasses.replace(r, speedup=speedup, ideal_speedup=ideal, efficiency=efficiency,
                                       slower=slower))
    return out
