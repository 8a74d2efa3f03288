"""Peak memory and time of onnxprune on a model over 2 GB (external data), each step in its own process.

Usage:
    python tools/bench_large.py --size-gb 2.2 --workdir /tmp/onnxprune-large [--steps load,unstructured,...]
    python tools/bench_large.py --arch prenorm --size-gb 1.0 --width 4096 --steps load,structured,width

The model (a wide MLP: ``layers`` MatMul d×d weights with biases, then a small head) is generated straight
into an external data file, one layer at a time, so generating it never holds the model in memory; it is
not committed. Every step runs in a fresh subprocess and its peak resident memory comes from the kernel
(``VmHWM`` of its own address space, written at exit). The figure that matters is the growth over a
baseline process that imports the same modules and runs the same command on a tiny model: peak − baseline,
divided by the model's size on disk. Prints one Markdown table (and ``--json`` writes the rows).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

#: The steps and the command line each runs (``{model}``, ``{out}`` are filled in).
STEPS: dict[str, list[str]] = {
    "load": ["-c", "import sys; from onnxprune.core.io import load_model; load_model(sys.argv[1])", "{model}"],
    "load+save": ["-c", "import sys; from onnxprune.core.io import load_model, save_model; "
                        "save_model(load_model(sys.argv[1]), sys.argv[2], external_data=True)", "{model}", "{out}"],
    "unstructured": ["-m", "onnxprune", "prune", "{model}", "-o", "{out}", "--mode", "unstructured", "-q"],
    "unstructured-novalidate": ["-m", "onnxprune", "prune", "{model}", "-o", "{out}", "--mode", "unstructured",
                                "--no-validate", "-q"],
    "nm": ["-m", "onnxprune", "prune", "{model}", "-o", "{out}", "--mode", "nm", "-q"],
    "nm-novalidate": ["-m", "onnxprune", "prune", "{model}", "-o", "{out}", "--mode", "nm", "--no-validate", "-q"],
    "structured": ["-m", "onnxprune", "prune", "{model}", "-o", "{out}", "--ratio", "0.3", "-q"],
    "structured-novalidate": ["-m", "onnxprune", "prune", "{model}", "-o", "{out}", "--ratio", "0.3",
                              "--no-validate", "-q"],
    "width": ["-m", "onnxprune", "prune", "{model}", "-o", "{out}", "--mode", "width", "--ratio", "0.25",
              "--calib", "{calib}", "-q"],
}
#: Steps that need the pre-norm stack (``--arch prenorm``): a residual stream to slice.
STREAM_STEPS = ("width",)
DEFAULT_STEPS = ("load", "load+save", "unstructured-novalidate", "unstructured", "nm-novalidate", "nm",
                 "structured-novalidate", "structured")


@dataclass(frozen=True)
class Measurement:
    """One step: exit code, peak resident memory (bytes), wall time (seconds), stderr tail."""

    step: str
    returncode: int
    peak_bytes: int
    seconds: float
    stderr: str


class ExternalWriter:
    """Appends tensors to one external data file and returns initializers pointing into it."""

    def __init__(self, fh: Any, data_name: str) -> None:
        self.fh, self.data_name = fh, data_name

    def __call__(self, name: str, array: np.ndarray) -> TensorProto:
        offset = self.fh.tell()
        self.fh.write(array.tobytes())
        t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=list(array.shape))
        t.data_location = TensorProto.EXTERNAL
        for key, value in (("location", self.data_name), ("offset", str(offset)), ("length", str(array.nbytes))):
            entry = t.external_data.add()
            entry.key, entry.value = key, value
        return t


def _save(path: Path, nodes: list, inits: list, inputs: list, outputs: list, name: str) -> int:
    graph = helper.make_graph(nodes, name, inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="bench_large")
    model.ir_version = 8
    onnx.save(model, str(path))
    return path.stat().st_size + (path.parent / (path.name + ".data")).stat().st_size


def write_wide_mlp(path: Path, *, d: int, layers: int, d_out: int = 16, batch: int = 2, seed: int = 0) -> int:
    """Write a ``layers``-deep d×d MLP to ``path`` with its weights in ``path.name + '.data'``.

    Returns:
        The total size on disk (model file plus data file), in bytes.
    """
    rng = np.random.default_rng(seed)
    data_name = path.name + ".data"
    nodes, inits, prev = [], [], "x"
    with open(path.parent / data_name, "wb") as fh:
        external = ExternalWriter(fh, data_name)
        for i in range(layers):
            w = rng.standard_normal((d, d), dtype=np.float32)
            w *= np.float32(np.sqrt(2.0 / d))
            inits.append(external(f"fc{i}_w", w))
            del w
            inits.append(external(f"fc{i}_b", rng.standard_normal(d, dtype=np.float32) * np.float32(0.01)))
            nodes += [helper.make_node("MatMul", [prev, f"fc{i}_w"], [f"mm{i}"], name=f"fc{i}"),
                      helper.make_node("Add", [f"mm{i}", f"fc{i}_b"], [f"h{i}"], name=f"fc{i}_bias"),
                      helper.make_node("Relu", [f"h{i}"], [f"r{i}"], name=f"relu{i}")]
            prev = f"r{i}"
        inits.append(external("head_w", (rng.standard_normal((d, d_out)) / np.sqrt(d)).astype(np.float32)))
    nodes.append(helper.make_node("MatMul", [prev, "head_w"], ["out"], name="head"))
    return _save(path, nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, d])],
                 [helper.make_tensor_value_info("out", TensorProto.FLOAT, [batch, d_out])], "wide_mlp")


def write_prenorm_stack(path: Path, *, d: int, layers: int, tokens: int = 4, d_in: int = 16, d_out: int = 16,
                        batch: int = 2, seed: int = 0) -> int:
    """Write a pre-norm residual stack (``x + W2 relu(W1 LN(x))`` per block, a final LN and a head) whose
    stream of width ``d`` (after an input projection from ``d_in``) is what ``--mode width`` slices; two d×d
    weights per block, in external data."""
    rng = np.random.default_rng(seed)
    data_name = path.name + ".data"
    nodes, inits, prev = [], [], "embedded"
    with open(path.parent / data_name, "wb") as fh:
        external = ExternalWriter(fh, data_name)
        inits.append(external("embed_w", (rng.standard_normal((d_in, d)) / np.sqrt(d_in)).astype(np.float32)))
        nodes.append(helper.make_node("MatMul", ["x", "embed_w"], ["embedded"], name="embed"))

        def norm(i: str, x: str) -> str:
            inits.append(external(f"ln{i}_g", (1 + 0.1 * rng.standard_normal(d)).astype(np.float32)))
            inits.append(external(f"ln{i}_b", (0.1 * rng.standard_normal(d)).astype(np.float32)))
            nodes.append(helper.make_node("LayerNormalization", [x, f"ln{i}_g", f"ln{i}_b"], [f"n{i}"], axis=-1,
                                          name=f"ln{i}"))
            return f"n{i}"

        for i in range(layers):
            h = norm(str(i), prev)
            for k, (a, b) in enumerate(((h, f"u{i}"), (f"r{i}", f"f{i}"))):
                w = rng.standard_normal((d, d), dtype=np.float32)
                w *= np.float32(np.sqrt(1.0 / d))
                inits.append(external(f"w{i}_{k}", w))
                del w
                nodes.append(helper.make_node("MatMul", [a, f"w{i}_{k}"], [b], name=f"fc{i}_{k}"))
            nodes.insert(len(nodes) - 1, helper.make_node("Relu", [f"u{i}"], [f"r{i}"], name=f"relu{i}"))
            nodes.append(helper.make_node("Add", [prev, f"f{i}"], [f"s{i}"], name=f"residual{i}"))
            prev = f"s{i}"
        h = norm("_final", prev)
        inits.append(external("head_w", (rng.standard_normal((d, d_out)) / np.sqrt(d)).astype(np.float32)))
    nodes.append(helper.make_node("MatMul", [h, "head_w"], ["out"], name="head"))
    return _save(path, nodes, inits,
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, tokens, d_in])],
                 [helper.make_tensor_value_info("out", TensorProto.FLOAT, [batch, tokens, d_out])], "prenorm_stack")


#: Runs ``-m MODULE args`` or ``-c CODE args`` and, at exit, writes the process's VmHWM (peak resident set of
#: its own address space, in kB) to the file named by ``ONNXPRUNE_HWM_FILE``. Not ``ru_maxrss``: Linux also
#: counts the parent's resident memory at fork time in a child's ``ru_maxrss``.
_WRAPPER = """
import atexit, os, runpy, sys
def _report():
    with open("/proc/self/status") as fh:
        kb = next(line.split()[1] for line in fh if line.startswith("VmHWM"))
    with open(os.environ["ONNXPRUNE_HWM_FILE"], "w") as out:
        out.write(kb)
atexit.register(_report)
flag, target, rest = sys.argv[1], sys.argv[2], sys.argv[3:]
if flag == "-m":
    sys.argv = [target, *rest]
    runpy.run_module(target, run_name="__main__", alter_sys=True)
else:
    sys.argv = ["-c", *rest]
    exec(compile(target, "<step>", "exec"), {"__name__": "__main__"})
"""


def measure(argv: list[str], *, timeout: float = 3600.0) -> tuple[int, int, float, str]:
    """Run ``python argv...`` (``-m mod ...`` or ``-c code ...``) in a fresh process.

    Returns:
        (exit code, peak resident memory in bytes, wall seconds, stderr tail).
    """
    import tempfile

    with tempfile.NamedTemporaryFile(prefix="onnxprune-hwm-", suffix=".txt", delete=False) as fh:
        hwm_file = Path(fh.name)
    env = dict(os.environ, ONNXPRUNE_HWM_FILE=str(hwm_file))
    started = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-c", _WRAPPER, *argv], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, env=env, timeout=timeout, check=False)
        seconds = time.perf_counter() - started
        text = hwm_file.read_text().strip()
        peak = int(text) * 1024 if text else 0
    finally:
        hwm_file.unlink(missing_ok=True)
    return proc.returncode, peak, seconds, proc.stderr[-2000:]


def write_calib(path: Path, model: Path, samples: int = 8) -> None:
    """Seeded calibration inputs for ``model``'s one input (its declared shape, ``samples`` on axis 0)."""
    x = onnx.load(str(model), load_external_data=False).graph.input[0]
    dims = [samples] + [d.dim_value for d in x.type.tensor_type.shape.dim[1:]]
    np.savez(path, **{x.name: np.random.default_rng(1).standard_normal(dims).astype(np.float32)})


def run_step(step: str, model: Path, out_dir: Path) -> Measurement:
    """Run one step on ``model``, writing into an emptied ``out_dir``."""
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    calib = out_dir.parent / f"{model.stem}.calib.npz"
    if not calib.exists():
        write_calib(calib, model)
    argv = [a.format(model=model, out=out_dir / "out.onnx", calib=calib) for a in STEPS[step]]
    code, peak, seconds, err = measure(argv)
    return Measurement(step, code, peak, seconds, err)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=2.2, help="approximate model size (default 2.2)")
    parser.add_argument("--width", type=int, default=8192, help="hidden width d (default 8192: 268 MB per layer)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/onnxprune-large"))
    parser.add_argument("--steps", default=",".join(DEFAULT_STEPS))
    parser.add_argument("--arch", choices=("mlp", "prenorm"), default="mlp",
                        help="mlp: d×d layers (default); prenorm: a pre-norm residual stack (two d×d per block), "
                             "needed by the width step")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--keep", action="store_true", help="keep the generated model")
    args = parser.parse_args(argv)
    steps = [s for s in args.steps.split(",") if s]
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        parser.error(f"unknown steps {unknown}; choose from {', '.join(STEPS)}")
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    layer_bytes = 4 * args.width * args.width * (2 if args.arch == "prenorm" else 1)
    layers = max(1, round(args.size_gb * 1e9 / layer_bytes))
    if args.arch == "mlp" and any(s in STREAM_STEPS for s in steps):
        parser.error(f"steps {', '.join(STREAM_STEPS)} need a residual stream: add --arch prenorm")
    writer = "write_prenorm_stack" if args.arch == "prenorm" else "write_wide_mlp"
    model = work / "large.onnx"
    t0 = time.perf_counter()
    # Generate in a child: Linux counts a parent's resident memory at fork in its children's ru_maxrss, so
    # this process must stay small for the measurements below to be the steps' own.
    gen = ("import sys; sys.path.insert(0, sys.argv[1]); from pathlib import Path; import bench_large; "
           f"bench_large.{writer}(Path(sys.argv[2]), d=int(sys.argv[3]), layers=int(sys.argv[4]))")
    subprocess.run([sys.executable, "-c", gen, str(Path(__file__).parent), str(model), str(args.width), str(layers)],
                   check=True)
    size = model.stat().st_size + (work / (model.name + ".data")).stat().st_size
    print(f"generated {model} ({layers} layers of {args.width}x{args.width}, {size / 1e9:.3f} GB on disk) "
          f"in {time.perf_counter() - t0:.1f} s")
    tiny = work / "tiny.onnx"
    (write_prenorm_stack if args.arch == "prenorm" else write_wide_mlp)(tiny, d=64, layers=2)
    rows = []
    for step in steps:
        base = run_step(step, tiny, work / "out-tiny")
        big = run_step(step, model, work / "out")
        out_size = sum(p.stat().st_size for p in (work / "out").glob("out.onnx*"))
        growth = big.peak_bytes - base.peak_bytes
        rows.append({"step": step, "exit": big.returncode, "seconds": round(big.seconds, 1),
                     "peak_gb": round(big.peak_bytes / 1e9, 3), "baseline_gb": round(base.peak_bytes / 1e9, 3),
                     "growth_over_size": round(growth / size, 2), "peak_over_size": round(big.peak_bytes / size, 2),
                     "output_gb": round(out_size / 1e9, 3), "stderr": big.stderr.strip()[-300:]})
        print(json.dumps(rows[-1]), flush=True)
    print()
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}, onnx {onnx.__version__}, date {time.strftime('%Y-%m-%d')}")
    print(f"model: {size / 1e9:.3f} GB ({args.arch}, {layers} blocks of MatMul {args.width}x{args.width}, "
          "external data)")
    print("| step | exit | time (s) | peak RSS (GB) | baseline (GB) | (peak-baseline)/size | peak/size | output (GB) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['step']} | {r['exit']} | {r['seconds']} | {r['peak_gb']} | {r['baseline_gb']} | "
              f"{r['growth_over_size']} | {r['peak_over_size']} | {r['output_gb']} |")
    if args.json:
        args.json.write_text(json.dumps({"size_bytes": size, "rows": rows}, indent=2))
    if not args.keep:
        for p in [*work.glob("*.onnx*"), *work.glob("*.calib.npz")]:
            p.unlink()
        shutil.rmtree(work / "out", ignore_errors=True)
        shutil.rmtree(work / "out-tiny", ignore_errors=True)
    return 0 if all(r["exit"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
