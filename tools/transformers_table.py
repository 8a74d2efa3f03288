"""Attention heads, feed-forward neurons and whole residual blocks on every transformer we have, as a table.

Why this tool exists: the claim "every attention block's heads are prunable, exactly, on the exports users
bring" must come from a command anyone can rerun. For each transformer (the shipped ones in ``models/``,
the third-party exports ``tools/export_real.py`` writes, ResNeSt's split attention among them, and the same
after onnxruntime's transformer optimizer where ``tools/fused_exports.py`` wrote them) it runs the public API
exactly as a user would:

* ``prune(MODEL, PruneConfig(mode="structured", ratio=0.3, round_to=1))``: coverage, attention groups
  (prunable/found, with their head counts), MACs kept, and the pipeline's exactness oracle (the pruned model
  against the original with the dropped channels' consumer weights zeroed, in onnxruntime);
* ``prune(MODEL, PruneConfig(remove_blocks=1, ratio=0))``: the residual branch with the smallest norm removed,
  proven by the same oracle (the branch's last projection zeroed);
* the pruned model run again at batch 3 (and the sequence length of the example inputs + 3 where that axis
  is dynamic) to show its dynamic axes survived.

Coverage is the share of weighted-layer MACs whose input or output side sits in a prunable group (each side
counts half). Heads and feed-forward neurons alone reach at most 0.50 on a transformer: every projection has
one side on the residual stream, which structured mode leaves to ``--mode width``; the last column is the
share reached when the stream is a group too (``onnxprune.recovery.width.stream_coverage``).

Run from the repository root (project venv)::

    .venv/bin/python tools/transformers_table.py                       # all, Markdown on stdout
    .venv/bin/python tools/transformers_table.py --only hf_gpt2_legacy --json out.json
    .venv/bin/python tools/transformers_table.py --before old.json     # adds a "coverage before" column
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

from onnxprune import PruneConfig, prune  # noqa: E402
from onnxprune.core.errors import OnnxPruneError  # noqa: E402
from onnxprune.core.io import load_model  # noqa: E402
from onnxprune.recovery.width import stream_coverage  # noqa: E402
from onnxprune.runtime.feeds import random_feeds  # noqa: E402
from onnxprune.runtime.session import create_session, run_session  # noqa: E402

CACHE = Path("~/.cache/onnxprune").expanduser()
#: Real exports (tools/export_real.py) that hold attention.
REAL = ("hf_bert_legacy", "hf_bert_dynamo", "hf_gpt2_legacy", "hf_gpt2_dynamo", "hf_llama_gqa_legacy",
        "hf_llama_gqa_dynamo", "hf_vit_legacy", "hf_vit_dynamo", "hf_whisper_encoder_legacy",
        "hf_whisper_encoder_dynamo", "hf_wav2vec2_legacy", "hf_wav2vec2_dynamo", "timm_deit_tiny",
        "timm_deit_tiny_dynamo", "timm_swin_tiny", "timm_mobilevit_xxs", "timm_resnest_r2_legacy",
        "timm_resnest_r2_dynamo", "timm_resnest_r2c2_legacy", "timm_resnest_r2c2_dynamo")
#: Split attention at full width (timm resnest14d, torch legacy exporter; 34 MB, not shipped).
RESNEST = CACHE / "resnest" / "timm_resnest14d.onnx"


def candidates() -> list[Path]:
    """Every transformer at hand, shipped first."""
    paths = [p for p in (ROOT / "models").glob("*.onnx") if "transformer" in p.stem or "gpt" in p.stem]
    paths += [CACHE / "real-exports" / f"{name}.onnx" for name in REAL] + [RESNEST]
    paths += sorted((CACHE / "fused-exports").glob("*.onnx"))
    return [p for p in paths if p.exists()]


def example_feeds(path: Path) -> dict[str, np.ndarray] | None:
    """The exporter's example inputs (``NAME.inputs.npz``) where they exist."""
    npz = path.with_suffix(".inputs.npz")
    if not npz.exists():
        return None
    with np.load(npz) as data:
        return {k: data[k] for k in data.files}


def stretched(feeds: dict[str, np.ndarray], model: Any) -> dict[str, np.ndarray]:
    """The same inputs at batch 3 and, where axis 1 is dynamic and the input is integer, 3 more positions."""
    dynamic = {i.name: [not d.HasField("dim_value") for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    out = {}
    for name, value in feeds.items():
        flags = dynamic.get(name, [])
        v = np.concatenate([value] * 3, axis=0)[:3] if flags and flags[0] and value.shape[0] >= 1 else value
        if len(flags) > 1 and flags[1] and v.ndim >= 2 and v.dtype.kind in "iu":
            v = np.concatenate([v, v[:, :3]], axis=1)
        out[name] = v
    return out


def runs_stretched(model: Any, feeds: dict[str, np.ndarray]) -> str:
    """Whether the pruned model still runs at another batch size and sequence length."""
    try:
        session = create_session(model, provider="cpu", threads=1)
        run_session(session, stretched(feeds, model))
    except Exception as exc:  # noqa: BLE001 - a table cell, not control flow
        return f"fails: {str(exc).splitlines()[0][:80]}"
    return "yes"


def attention_cells(report: dict[str, Any]) -> tuple[str, str]:
    """(prunable/found attention groups, their head counts) from the structured report."""
    found = [g for g in report.get("groups", []) if g.get("attention")]
    blocked = [g for g in report.get("blocked", []) if g.get("attention")]
    heads = sorted({g["attention"]["heads"] for g in found + blocked})
    return f"{len(found)}/{len(found) + len(blocked)}", ",".join(map(str, heads)) or "-"


def worst_diff(exact: dict[str, Any]) -> float | None:
    """The largest max|diff| over every output and provider the oracle compared."""
    diffs = [o.get("max_abs") for c in exact.get("comparisons", {}).values() for o in c.get("outputs", [])]
    diffs = [d for d in diffs if isinstance(d, (int, float))]
    return max(diffs) if diffs else None


def measure(path: Path) -> dict[str, Any]:
    feeds = example_feeds(path)
    row: dict[str, Any] = {"model": path.stem, "folder": path.parent.name}
    t0 = time.perf_counter()
    try:
        result = prune(path, PruneConfig(mode="structured", ratio=0.3, round_to=1, bench=False))
    except OnnxPruneError as exc:
        row["error"] = str(exc)
        return row
    rep = result.report
    dims = {d["name"] if d.get("name") else f"{d['input']}:{d['axis']}": d["value"]
            for d in rep.get("dims_assumed", [])}
    if feeds is None:  # no example inputs: seeded ones at the sizes the run chose
        feeds = random_feeds(path, seed=0, dims=dims)
    exact = rep.get("validation", {}).get("exact", {})
    row.update({
        "coverage": rep.get("coverage"),
        "coverage_with_stream": stream_coverage(load_model(path), dims=dims),
        "attention": attention_cells(rep),
        "macs_before": rep["macs_before"], "macs_after": rep["macs_after"],
        "exact": exact.get("passed"), "max_diff": worst_diff(exact),
        "dynamic": runs_stretched(result.model, feeds),
        "seconds": time.perf_counter() - t0,
    })
    try:
        depth = prune(path, PruneConfig(mode="structured", ratio=0.0, remove_blocks=1, bench=False))
        dex = depth.report.get("validation", {}).get("exact", {})
        row["depth"] = {"passed": dex.get("passed"), "max_diff": worst_diff(dex),
                        "macs_after": depth.report["macs_after"]}
    except OnnxPruneError as exc:
        row["depth"] = {"error": str(exc)}
    return row


def _num(value: Any, fmt: str) -> str:
    return format(value, fmt) if isinstance(value, (int, float)) else "-"


def render(rows: list[dict[str, Any]], before: dict[str, float], argv: list[str]) -> str:
    head = ("| model | attention groups prunable/found (heads) | coverage before | coverage | MACs kept @0.3 "
            "| oracle @0.3 | runs at batch 3 (+3 tokens) | 1 block removed: MACs kept, oracle "
            "| coverage with the stream (`--mode width`) |")
    lines = [head, "|---|---|---:|---:|---:|---|---|---|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| `{r['model']}` | refused: {r['error'][:160]} | | | | | | | |")
            continue
        found, heads = r["attention"]
        kept = r["macs_after"] / r["macs_before"] if r["macs_before"] else 0.0
        oracle = f"{'pass' if r['exact'] else 'FAIL'} ({_num(r['max_diff'], '.1e')})"
        d = r.get("depth", {})
        if "error" in d:
            depth = "none removable" if "0 removable" in d["error"] else f"refused: {d['error'][:100]}"
        else:
            dk = d["macs_after"] / r["macs_before"] if r["macs_before"] else 0.0
            depth = f"{dk:.0%}, {'pass' if d['passed'] else 'FAIL'} ({_num(d['max_diff'], '.1e')})"
        lines.append(f"| `{r['model']}` | {found} ({heads}) | {_num(before.get(r['model']), '.2f')} "
                     f"| {_num(r['coverage'], '.2f')} | {kept:.0%} | {oracle} | {r['dynamic']} | {depth} "
                     f"| {_num(r.get('coverage_with_stream'), '.2f')} |")
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines.append("")
    lines.append(f"Measured {stamp} on {platform.machine()}, {platform.python_version()}, with "
                 f"`python tools/transformers_table.py {' '.join(argv)}`.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="model stems to run (default: every transformer at hand)")
    parser.add_argument("--json", help="also write the rows as JSON here")
    parser.add_argument("--before", help="a JSON written by an earlier run: its coverage is shown as 'before'")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    paths = [p for p in candidates() if not args.only or p.stem in args.only]
    rows = []
    for path in paths:
        print(f"{path.stem} ...", file=sys.stderr, flush=True)
        rows.append(measure(path))
    before: dict[str, float] = {}
    if args.before:
        before = {r["model"]: r.get("coverage") for r in json.loads(Path(args.before).read_text())}
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=str))
    print(render(rows, before, argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
