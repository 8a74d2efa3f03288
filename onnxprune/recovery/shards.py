"""Calibration over shards of a large ``.npz``: each worker reduces its sample range, the driver sums.

Why this module exists: a calibration pass over a big data set is one long onnxruntime loop. Every statistic
:func:`onnxprune.recovery.calibrate.collect_stats` keeps is a sum over samples (per-channel sums, Gram
matrices ``XᵀX`` and column sums), so sample ranges can be reduced independently, in worker processes or on
Ray, and added up in shard order: the result equals the single-process one up to float64 round-off, and
does not depend on the number of workers. Workers receive the model once (a worker process's initializer, or
Ray's object store) and the file *path*, and read only their range.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from onnx import ModelProto

from onnxprune.core.errors import CalibrationError, ConfigError
from onnxprune.core.io import load_model
from onnxprune.recovery.calibrate import ActivationStats, ChannelStats, GramStats, collect_stats
from onnxprune.recovery.executor import check_executor


@dataclass(frozen=True)
class _Shard:
    """One sample range to reduce (the model travels separately, once per worker)."""

    path: str
    start: int
    stop: int
    tensors: dict[str, int | None]
    gram_for: tuple[str, ...]
    batch_size: int
    gram_samples: int | None = None  # of this shard's samples (see collect_stats)


def _parse(model: bytes) -> ModelProto:
    m = ModelProto()
    m.ParseFromString(model)
    return m


def _reduce_shard(model: ModelProto, shard: _Shard) -> ActivationStats:
    from onnxprune.runtime.feeds import iter_batches, load_npz_feeds

    feeds = {k: v[shard.start:shard.stop] for k, v in load_npz_feeds(shard.path, model).items()}
    return collect_stats(model, list(iter_batches(feeds, shard.batch_size)), tensors=shard.tensors,
                         gram_for=shard.gram_for, threads=1, gram_samples=shard.gram_samples)


_worker_model: ModelProto | None = None


def _init_worker(model: bytes) -> None:
    global _worker_model
    _worker_model = _parse(model)


def _reduce_in_worker(shard: _Shard) -> ActivationStats:
    assert _worker_model is not None  # set by _init_worker in every worker process
    return _reduce_shard(_worker_model, shard)


def _reduce_on_ray(box: list[Any], shard: _Shard) -> ActivationStats:
    from onnxprune.recovery.ray_executor import shared

    return _reduce_shard(shared(box, _parse), shard)


def merge_stats(parts: Sequence[ActivationStats]) -> ActivationStats:
    """Sum statistics reduced over disjoint sample ranges into those of all samples together.

    Raises:
        CalibrationError: no parts, or parts that measured different tensors, layers or widths.
    """
    if not parts:
        raise CalibrationError("no calibration shard was reduced; the data holds no samples")
    first = parts[0]
    channels: dict[str, ChannelStats] = {}
    for name, c0 in first.channels.items():
        cs = [p.channels.get(name) for p in parts]
        if any(c is None or c.channels != c0.channels or c.axis != c0.axis for c in cs):
            raise CalibrationError(f"calibration shards disagree on tensor '{name}'")
        present = [c for c in cs if c is not None]
        count = sum(c.count for c in present)
        pooled = {f: np.sum([getattr(c, f) * c.count for c in present], axis=0) / count
                  for f in ("mean", "mean_sq", "mean_abs", "zero_frac")}
        channels[name] = ChannelStats(tensor=name, axis=c0.axis, channels=c0.channels, count=count,
                                      samples=sum(c.samples for c in present), **pooled)
    grams: dict[str, GramStats] = {}
    with_grams = [p for p in parts if p.grams]  # shards past collect_stats' gram_samples hold none
    for name, g0 in (with_grams[0].grams if with_grams else {}).items():
        gs = [p.grams.get(name) for p in with_grams]
        if any(g is None or g.gram.shape != g0.gram.shape for g in gs):
            raise CalibrationError(f"calibration shards disagree on layer '{name}'")
        grams[name] = GramStats(node=name, tensor=g0.tensor, kind=g0.kind, groups=g0.groups,
                                gram=np.sum([g.gram for g in gs if g is not None], axis=0),
                                col_sum=np.sum([g.col_sum for g in gs if g is not None], axis=0),
                                rows=sum(g.rows for g in gs if g is not None), kernel=g0.kernel)
    return ActivationStats(channels=channels, grams=grams, samples=sum(p.samples for p in parts))


def collect_stats_sharded(
    model: str | os.PathLike[str] | ModelProto,
    data: str | os.PathLike[str],
    *,
    shards: int,
    tensors: Sequence[str] | Mapping[str, int | None] = (),
    gram_for: Sequence[str] = (),
    batch_size: int = 32,
    executor: str = "processes",
    ray_address: str | None = None,
    workers: int | None = None,
    max_samples: int | None = None,
    gram_samples: int | None = None,
) -> ActivationStats:
    """:func:`~onnxprune.recovery.calibrate.collect_stats` over ``shards`` sample ranges of an npz, reduced
    in parallel (``local``, ``processes`` or ``ray``) and summed (:func:`merge_stats`).

    ``workers`` bounds the shards reduced at a time (default: one per core, or every shard on Ray); the
    result depends on ``shards`` only. Ranges start at multiples of the batch (the model's fixed batch, else
    ``batch_size``), so every shard runs the batches a single pass would; ``max_samples`` reads only the first
    samples (as :func:`~onnxprune.recovery.calibrate.iter_feeds` does); ``gram_samples`` accumulates the Grams on
the batches starting before that many samples, as the single pass does (a shard's batches are the single
pass's).

    Raises:
        ConfigError: ``shards`` below 1, unknown executor, Ray missing or unreachable; CalibrationError: bad
        data, or (Ray) shards that failed after every retry, named.

    Example:
        >>> stats = collect_stats_sharded("cnn.onnx", "big.npz", shards=8, gram_for=["conv2"])  # doctest: +SKIP
    """
    check_executor(executor, workers)
    if shards < 1:
        raise ConfigError(f"shards must be >= 1, got {shards}")
    m = load_model(model, check=False)
    from onnxprune.recovery.calibrate import count_samples

    if max_samples is not None and max_samples < 1:
        raise ConfigError(f"max_samples must be >= 1, got {max_samples}")
    n = count_samples(data, max_samples)
    if not n:
        raise CalibrationError(f"{data}: no samples to calibrate on; give an npz whose arrays have samples")
    from onnxprune.runtime.feeds import fixed_batch_size, input_specs

    step = fixed_batch_size(input_specs(m)) or batch_size
    batches = -(-n // step)
    cuts = np.linspace(0, batches, min(shards, batches) + 1).astype(int) * step
    bounds = np.minimum(cuts, n)
    axes = dict(tensors) if isinstance(tensors, Mapping) else dict.fromkeys(tensors)
    jobs = [_Shard(str(data), int(a), int(b), axes, tuple(gram_for), step,
                   None if gram_samples is None else max(0, gram_samples - int(a)))
            for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]
    if executor == "local" or len(jobs) == 1:
        parts = [_reduce_shard(m, j) for j in jobs]
    elif executor == "processes":
        import multiprocessing

        with ProcessPoolExecutor(max_workers=min(len(jobs), workers or os.cpu_count() or 1),
                                 mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
                                 initargs=(m.SerializeToString(),)) as pool:
            parts = list(pool.map(_reduce_in_worker, jobs))
    else:
        from onnxprune.recovery.ray_executor import MAX_RETRIES, map_on_ray

        got, failed = map_on_ray(_reduce_on_ray, m.SerializeToString(), jobs, workers=workers, address=ray_address,
                                 desc="calibration shards")
        if failed:
            names = ", ".join(f"shard {i} (samples {jobs[i].start}-{jobs[i].stop}: {type(exc).__name__})"
                              for i, exc in failed)
            raise CalibrationError(f"{len(failed)} of {len(jobs)} calibration shards failed on Ray (each retried "
                                   f"up to {MAX_RETRIES} times when its worker died): {names}")
        parts = [p for p in got if p is not None]
    return merge_stats(parts)
