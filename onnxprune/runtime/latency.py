"""Latency tables: small models timed in onnxruntime, cached per machine, provider and model.

Why: the widths a pruned model keeps decide whether it runs faster, and only a measurement on the
machine and provider it will run on can say which widths are fast (MACs are not time). The structured
layer builds one-layer models per group and width (:mod:`onnxprune.structured.layer_models`); this module
times them fairly (every candidate of one group alternately, round after round, medians, so a slow phase
of a shared machine hits all candidates alike) within a time budget, and keeps the results in a user
cache folder so a second prune of the same model on the same machine costs nothing.

Cache: ``$ONNXPRUNE_CACHE_DIR``, else ``$XDG_CACHE_HOME/onnxprune/latency``, else
``~/.cache/onnxprune/latency``; one JSON file per machine, provider, threads, onnxruntime version and model
fingerprint, written atomically. A cache that cannot be read or written is ignored with a log line: a
cache is never a reason to fail a prune.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from onnx import ModelProto

from onnxprune.core.errors import OnnxPruneError, OutputError
from onnxprune.core.io import write_text_atomic

log = logging.getLogger(__name__)

#: 2: layer times are read less an empty run's, which version 1 tables lack; quick sets take more rounds.
#: 3: sessions timed in turn no longer spin-wait (``runtime.session.ALTERNATED_SPINNING``).
CACHE_VERSION = 3
#: Rounds per candidate set (each round runs every candidate once) and untimed runs before them; a set
#: whose rounds take long stops after ``MIN_ROUNDS`` once ``SET_SECONDS`` have passed (big layers are
#: steady enough, and the budget then covers more groups).
ROUNDS = 9
MIN_ROUNDS = 3
SET_SECONDS = 0.3
WARMUP = 2
#: Sets whose rounds are this quick go on until about ``FILL_SECONDS`` have passed (at most ``MAX_ROUNDS``
#: rounds): a layer of 15 us timed 9 times is mostly noise (the digits MLP's layer table predicted 0.95x in
#: one run and 1.11x in another for the same plan), and 200 rounds of it cost 10 ms.
FILL_SECONDS = 0.05
MAX_ROUNDS = 201
#: ``fastest`` timings take the median instead once this many rounds were made.
MEDIAN_ROUNDS = 15

@dataclass(frozen=True)
class AsServed:
    """A whole model to time as the user runs it: its own inputs (dynamic axes stay dynamic), fed at ``batch``
    with ``dims`` (the benchmark's feeds).

    Why: onnxruntime plans a model whose inputs were fixed otherwise than the same model with dynamic axes,
    and the calibration that predicts the benchmark must time what the benchmark times. Measured (1 thread,
    original and its 0.3 prune alternated): the digits CNN ran 1.16x faster pruned with its dynamic batch
    and 1.02x with the batch fixed at 1; MobileNetV2 1.01x and 1.14x. A calibration of fixed-input copies
    predicted the digits CNN's 0.3 plan at 0.93x, where the benchmark measured 1.11x.
    """

    model: ModelProto
    batch: int
    dims: Mapping[str, int] = field(default_factory=dict)


#: What a timer times: a layer model with fixed shapes (fed from them), or a whole model :class:`AsServed`.
Timed = ModelProto | AsServed


def model_of(item: Timed) -> ModelProto:
    """The model a timer runs for ``item``."""
    return item.model if isinstance(item, AsServed) else item

#: ``timer(models) -> median ms per model``: how layer models are timed (injectable: tests, other providers).
Timer = Callable[[Sequence[Timed]], list[float]]


def cache_dir() -> Path:
    """The folder of latency tables (see the module doc)."""
    explicit = os.environ.get("ONNXPRUNE_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "onnxprune" / "latency"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def table_key(*, provider: str, threads: int | None, fingerprint: str) -> str:
    """Name of the cache file: machine, provider, threads, onnxruntime version and model fingerprint."""
    import onnxruntime as ort

    parts = [_cpu_name(), str(os.cpu_count()), platform.system(), provider, str(threads), ort.__version__,
             fingerprint, str(CACHE_VERSION)]
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:32]


@dataclass
class LatencyCache:
    """Measured milliseconds by ``signature@batch``; ``path`` ``None`` means no cache (``--no-cache``)."""

    path: Path | None
    entries: dict[str, float] = field(default_factory=dict)
    dirty: bool = False

    @classmethod
    def open(cls, key: str | None) -> LatencyCache:
        """Read the table of ``key`` (``None``: an empty table that is never written)."""
        if key is None:
            return cls(None)
        path = cache_dir() / f"{key}.json"
        try:
            doc = json.loads(path.read_text())
            if isinstance(doc, dict) and doc.get("version") == CACHE_VERSION:
                return cls(path, {str(k): float(v) for k, v in dict(doc.get("entries", {})).items()})
        except FileNotFoundError:
            pass
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            log.info("latency cache %s ignored (%s)", path, exc)
        return cls(path)

    def get(self, signature: str, batch: int) -> float | None:
        return self.entries.get(f"{signature}@{batch}")

    def put(self, signature: str, batch: int, ms: float) -> None:
        self.entries[f"{signature}@{batch}"] = float(ms)
        self.dirty = True

    def save(self) -> None:
        """Write the table atomically if it changed; a failure is logged, never raised."""
        if self.path is None or not self.dirty:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.path, json.dumps({"version": CACHE_VERSION, "entries": self.entries},
                                                    sort_keys=True), what="latency cache")
            self.dirty = False
        except (OSError, OutputError) as exc:
            log.info("latency cache not written (%s)", exc)


#: ``timer(models) -> ms of every round per model``: the rounds themselves, for a decision that reads the spread.
RoundTimer = Callable[[Sequence[Timed]], list[list[float]]]


def onnxruntime_round_timer(*, provider: str = "cpu", threads: int | None = None, rounds: int = ROUNDS,
                            warmup: int = WARMUP, set_seconds: float = SET_SECONDS,
                            min_rounds: int = MIN_ROUNDS, fill_s: float = FILL_SECONDS) -> RoundTimer:
    """A :data:`RoundTimer`: the models run in onnxruntime alternately, round after round (so a slow phase of a
    shared machine hits every model of a round alike), until ``set_seconds`` once ``min_rounds`` were made;
    ``rounds`` that took under ``fill_s`` are followed by more, up to ``fill_s`` (at most ``MAX_ROUNDS``)."""

    def timer(models: Sequence[Timed]) -> list[list[float]]:
        from onnxprune.runtime.bench import _runner, time_alternately
        from onnxprune.runtime.feeds import random_feeds
        from onnxprune.runtime.session import is_gpu_provider

        runs = []
        keep = []
        for item in models:
            m = model_of(item)
            feeds = (random_feeds(m, seed=0, batch=item.batch, dims=item.dims) if isinstance(item, AsServed)
                     else random_feeds(m, seed=0))
            # as the benchmark runs them: on a GPU with inputs and outputs on the device (a host copy per run
            # would be timed with every layer, and dwarf a small one)
            session, run = _runner(m, feeds, name="a layer timed alone", provider=provider, threads=threads,
                                   on_device=is_gpu_provider(provider))
            run()  # onnxruntime errors as typed errors, before any timing
            keep.append(session)
            runs.append(run)
        times = time_alternately(runs, range(rounds), warmup=warmup, stop_after_s=set_seconds, min_rounds=min_rounds)
        spent = sum(sum(t) for t in times) / 1e9
        if len(times[0]) >= rounds and 0 < spent < fill_s:
            more = min(MAX_ROUNDS - rounds, int(rounds * (fill_s / spent - 1)))
            if more > 0:
                extra = time_alternately(runs, range(more), warmup=0)
                times = [a + b for a, b in zip(times, extra, strict=True)]
        return [[v / 1e6 for v in t] for t in times]

    return timer


def summary_ms(times: Sequence[float], *, fastest: bool = False) -> float:
    """One model's time from its rounds: the median; with ``fastest``, the fastest run when fewer than
    ``MEDIAN_ROUNDS`` rounds were made (see :func:`onnxruntime_timer`)."""
    return float(np.min(times) if fastest and len(times) < MEDIAN_ROUNDS else np.median(times))


def onnxruntime_timer(*, provider: str = "cpu", threads: int | None = None, rounds: int = ROUNDS,
                      warmup: int = WARMUP, set_seconds: float = SET_SECONDS, fastest: bool = False,
                      fill_s: float = FILL_SECONDS) -> Timer:
    """A :data:`Timer` that runs the models in onnxruntime alternately and returns each one's median ms
    (rounds stop after ``set_seconds`` once ``MIN_ROUNDS`` were made); ``fastest``: each one's fastest run
    when fewer than ``MEDIAN_ROUNDS`` rounds were made, steadier than a median of few rounds of a big model on
    a loaded machine (a small model's many rounds give a steady median, the statistic the benchmark
    compares)."""
    rounds_of = onnxruntime_round_timer(provider=provider, threads=threads, rounds=rounds, warmup=warmup,
                                        set_seconds=set_seconds, fill_s=fill_s)

    def timer(models: Sequence[Timed]) -> list[float]:
        return [summary_ms(t, fastest=fastest) for t in rounds_of(models)]

    return timer


@dataclass(frozen=True)
class Measured:
    """What :func:`measure` timed: ms by signature and batch, what came from the cache, and time spent."""

    ms: Mapping[tuple[str, int], float]
    timed: int
    cached: int
    seconds: float
    complete: bool


def measure(sets: Sequence[tuple[int, Sequence[tuple[str, Timed]]]], *, timer: Timer, cache: LatencyCache,
            budget_s: float) -> Measured:
    """Time sets of candidate models, each set alternately, until the budget is spent.

    Args:
        sets: ``(batch, [(signature, model), ...])`` in priority order (the caller puts the costliest
            groups first). A set read whole from the cache is not run again; a set with any model missing
            is timed whole, its cached models too, and their entries are replaced. Why: a table's factors
            are ratios within a set (a width's time over the full width's), and a ratio of two timings
            taken minutes apart, or in two processes, carries the machine's drift between them (the
            MobileNetV2 layer table read a cut plan as slower than the full model, S 0.41 against 0.31,
            when its full widths came from an earlier run's cache and its cut widths were timed now).
        timer: how to time one set.
        cache: the cache to read and fill (saved at the end).
        budget_s: stop starting new sets after this many seconds (0: only the cache is read).

    Returns:
        A :class:`Measured`; ``complete`` is False when the budget ran out before every set was timed.
    """
    started = time.perf_counter()
    ms: dict[tuple[str, int], float] = {}
    timed = cached = 0
    complete = True
    for batch, models in sets:
        todo: dict[str, Timed] = dict(models)
        hits = {sig: hit for sig in todo if (hit := cache.get(sig, batch)) is not None}
        if len(hits) == len(todo) or time.perf_counter() - started >= budget_s:
            ms.update(((sig, batch), hit) for sig, hit in hits.items())  # out of budget: what the cache has
            cached += len(hits)
            complete = complete and len(hits) == len(todo)
            continue
        try:
            values = timer(list(todo.values()))
        except OnnxPruneError as exc:  # a layer onnxruntime cannot run alone: time it not, never fail the prune
            log.info("layer timing skipped at batch %d: %s", batch, exc)
            complete = False
            continue
        for sig, value in zip(todo, values, strict=True):
            ms[(sig, batch)] = value
            cache.put(sig, batch, value)
            timed += 1
    cache.save()
    return Measured(ms, timed, cached, time.perf_counter() - started, complete)
