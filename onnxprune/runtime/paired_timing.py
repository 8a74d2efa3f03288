"""Two models timed in alternating pair order, for the confirmation of a slower verdict.

Why not :func:`onnxprune.runtime.bench.benchmark` again: it runs the models in the same order every round
(original, then pruned), so whatever running second costs, and a load that rises within a round, lands on
the pruned model every time. Here round ``i`` runs the pruned model first when ``i`` is even and second
when it is odd, so consecutive rounds form balanced blocks (``P O | O P``) that
:func:`onnxprune.runtime.speed_verdict.confirm_verdict` reads. Fresh sessions, the benchmark's inputs
(same seed and dims), no memory probe.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from onnx import ModelProto

from onnxprune.core.io import load_model, save_model


def time_pair(original: str | os.PathLike[str] | ModelProto, pruned: str | os.PathLike[str] | ModelProto, *,
              provider: str, batch: int, threads: int | None, dims: Mapping[str, int] | None = None,
              seed: int = 0, rounds: int = 200, min_rounds: int = 20, set_seconds: float = 3.0,
              warmup: int = 3) -> tuple[list[float], list[float], float]:
    """``(original ms, pruned ms, seconds)``: one run of each per round, pair order alternating (pruned first
    in even rounds); stops after ``rounds``, or once ``set_seconds`` passed after ``min_rounds`` (always an
    even number of rounds, so every block is whole)."""
    from onnxprune.runtime.bench import _runner
    from onnxprune.runtime.dims import resolve_dims
    from onnxprune.runtime.feeds import random_feeds
    from onnxprune.runtime.session import is_gpu_provider

    started = time.perf_counter()
    on_device = is_gpu_provider(provider)
    with tempfile.TemporaryDirectory(prefix="onnxprune-confirm-") as tmp:
        paths = []
        for k, source in enumerate((original, pruned)):
            if isinstance(source, ModelProto):
                paths.append(save_model(source, Path(tmp) / f"{k}.onnx"))
            else:
                paths.append(Path(source))
        resolved = resolve_dims(load_model(paths[0]), dims=dict(dims or {}), seed=seed).dims
        runs = []
        sessions = []
        for name, path in zip(("original", "pruned"), paths, strict=True):
            feeds = random_feeds(path, seed=seed, batch=batch, dims=resolved)
            session, run = _runner(path, feeds, name=name, provider=provider, threads=threads, on_device=on_device)
            sessions.append(session)
            runs.append(run)
        for _ in range(warmup):
            for run in runs:
                run()
        times: tuple[list[float], list[float]] = ([], [])
        clock = time.perf_counter_ns
        t_start = clock()
        for i in range(rounds - rounds % 2):
            if i % 2 == 0 and i >= min_rounds and clock() - t_start > set_seconds * 1e9:
                break
            for k in ((1, 0) if i % 2 == 0 else (0, 1)):
                t0 = clock()
                runs[k]()
                times[k].append((clock() - t0) / 1e6)
        del sessions, runs
    return times[0], times[1], time.perf_counter() - started
