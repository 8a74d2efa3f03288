"""``onnxprune bench MODEL [MODEL ...]``: latency, throughput, size and memory, models timed alternately."""

from __future__ import annotations

import argparse
import json

from onnxprune.cli.flags import add_old_spelling
from onnxprune.cli.options import add_runtime_options
from onnxprune.config import BENCH_RUNS, BENCH_WARMUP
from onnxprune.core.errors import ConfigError


def _ints(text: str, option: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise ConfigError(f"{option} '{text}' must be comma-separated integers, e.g. {option} 1,8,32") from exc
    if not values:
        raise ConfigError(f"{option} is empty; give e.g. {option} 1,8,32")
    return values


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "bench", help="time models in onnxruntime (first model = baseline)",
        description="Time every MODEL alternately (A B A B ...) in one process on each provider and batch size. "
                    "Speedups are against the first MODEL; 'ideal' is its MAC ratio and 'sp/ideal' their "
                    "quotient. Any model slower than the first is flagged. On CUDA, inputs and outputs stay on "
                    "the GPU (I/O binding).",
    )
    p.add_argument("models", nargs="+", metavar="MODEL", help=".onnx files; the first is the baseline")
    p.add_argument("--batches", default="1", metavar="B,B,...",
                   help="comma-separated batch sizes (default 1), e.g. 1,8,32")
    add_old_spelling(p, "--batch", new="--batches", dest="batches")
    p.add_argument("--warmup", type=int, default=BENCH_WARMUP,
                   help=f"untimed runs per model (default {BENCH_WARMUP})")
    p.add_argument("--runs", type=int, default=BENCH_RUNS, help=f"timed runs per model (default {BENCH_RUNS})")
    add_runtime_options(p, dim_help="value of a named dynamic input dim other than the batch (repeatable)",
                        seed_help="seed of the generated inputs (default 0)")
    p.add_argument("--cuda-graph", action="store_true",
                   help="on CUDA, replay each model as a captured CUDA graph (one launch per run; onnxruntime "
                        "refuses a model with nodes off the GPU)")
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    return p


def run(args: argparse.Namespace) -> int:
    from onnxprune.config import parse_dims
    from onnxprune.runtime.bench import benchmark

    report = benchmark(args.models, providers=args.providers, batches=_ints(args.batches, "--batches"),
                       threads=args.threads, warmup=args.warmup, runs=args.runs, dims=parse_dims(args.dim),
                       seed=args.seed, cuda_graph=args.cuda_graph)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    elif not args.quiet:
        print(report.to_text())
    return 0
