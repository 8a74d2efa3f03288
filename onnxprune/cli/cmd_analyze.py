"""``onnxprune analyze IN [--json]``: what is in a model and what onnxprune can prune in it."""

from __future__ import annotations

import argparse
import json

from onnxprune.report.drift import short
from onnxprune.report.inspect import analyze_summary


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("analyze", help="parameters, MACs, ops, prunable weights and channel groups")
    p.add_argument("model", help="input .onnx file")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument("--dim", action="append", default=[], metavar="NAME=VALUE",
                   help="size of a dynamic input axis for MACs, by dim name or INPUT:AXIS (default: batch 1, other "
                        "axes a size the model accepts, said in the output)")
    p.add_argument("--groups", action="store_true", help="list every channel group with its members")
    p.add_argument("--width", action="store_true", default=None,
                   help="show what --mode width reaches also above 256 MB of weights (it copies the model twice)")
    return p


def attention_note(attention: dict) -> str:
    """How a group of attention heads is cut, e.g. ``(attention: 4 heads of 16 channels)``; with grouped-query
    attention a root is a KV head with all its query heads."""
    per_kv = attention.get("query_heads_per_kv")
    if per_kv:
        return (f" (attention: {attention['heads']} KV heads with {per_kv} query heads each, "
                f"{attention['head_channels']} channels; cut as whole KV groups)")
    return f" (attention: {attention['heads']} heads of {attention['head_channels']} channels)"


def run(args: argparse.Namespace) -> int:
    from onnxprune.config import parse_dims

    dims = parse_dims(args.dim)
    summary = analyze_summary(args.model, dims=dims, with_width=args.width)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    if args.quiet:
        return 0
    print(f"model      {args.model}")
    print(f"opset      {summary['opset']}   ir_version {summary['ir_version']}   producer {summary['producer']}")
    for kind in ("inputs", "outputs"):
        for io in summary[kind]:
            print(f"{kind[:-1]:<10} {io['name']}  {io['dtype']}{io['shape']}")
    print(f"params     {summary['params']:,}")
    from onnxprune.runtime.dims import describe_assumed

    assumed = describe_assumed(summary.get("dims_assumed", []))
    at = f", at {assumed}" if assumed else ""
    print(f"MACs       {summary['macs']:,} (batch {summary.get('macs_batch', 1)}{at})")
    ops = ", ".join(f"{k}:{v}" for k, v in summary["op_histogram"].items())
    print(f"ops        {ops}")
    print(f"prunable weights ({len(summary['prunable_weights'])}):")
    for w in summary["prunable_weights"]:
        print(f"  {w['name']:<40} {str(w['shape']):<20} {', '.join(w['readers'])}")
    groups = summary.get("groups")
    if groups is not None:
        prunable = [g for g in groups if not g["blockers"]]
        print(f"channel groups: {len(groups)} ({len(prunable)} prunable), "
              f"coverage {summary.get('coverage', 0.0):.1%} of prunable MACs")
        for g in groups:
            state = "prunable" if not g["blockers"] else "blocked: " + "; ".join(g["blockers"])
            if g.get("attention"):
                state += attention_note(g["attention"])
            print(f"  group {g['id']:<4} {short(g['name'], 44):<44} {g['size']:>6} channels  {state}")
            if args.groups:
                print(f"      layers: {', '.join(g['layers']) or '-'}")
                for m in g["members"]:
                    print(f"      {m}")
    _print_width(summary.get("width"))
    _print_blocks(summary)
    for reason in summary.get("unanalysed", []):
        print(f"  not analysed: {reason}")
    if summary.get("analysis_error"):
        print(f"structured analysis unavailable: {summary['analysis_error']}")
    return 0


def _print_width(width: dict | None) -> None:
    """What ``--mode width`` reaches: coverage with the stream, over all MACs and without interface sides."""
    if not width:
        return
    if "error" in width or "skipped" in width:
        why = f"unavailable: {width['error']}" if "error" in width else width["skipped"]
        print(f"width mode: {_clip(why, 100)}")
        return
    print(f"width mode (--mode width, not exact): coverage {width['coverage']:.1%} with the stream, "
          f"{width['coverage_without_interface']:.1%} without interface sides ({width['interface_share']:.1%} of "
          f"MACs are the model's own inputs/outputs)")
    for p in width["outputs_kept_full_width"]:
        print(f"  output {p['output']} is the stream: kept at width {p['width']} by an appended projection "
              f"{p['projection']} ({width['projection_share']:.1%} of MACs, counted)")
    for name in width.get("untied", []):
        print(f"  tied LM head: given its own weight {name} for the cut, then tied to the cut table again "
              f"(--untie-embeddings keeps it)")
    for u in [u for u in width["uncovered"] if not u["interface"]][:3]:
        print(f"  uncovered {u['share']:.1%} ({u['side']} side of {u['layers']} layer(s)): {_clip(u['reason'], 70)}")


def _print_blocks(summary: dict) -> None:
    """Attention blocks and residual branches, one line each (readable on a 12-layer model)."""
    attention = summary.get("attention_blocks") or []
    if attention:
        ok = sum(1 for a in attention if a["prunable"])
        print(f"attention blocks: {len(attention)} ({ok} prunable by whole heads)")
        for a in attention:
            if a["heads"] is None:
                print(f"  {short(a['softmax'], 40):<40} blocked: {_clip(a['why'], 90)}")
                continue
            kv = f", {a['kv_heads']} kv heads (cut by kv group)" if a["unit"] == "kv groups" else ""
            state = f"prunable (group {a['group']})" if a["prunable"] else f"blocked: {_clip(a['why'], 60)}"
            print(f"  {short(a['output_projection'], 40):<40} {a['heads']} heads x {a['head_dim']}{kv}  {state}")
    blocks = summary.get("residual_blocks") or []
    if blocks:
        removable = sorted((b for b in blocks if b["removable"]), key=lambda b: b["score"])
        kept = [b for b in blocks if not b["removable"]]
        print(f"residual blocks: {len(removable)} removable with --remove-blocks or --mode depth (smallest norm "
              f"of the last projection first), {len(kept)} not")
        for b in removable + kept:
            what = f"{b['kind']:<9} {b['nodes']:>4} nodes  from {short(b['start'], 32):<32}"
            state = f"last {short(b['last'], 32)} norm {b['score']:.3g}" if b["removable"] else \
                f"kept: {_clip(b['why'], 60)}"
            print(f"  {short(b['add'], 32):<32} {what} {state}")


def _clip(text: str, width: int) -> str:
    """A reason cut to ``width`` characters, keeping its start (where it names the node and the cause)."""
    return text if len(text) <= width else text[:width - 3] + "..."
