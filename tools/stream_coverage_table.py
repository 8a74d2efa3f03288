"""Coverage of heads + feed-forward neurons + the residual stream (``--mode width``), per model, with the reasons.

Why this tool exists: the claim "structured coverage with the stream is at least 0.9" must come from a
command anyone can rerun, and a number below 1 must say what is left: a limitation of ours (an op without a
rule, a run-time shape read that cannot be followed) or the model's interface (an LM head's vocabulary axis, a
classifier's classes, the channels the first layer reads), which no mode cuts without changing what the model
takes or gives. For each model it prints ``onnxprune.recovery.stream_view.width_view``: coverage over all
weighted MACs, coverage with the interface sides left out of the total, the share of MACs an appended output
projection adds (a stream that is the graph output, kept at full width), and the largest uncovered shares
with their reason. Sizes of dynamic axes are chosen as ``onnxprune analyze`` chooses them.

Run from the repository root (project venv)::

    .venv/bin/python tools/stream_coverage_table.py                         # every transformer + ConvNeXt
    .venv/bin/python tools/stream_coverage_table.py --only hf_bert_legacy -v  # with the uncovered sides
    .venv/bin/python tools/stream_coverage_table.py --json after.json --before before.json
    .venv/bin/python tools/stream_coverage_table.py --prune 0.25   # also prune by width, as a user would

``--prune R`` runs ``prune(MODEL, PruneConfig(mode="width", ratio=R, calib=NAME.inputs.npz))`` on each model
with example inputs (the exporter's, which are then also the calibration data: the drift is not a held-out
figure) and adds: the method (rotate + slice, or plain), the exactness check of the rewrites made before the
cut (the rotation; for plain pruning frozen shape reads, an output projection, an untied head), MACs and parameters
kept, and whether the result runs at batch 3 with 3 more tokens (dynamic axes kept).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from transformers_table import CACHE, candidates, runs_stretched, worst_diff  # noqa: E402

from onnxprune.core.errors import OnnxPruneError  # noqa: E402
from onnxprune.core.io import load_model  # noqa: E402
from onnxprune.runtime.dims import resolve_dims  # noqa: E402

EXTRA = (ROOT / "models" / "tv_convnext_tiny.onnx", CACHE / "tiny_gpt" / "tiny_gpt_dynamo.onnx")


def measure(path: Path) -> dict[str, Any]:
    """One row: the width view of the model (or, with an older onnxprune, its stream coverage alone)."""
    row: dict[str, Any] = {"model": path.stem, "folder": path.parent.name}
    t0 = time.perf_counter()
    model = load_model(path)
    try:
        dims = resolve_dims(model, required=False).dims
    except OnnxPruneError:
        dims = {}
    try:
        from onnxprune.recovery.stream_view import width_view
    except ImportError:  # the code before this tool: one number
        from onnxprune.recovery.width import stream_coverage

        row["coverage"] = stream_coverage(model, dims=dims)
    else:
        row.update(width_view(model, dims=dims))
    row["seconds"] = round(time.perf_counter() - t0, 2)
    return row


def prune_width(path: Path, ratio: float) -> dict[str, Any]:
    """``--mode width`` at ``ratio`` through the public API, calibrated on the exporter's example inputs."""
    from onnxprune import PruneConfig, prune

    npz = path.with_suffix(".inputs.npz")
    if not npz.exists():  # the unfused eager exports share the inputs of their fused copy
        npz = path.with_name(f"{path.stem}_fused.inputs.npz")
    if not npz.exists():
        return {"error": "no example inputs"}
    try:
        result = prune(path, PruneConfig(mode="width", ratio=ratio, calib=str(npz), bench=False))
    except OnnxPruneError as exc:
        return {"error": str(exc)}
    rep, width = result.report, result.report["width"]
    check = width.get("rotation_check") or width.get("rewrite_check")  # plain: freezing, projection, untying
    with np.load(npz) as data:
        feeds = {k: data[k] for k in data.files}
    return {"method": width["method"], "rotation_check": None if check is None else
            {"passed": check.get("passed"), "max_diff": worst_diff(check)},
            "macs_kept": rep["macs_after"] / rep["macs_before"],
            "params_kept": rep["params_after"] / rep["params_before"],
            "runs": runs_stretched(result.model, feeds) if feeds else "-", "untied": width.get("untied", []),
            "tied": [t["head"] for t in width.get("tied_heads", [])]}


def _pruned_cells(p: dict[str, Any] | None) -> str:
    if p is None:
        return ""
    if "error" in p:
        return f" | {p['error'][:80]} | | | | |"
    check = p["rotation_check"]
    proof = "-" if check is None else f"{'pass' if check['passed'] else 'FAIL'} ({_num(check['max_diff'], '.1e')})"
    return (f" | {p['method']} | {proof} | {p['macs_kept']:.0%} | {p['params_kept']:.0%} | "
            f"{p['runs'][:60].replace('|', '/')} |")


def _num(value: Any, fmt: str = ".2f") -> str:
    return format(value, fmt) if isinstance(value, (int, float)) else "-"


def _left(row: dict[str, Any]) -> str:
    """The largest uncovered share that is not interface, or "-"."""
    ours = [u for u in row.get("uncovered", []) if not u["interface"]]
    if not ours:
        return "-"
    u = ours[0]
    return f"{u['share']:.2f}: {u['reason'][:90]}".replace("|", "/")


def render(rows: list[dict[str, Any]], before: dict[str, float], argv: list[str], verbose: bool) -> str:
    pruned = any("pruned" in r for r in rows)
    head = ("| model | before | coverage (all MACs) | without interface | interface share | output projection "
            "(share of MACs) | largest uncovered share that is ours |")
    rule = "|---|---:|---:|---:|---:|---|---|"
    if pruned:
        head += (" width method | rewrites exact before the cut | MACs kept | params kept "
                 "| runs at batch 3 (+3 tokens) |")
        rule += "---|---|---:|---:|---|"
    lines = [head, rule]
    for r in rows:
        proj = ", ".join(p["output"] for p in r.get("outputs_kept_full_width", []))
        proj = f"`{proj}` ({_num(r.get('projection_share'), '.3f')})" if proj else "-"
        tied = (r.get("pruned") or {}).get("tied")
        if r.get("untied") or tied:
            proj += " (LM head tied again after the cut)" if tied else " (LM head untied)"
        lines.append(f"| `{r['model']}` | {_num(before.get(r['model']))} | {_num(r.get('coverage'))} "
                     f"| {_num(r.get('coverage_without_interface'))} | {_num(r.get('interface_share'))} | {proj} "
                     f"| {_left(r)} |" + _pruned_cells(r.get("pruned")).removeprefix(" |"))
        if verbose:
            for u in r.get("uncovered", []):
                lines.append(f"|  | | | | | {u['side']} x{u['layers']} {'interface' if u['interface'] else 'ours'} "
                             f"{u['share']:.3f} | {u['reason'][:160].replace('|', '/')} ({', '.join(u['examples'])}) |")
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines += ["", f"Measured {stamp} on {platform.machine()}, Python {platform.python_version()}, with "
                  f"`python tools/stream_coverage_table.py {' '.join(argv)}`."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="model stems to run (default: every transformer and ConvNeXt)")
    parser.add_argument("--json", help="also write the rows as JSON here")
    parser.add_argument("--before", help="a JSON written by an earlier run: its coverage is shown as 'before'")
    parser.add_argument("-v", "--verbose", action="store_true", help="one line per uncovered side and reason")
    parser.add_argument("--prune", type=float, metavar="R", help="also prune by width at this ratio (see above)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    paths = candidates() + [p for p in EXTRA if p.exists()]
    paths = [p for p in paths if not args.only or p.stem in args.only]
    rows = []
    for path in paths:
        print(f"{path.stem} ...", file=sys.stderr, flush=True)
        try:
            rows.append(measure(path))
            if args.prune is not None:
                rows[-1]["pruned"] = prune_width(path, args.prune)
        except OnnxPruneError as exc:
            rows.append({"model": path.stem, "error": str(exc)})
    before: dict[str, float] = {}
    if args.before:
        before = {r["model"]: r.get("coverage") for r in json.loads(Path(args.before).read_text())}
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=str))
    print(render(rows, before, argv, args.verbose))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
