"""Prune every real export in the cache folder in every mode, as a user would, and tabulate what happens.

Why this tool exists: "framework-agnostic" must hold on the files that the tools people use actually write
(Ultralytics, timm, Hugging Face through both torch exporters, tf2onnx, paddle2onnx, fp16 and int8 QDQ
conversions), not only on our own sample models. ``tools/export_real.py`` (its own venv) writes small,
randomly initialised exports of each class into a cache folder; this tool runs, for every ``*.onnx`` there
and every mode, exactly what a new user types::

    onnxprune prune MODEL -o OUT --mode structured|unstructured|nm

with no other flag, each in its own process (``python -m onnxprune``) under a timeout, and then judges the
result without trusting onnxprune: ``onnx.checker`` (full check) on the output, both models in onnxruntime on
the same inputs (the exporter's own example inputs, ``MODEL.inputs.npz``, where it wrote them), the output
shapes, the declared input/output signature (names, element types, dims with their symbolic names) and the
precision (element types of initializers, count of QuantizeLinear/DequantizeLinear nodes; a quantized constant
shared by layers that lost different channels may gain one DequantizeLinear per stored version). Coverage,
sparsity and the exactness difference are read from the summary the command prints.

Runs in the project venv (not the export venv); the lead reruns it after merging fixes::

    .venv/bin/python tools/real_exports_table.py                      # ~/.cache/onnxprune/real-exports
    .venv/bin/python tools/real_exports_table.py --dir DIR --out table.md --timeout 300
    .venv/bin/python tools/real_exports_table.py --models bert_legacy yolov8n_det --modes structured

``tests/test_real_exports.py`` imports :func:`run_case` and :class:`Outcome` from here, so the table and the
test judge a run the same way.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime as _dt
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
#: Default cache folder that ``tools/export_real.py`` writes; the env var overrides it.
DEFAULT_DIR = Path("~/.cache/onnxprune/real-exports").expanduser()
ENV_VAR = "ONNXPRUNE_REAL_EXPORTS"
MODES = ("structured", "unstructured", "nm")
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})


def export_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The cache folder: ``explicit``, else ``$ONNXPRUNE_REAL_EXPORTS``, else ``~/.cache/onnxprune/real-exports``."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get(ENV_VAR)
    return Path(env).expanduser() if env else DEFAULT_DIR


def list_models(folder: Path) -> list[Path]:
    """Every ``*.onnx`` directly in ``folder`` (sorted; none when the folder is missing)."""
    return sorted(folder.glob("*.onnx")) if folder.is_dir() else []


def is_qdq(model_path: Path) -> bool:
    """True when the model holds Q/DQ nodes: the one class the issue lets refuse with one clear line."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    return any(n.op_type in QDQ_OPS for n in model.graph.node)


# --------------------------------------------------------------------------------------------------- inputs
_ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8, "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def make_feeds(model_path: Path, session: Any) -> dict[str, np.ndarray]:
    """The exporter's example inputs (``MODEL.inputs.npz``) or, without them, seeded inputs.

    Seeded inputs give a leading dynamic axis 2 and any other dynamic axis 16; integer inputs are ones (a
    valid token id and an attention mask that attends everywhere).
    """
    sidecar = model_path.with_suffix(".inputs.npz")
    names = [i.name for i in session.get_inputs()]
    if sidecar.is_file():
        with np.load(sidecar) as data:
            if set(names) <= set(data.files):
                return {n: data[n] for n in names}
    rng = np.random.default_rng(0)
    feeds: dict[str, np.ndarray] = {}
    for inp in session.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else (2 if k == 0 else 16) for k, d in enumerate(inp.shape)]
        dtype = _ORT_TYPES.get(inp.type, np.float32)
        if np.issubdtype(dtype, np.floating):
            feeds[inp.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[inp.name] = np.ones(shape, dtype=dtype)
    return feeds


def _session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def output_shapes(path: Path, feeds: Mapping[str, np.ndarray] | None = None) -> dict[str, tuple[int, ...]]:
    """Run ``path`` in onnxruntime (CPU, one thread) and return each output's shape by name."""
    session = _session(path)
    feeds = dict(feeds) if feeds is not None else make_feeds(path, session)
    names = [o.name for o in session.get_outputs()]
    return {n: tuple(np.asarray(v).shape) for n, v in zip(names, session.run(names, feeds), strict=True)}


# ----------------------------------------------------------------------------------------------- signatures
def _dims(value_info: Any) -> tuple[str, ...]:
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return ("<no shape>",)
    return tuple(d.dim_param if d.HasField("dim_param") else str(d.dim_value) if d.HasField("dim_value") else "?"
                 for d in t.shape.dim)


def signature(model: Any) -> dict[str, Any]:
    """Declared inputs/outputs (name, element type, dims with symbolic names): must survive every mode."""
    inits = {i.name for i in model.graph.initializer}
    return {
        "inputs": [(v.name, v.type.tensor_type.elem_type, _dims(v)) for v in model.graph.input if v.name not in inits],
        "outputs": [(v.name, v.type.tensor_type.elem_type, _dims(v)) for v in model.graph.output],
    }


#: Element types of shape and index constants, which a cut may add (Reshape targets, Split sizes): not precision.
INDEX_TYPES = frozenset({"INT64", "INT32"})


def precision(model: Any) -> dict[str, Any]:
    """What pruning must not change unasked: weight element types (index types aside) and the Q/DQ node count.

    ``dq_of_constants`` counts the DequantizeLinear nodes of stored constants: a structured cut may add some
    (a quantized bias shared by layers that lost different channels is stored once per version, each read
    through its own DequantizeLinear), never remove one; every other Q/DQ node must stay.
    """
    import onnx

    types = {onnx.TensorProto.DataType.Name(i.data_type) for i in model.graph.initializer} - INDEX_TYPES
    qdq = sum(1 for n in model.graph.node if n.op_type in QDQ_OPS)
    consts = {i.name for i in model.graph.initializer} | {o for n in model.graph.node if n.op_type == "Constant"
                                                          for o in n.output}
    dq_const = sum(1 for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input and n.input[0] in consts)
    return {"initializer_types": sorted(types), "qdq_nodes": qdq, "dq_of_constants": dq_const}


def describe_signature_change(before: Mapping[str, Any], after: Mapping[str, Any]) -> str:
    """'' when equal, else the first difference in one line."""
    for kind in ("inputs", "outputs"):
        for b, a in zip(before[kind], after[kind], strict=False):
            if b != a:
                return f"{kind[:-1]} {b[0]}: declared {b[1]}{list(b[2])} became {a[1]}{list(a[2])}"
        if len(before[kind]) != len(after[kind]):
            return f"{len(before[kind])} {kind} became {len(after[kind])}"
    return ""


def describe_precision_change(before: Mapping[str, Any], after: Mapping[str, Any]) -> str:
    """'' when equal, else what changed in one line."""
    parts = []
    added = after.get("dq_of_constants", 0) - before.get("dq_of_constants", 0)  # versions of a shared constant
    if added < 0 or before["qdq_nodes"] != after["qdq_nodes"] - added:
        parts.append(f"Q/DQ nodes {before['qdq_nodes']} -> {after['qdq_nodes']}")
    if before["initializer_types"] != after["initializer_types"]:
        parts.append(f"initializer types {','.join(before['initializer_types'])} -> "
                     f"{','.join(after['initializer_types'])}")
    return "; ".join(parts)


# -------------------------------------------------------------------------------------------------- one run
@dataclasses.dataclass
class Outcome:
    """What one ``onnxprune prune MODEL -o OUT --mode MODE`` run did, judged independently of onnxprune."""

    model: str
    mode: str
    returncode: int | None  # None: timed out
    seconds: float
    error: str = ""  # the error line (or the last stderr line) when the run failed
    stderr_lines: int = 0  # lines on stderr that are not warnings
    coverage: float | None = None  # structured: percent of weighted MACs in prunable groups
    sparsity: float | None = None  # unstructured/nm: achieved
    exact: str = ""  # 'pass 1.2e-06' / 'FAIL 7.3e-03' as printed
    checker: str = ""  # 'ok' or the checker's message
    shapes: str = ""  # 'same' or the first difference / the onnxruntime error
    io: str = ""  # 'same' or the first declared input/output that changed
    prec: str = ""  # 'same' or what changed
    size_ratio: float | None = None  # output file bytes / input file bytes (external data included)

    @property
    def ok(self) -> bool:
        """Exit 0, checker-valid, same output shapes in onnxruntime, same declared I/O, same precision."""
        return (self.returncode == 0 and self.checker == "ok" and self.shapes == "same" and self.io == "same"
                and self.prec == "same")

    @property
    def refused(self) -> bool:
        """Exit 1 with exactly one line, ``onnxprune: error: ...``: a clear refusal (or a check that stopped it)."""
        return self.returncode == 1 and self.stderr_lines == 1 and self.error.startswith("onnxprune: error:")

    def verdict(self) -> str:
        """One cell: 'ok', 'exit 1: <the one error line>', or 'FAIL...: <first reason>' (bad model, crash)."""
        if self.ok:
            return "ok"
        if self.returncode is None:
            return f"FAIL: timed out after {self.seconds:.0f} s"
        if self.returncode != 0:
            error = self.error.removeprefix("onnxprune: error: ")
            return ("exit 1: " if self.refused else f"FAIL (exit {self.returncode}): ") + error
        for label, value in (("checker", self.checker), ("output shapes", self.shapes),
                             ("declared I/O", self.io), ("precision", self.prec)):
            if value != "ok" and value != "same":
                return f"FAIL: {label}: {value}"
        return "FAIL"


_COVERAGE = re.compile(r"coverage\s+([0-9.]+)%")
_SPARSITY = re.compile(r"sparsity achieved\s+([0-9.]+)")
_EXACT = re.compile(r"exactness\s+\S+:\s*(pass|FAIL),\s*max\|diff\|\s*([0-9.eE+-]+|nan|inf)")


def _file_bytes(path: Path) -> int:
    """Bytes of a model and of the external data files beside it that it names."""
    import onnx

    total = path.stat().st_size
    model = onnx.load(str(path), load_external_data=False)
    seen = set()
    for t in model.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location" and entry.value not in seen:
                seen.add(entry.value)
                data = path.parent / entry.value
                total += data.stat().st_size if data.is_file() else 0
    return total


def _error_line(stderr: str) -> tuple[str, int]:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if not re.match(r"onnxprune: (WARNING|INFO|DEBUG):", ln)]
    picked = next((ln for ln in errors if ln.startswith("onnxprune:")), errors[-1] if errors else "")
    return _clean(picked), len(errors)


def run_case(model: Path, mode: str, workdir: Path, *, timeout: float = 300.0,
             python: str = sys.executable) -> Outcome:
    """Run ``onnxprune prune MODEL -o OUT --mode MODE`` (no other flag) in a child process and judge the result.

    Args:
        model: an ``.onnx`` file (never modified; onnxprune guarantees it and this does not rely on it).
        mode: ``structured``, ``unstructured`` or ``nm``.
        workdir: where the pruned model goes (``<stem>.<mode>.onnx``).
        timeout: seconds before the child is killed and the run counted as timed out.
        python: interpreter that has onnxprune installed.

    Returns:
        The :class:`Outcome`; checks after the run are filled only when it exited 0 and wrote the file.
    """
    out = workdir / f"{model.stem}.{mode}.onnx"
    cmd = [python, "-m", "onnxprune", "prune", str(model), "-o", str(out), "--mode", mode]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    started = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=workdir, env=env,
                              check=False)
    except subprocess.TimeoutExpired:
        return Outcome(model.stem, mode, None, time.perf_counter() - started, error="timed out")
    result = Outcome(model.stem, mode, proc.returncode, time.perf_counter() - started)
    result.error, result.stderr_lines = _error_line(proc.stderr)
    if m := _COVERAGE.search(proc.stdout):
        result.coverage = float(m.group(1))
    if m := _SPARSITY.search(proc.stdout):
        result.sparsity = float(m.group(1))
    if m := _EXACT.search(proc.stdout):
        result.exact = f"{m.group(1)} {float(m.group(2)):.1e}"
    if proc.returncode != 0:
        return result
    if not out.is_file():
        result.checker = "exit 0 but no output file"
        return result
    judge_output(model, out, result)
    for leftover in [out, *out.parent.glob(out.name + ".data*")]:
        leftover.unlink(missing_ok=True)
    return result


def judge_output(model: Path, out: Path, result: Outcome) -> None:
    """Fill checker, shapes, io, prec and size_ratio of ``result`` by comparing ``out`` with ``model``."""
    import onnx

    try:
        onnx.checker.check_model(str(out), full_check=True)
        result.checker = "ok"
    except Exception as exc:  # noqa: BLE001 - any checker failure is a finding to report, not a crash
        result.checker = _one_line(exc)
    original, pruned = onnx.load(str(model), load_external_data=False), onnx.load(str(out), load_external_data=False)
    before_sig, after_sig = signature(original), signature(pruned)
    result.io = describe_signature_change(before_sig, after_sig) or "same"
    result.prec = describe_precision_change(precision(original), precision(pruned)) or "same"
    result.size_ratio = _file_bytes(out) / max(1, _file_bytes(model))
    try:
        session = _session(model)
        feeds = make_feeds(model, session)
        want = output_shapes(model, feeds)
    except Exception as exc:  # noqa: BLE001 - the original itself does not run: say so, do not blame the pruner
        result.shapes = f"original does not run in onnxruntime: {_one_line(exc)}"
        return
    try:
        got = output_shapes(out, feeds)
    except Exception as exc:  # noqa: BLE001 - the finding is that onnxruntime refuses the pruned model
        result.shapes = f"onnxruntime: {_one_line(exc)}"
        return
    diffs = [f"{n}: {want[n]} -> {got.get(n)}" for n in want if got.get(n) != want[n]]
    result.shapes = "; ".join(diffs) if diffs else "same"


#: Boilerplate that hides the informative part of onnxruntime's messages, and run-specific temp folders.
_NOISE = (
    (re.compile(r"\[ONNXRuntimeError\] : \d+ : \w+ : "), ""),
    (re.compile(r"Non-zero status code returned while running "), "running "),
    (re.compile(r"/onnxruntime_src/\S+ "), ""),
    (re.compile(re.escape(tempfile.gettempdir()) + r"/onnxprune-[\w.-]+/"), ""),
)


def _clean(text: str) -> str:
    text = " ".join(text.split())
    for pattern, replacement in _NOISE:
        text = pattern.sub(replacement, text)
    return text


def _one_line(exc: BaseException, limit: int = 240) -> str:
    text = _clean(f"{type(exc).__name__}: {exc}")
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ------------------------------------------------------------------------------------------------ rendering
def _cell(text: str, limit: int = 200) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _manifest(folder: Path) -> dict[str, Any]:
    path = folder / "manifest.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def _summary_cell(o: Outcome) -> str:
    """The overview's cell: the verdict, with coverage and exactness (structured) or sparsity when it is ok."""
    if not o.ok:
        return o.verdict()
    if o.mode == "structured":
        coverage = f"cov {o.coverage:.0f}%" if o.coverage is not None else ""
        exact = f"diff {o.exact.split()[-1]}" if o.exact else ""
        return ", ".join(x for x in ("ok", coverage, exact) if x)
    return f"ok, {o.sparsity:.2f} zero" if o.sparsity is not None else "ok"


def _detail_row(o: Outcome) -> str:
    amount = (f"{o.coverage:.1f}% cov" if o.coverage is not None
              else f"{o.sparsity:.3f} sparse" if o.sparsity is not None else "")
    size = f"{o.size_ratio:.2f}" if o.size_ratio is not None else ""
    return "| " + " | ".join([
        f"`{o.model}`", o.mode, _cell(o.verdict()), amount, o.exact, _cell(o.checker, 80), _cell(o.shapes, 80),
        _cell(o.io, 80), _cell(o.prec, 80), size, f"{o.seconds:.1f}",
    ]) + " |"


def render(outcomes: Sequence[Outcome], folder: Path, argv: Sequence[str], total_s: float, *,
           details: bool = True) -> str:
    """The Markdown: a model x mode overview, the details of every run (unless not asked), the skipped exports."""
    manifest = _manifest(folder)
    models = manifest.get("models", {})
    by_model: dict[str, dict[str, Outcome]] = collections.defaultdict(dict)
    for o in outcomes:
        by_model[o.model][o.mode] = o
    modes = [m for m in MODES if any(m in row for row in by_model.values())]
    good = sum(o.ok for o in outcomes)
    refused = sum(o.refused for o in outcomes)
    lines = [
        f"{good} of {len(outcomes)} runs ({good / max(1, len(outcomes)):.0%}) gave a checker-valid model that "
        f"onnxruntime runs with the original's output shapes, declared inputs/outputs and precision; "
        f"{refused} stopped with a one-line error (exit 1, no file); {len(outcomes) - good - refused} wrote a model "
        f"that fails a check, crashed or timed out.",
        "",
        "| model | class | exporter | " + " | ".join(modes) + " | time s (" + "/".join(modes) + ") |",
        "|---|---|---|" + "---|" * len(modes) + "---:|",
    ]
    for name, row in by_model.items():
        info = models.get(name, {})
        cells = [f"`{name}`", _cell(info.get("class", "")), _cell(info.get("exporter", ""))]
        cells += [_cell(_summary_cell(row[m]), 110) if m in row else "" for m in modes]
        cells.append("/".join(f"{row[m].seconds:.1f}" if m in row else "-" for m in modes))
        lines.append("| " + " | ".join(cells) + " |")
    if details:
        lines += [
            "",
            "| model | mode | outcome | coverage / sparsity | exactness max\\|diff\\| | checker | output shapes "
            "| declared I/O | precision | size after/before | time s |",
            "|---|---|---|---:|---|---|---|---|---|---:|---:|",
        ]
        lines += [_detail_row(o) for o in outcomes]
    skipped = manifest.get("skipped", {})
    if skipped:
        lines += ["", "Not exported (from the export script's manifest): " + "; ".join(
            f"`{k}`: {_cell(v, 160)}" for k, v in sorted(skipped.items())) + "."]
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    machine = (f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}, "
               f"Python {platform.python_version()}")
    command = "python tools/real_exports_table.py" + (" " + " ".join(argv) if argv else "")
    lines += [
        "",
        f"Measured {stamp} on {machine} with `{command}` ({total_s:.0f} s); exports by "
        f"`tools/export_real.py` ({', '.join(f'{k} {v}' for k, v in sorted(manifest.get('versions', {}).items()))}). "
        "Each run is `onnxprune prune MODEL -o OUT --mode MODE` with no other flag, in its own process. "
        "ok = exit 0, `onnx.checker` full check passes, onnxruntime runs the output on the exporter's example "
        "inputs with the original's output shapes, and the declared input/output signature and the precision "
        "(initializer types, Q/DQ node count; DequantizeLinear nodes of stored constants may only be added) are "
        "unchanged.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Parse options, run every model x mode, print the table (and write it with ``--out``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", help=f"cache folder (default ${ENV_VAR} or {DEFAULT_DIR})")
    parser.add_argument("--models", nargs="*", help="only these model stems")
    parser.add_argument("--modes", nargs="*", default=list(MODES), choices=MODES)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per run (default 300)")
    parser.add_argument("--out", help="also write the Markdown here")
    parser.add_argument("--json", help="also write every outcome as JSON here")
    parser.add_argument("--brief", action="store_true", help="the summary and model x mode overview only")
    args = parser.parse_args(argv)
    folder = export_dir(args.dir)
    models = [p for p in list_models(folder) if not args.models or p.stem in args.models]
    if not models:
        print(f"no .onnx files in {folder}; run tools/export_real.py first (see its docstring)", file=sys.stderr)
        return 1
    started = time.perf_counter()
    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="onnxprune-real-") as tmp:
        for model in models:
            for mode in args.modes:
                outcome = run_case(model, mode, Path(tmp), timeout=args.timeout)
                print(f"{model.stem:<28} {mode:<13} {outcome.seconds:6.1f} s  {outcome.verdict()[:140]}",
                      file=sys.stderr, flush=True)
                outcomes.append(outcome)
    text = render(outcomes, folder, list(argv) if argv is not None else sys.argv[1:], time.perf_counter() - started,
                  details=not args.brief)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    if args.json:
        Path(args.json).write_text(json.dumps([dataclasses.asdict(o) | {"verdict": o.verdict()} for o in outcomes],
                                              indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
