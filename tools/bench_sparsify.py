"""Benchmark unstructured / N:M sparsity on a ~100 MB model against a plain ``onnx.load`` + ``onnx.save``.

Why: sparsity must cost about as much as copying the model, in time and memory, or nobody will run it in a
deployment pipeline. Each phase runs in its own subprocess so that ``ru_maxrss`` (peak resident memory) is
measured separately; times are taken inside the subprocess (interpreter start-up and imports excluded),
repeated, and the median is reported.

The parent process imports neither numpy nor onnx and builds the model in a subprocess too, because Linux
carries the parent's resident size at fork over into a child's ``ru_maxrss``.

Phases:
  baseline     onnx.load + onnx.save
  prune        io.load_model + sparsify(ModelProto) + io.save_model   (what a pipeline holding the model does)
  prune-path   sparsify(path) + io.save_model                         (sparsify loads and edits its own copy)
  nm           io.load_model + sparsify_nm(2:4) + io.save_model
  imports      only the imports (the memory floor of every phase)

Usage:
  .venv/bin/python tools/bench_sparsify.py [--size-mb 100] [--sparsity 0.5] [--scope layer] [--repeats 3]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PHASES = ("imports", "baseline", "prune", "prune-path", "nm")


def build_model(path: Path, size_mb: float, seed: int = 0) -> int:
    """Write a seeded stack of big Gemm/MatMul layers plus a Conv branch of about ``size_mb`` MB."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    r = np.random.default_rng(seed)
    d = 2048
    conv_w = r.standard_normal((512, 256, 3, 3), dtype=np.float32)
    layers = max(2, round((size_mb * 1e6 - conv_w.nbytes) / (d * d * 4)))
    inits, nodes = [numpy_helper.from_array(conv_w, "conv_w")], []
    inits.append(numpy_helper.from_array(r.standard_normal(512, dtype=np.float32), "conv_b"))
    nodes.append(helper.make_node("Conv", ["img", "conv_w", "conv_b"], ["feat"], name="conv", pads=[1, 1, 1, 1]))
    x = "x"
    for i in range(layers):
        w = r.standard_normal((d, d), dtype=np.float32) * np.float32(d**-0.5)
        out = f"h{i}"
        if i % 3 == 0:
            inits.append(numpy_helper.from_array(w, f"fc{i}_w"))
            inits.append(numpy_helper.from_array(np.zeros(d, np.float32), f"fc{i}_b"))
            nodes.append(helper.make_node("Gemm", [x, f"fc{i}_w", f"fc{i}_b"], [out], name=f"fc{i}",
                                          transB=i % 2))
        else:
            inits.append(numpy_helper.from_array(w, f"mm{i}_w"))
            nodes.append(helper.make_node("MatMul", [x, f"mm{i}_w"], [out], name=f"mm{i}"))
        x = out
    graph = helper.make_graph(
        nodes, "bench",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", d]),
         helper.make_tensor_value_info("img", TensorProto.FLOAT, ["N", 256, 8, 8])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", d]),
         helper.make_tensor_value_info("feat", TensorProto.FLOAT, ["N", 512, 8, 8])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path.stat().st_size


def run_phase(phase: str, model: Path, out: Path, sparsity: float, scope: str) -> dict[str, float]:
    """One phase in this process; returns seconds, peak RSS (bytes) and, for ``prune``, the seconds of
    its load / sparsify / save steps."""
    import onnx

    from onnxprune.core import io
    from onnxprune.sparse.sparsify import sparsify, sparsify_nm

    parts: dict[str, float] = {}
    start = time.perf_counter()
    if phase == "baseline":
        m = onnx.load(str(model))
        onnx.save(m, str(out))
    elif phase == "prune":
        m = io.load_model(model)
        loaded = time.perf_counter()
        result = sparsify(m, sparsity=sparsity, scope=scope)
        del m
        pruned = time.perf_counter()
        io.save_model(result.model, out)
        parts = {"load": loaded - start, "sparsify": pruned - loaded, "save": time.perf_counter() - pruned}
    elif phase == "prune-path":
        io.save_model(sparsify(model, sparsity=sparsity, scope=scope).model, out)
    elif phase == "nm":
        m = io.load_model(model)
        result = sparsify_nm(m, n=2, m=4)
        del m
        io.save_model(result.model, out)
    seconds = time.perf_counter() - start
    # ru_maxrss is in KiB on Linux.
    return {"seconds": seconds, "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, **parts}


def measure(phase: str, model: Path, out: Path, sparsity: float, scope: str) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--phase", phase, "--model", str(model), "--out", str(out),
           "--sparsity", str(sparsity), "--scope", scope]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=float, default=100.0)
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--scope", choices=("layer", "global"), default="layer")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None, help="where to write models (default: a temp dir)")
    parser.add_argument("--phase", choices=(*PHASES, "build"), help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.phase == "build":
        print(json.dumps({"size": build_model(args.model, args.size_mb)}))
        return 0
    if args.phase:
        print(json.dumps(run_phase(args.phase, args.model, args.out, args.sparsity, args.scope)))
        return 0

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        model = Path(tmp) / "bench.onnx"
        build = [sys.executable, __file__, "--phase", "build", "--model", str(model), "--size-mb", str(args.size_mb)]
        size = json.loads(subprocess.run(build, capture_output=True, text=True, check=True).stdout)["size"]
        print(f"date:     {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
        print(f"machine:  {platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}, "
              f"Python {platform.python_version()}")
        print(f"command:  {shlex.join([Path(sys.executable).name, *sys.argv])}")
        print(f"model:    {size / 1e6:.1f} MB, sparsity {args.sparsity} ({args.scope} scope), "
              f"median of {args.repeats} runs per phase")
        results: dict[str, list[dict[str, float]]] = {p: [] for p in PHASES}
        for _ in range(args.repeats):  # interleave phases so machine noise hits them alike
            for phase in PHASES:
                out = Path(tmp) / f"{phase}.onnx"
                results[phase].append(measure(phase, model, out, args.sparsity, args.scope))
                out.unlink(missing_ok=True)
        med = {p: {k: statistics.median(r[k] for r in runs) for k in ("seconds", "peak_rss")}
               for p, runs in results.items()}
        base = med["baseline"]["seconds"]
        print(f"{'phase':<12}{'seconds':>9}{'x baseline':>12}{'peak RSS MB':>13}{'RSS / model':>13}")
        for phase in PHASES:
            sec, rss = med[phase]["seconds"], med[phase]["peak_rss"]
            ratio = "" if phase == "imports" else f"{sec / base:.2f}"
            print(f"{phase:<12}{sec:>9.3f}{ratio:>12}{rss / 1e6:>13.1f}{rss / size:>13.2f}")
        steps = {k: statistics.median(r[k] for r in results["prune"]) for k in ("load", "sparsify", "save")}
        print("prune steps (median s): " + ", ".join(f"{k} {v:.3f}" for k, v in steps.items())
              + "  (io.load_model runs onnx.checker; io.save_model fsyncs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
