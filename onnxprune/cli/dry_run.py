"""``onnxprune prune --dry-run``: show what a prune run would do, and write nothing.

Why: choosing a ratio, a budget or exclusions is trial and error; a dry run shows the plan (which groups,
which layers, how many channels kept, the predicted parameters and MACs) in the time of the analysis, without
the exactness proof, the recovery, the benchmark or any file.
"""

from __future__ import annotations

import argparse
from typing import Any

from onnxprune.config import PruneConfig
from onnxprune.config_rules import opt
from onnxprune.core.errors import ConfigError

#: Options a dry run does not use: it proves nothing, repairs nothing, measures nothing and saves nothing.
_NOT_IN_DRY_RUN = ("validate", "atol", "rtol", "validation_data", "recover", "eval_data", "labels", "bench",
                   "bench_batches", "bench_runs", "bench_warmup", "sparse_storage", "external_data")


def check_dry_run(args: argparse.Namespace) -> None:
    """Refuse outputs a dry run would not write (they would be silently ignored otherwise)."""
    for flag, value in (("--report", args.report), ("--report-md", args.report_md), ("--plot", args.plot)):
        if value:
            raise ConfigError(f"{flag} does not apply with --dry-run, which writes nothing; drop one of the two")


def dry_run(model: str, config: PruneConfig, *, quiet: bool = False) -> int:
    """Plan the cut as ``config`` says (in memory), print it, write nothing; returns the exit status 0."""
    from onnxprune.pipeline import prune

    kept = {k: getattr(config, k) for k in config.given if k not in _NOT_IN_DRY_RUN}
    plan_config = PruneConfig(**kept, validate=False)
    report = prune(model, plan_config, output=None).report
    if quiet:
        return 0
    print(f"dry run of onnxprune prune --mode {report['mode']} on {model}: nothing was written")
    if report["mode"] in ("structured", "depth"):
        for block in (report.get("depth") or {}).get("removed_blocks", []):
            print(f"  residual block {block['add']} removed (last projection {block['last']})")
        _print_groups(report)
    else:
        _print_layers(report)
    kind = "params" if report["mode"] in ("structured", "depth") else "params (non-zero)"
    for label, key in ((kind, "params"), (f"MACs (batch {report.get('macs_batch', 1)})", "macs")):
        before, after = report[f"{key}_before"], report[f"{key}_after"]
        share = f" ({after / before:.1%} kept)" if before else ""
        print(f"  predicted {label:<18} {before:>12,} -> {after:,}{share}")
    if config.calib and config.recovery != "none":
        print(f"  (recovery {opt('recover')} {config.recovery} would change weights, not shapes)")
    return 0


def _group_label(group: dict[str, Any]) -> str:
    """The group's name if the report has one, else its first member's tensor and how many others."""
    if group.get("name"):
        return str(group["name"])
    members = [str(m).split("[axis")[0] for m in group.get("members", [])]
    if not members:
        return f"group {group['id']}"
    more = f" (+{len(members) - 1})" if len(members) > 1 else ""
    return f"{members[0]}{more}"


def _print_groups(report: dict[str, Any]) -> None:
    groups = report.get("groups", [])
    print(f"  {'group':>5}  {'channels kept':>14}  layers")
    for g in groups:
        kept = f"{g['size_after']}/{g['size_before']}"
        print(f"  {g['id']:>5}  {kept:>14}  {_group_label(g)}")
    for b in report.get("blocked", []):
        print(f"  {b['id']:>5}  {'blocked':>14}  {b['reason']}")


def _print_layers(report: dict[str, Any]) -> None:
    print(f"  {'sparsity':>9}  {'zeros':>10}  weight (readers)")
    for layer in report.get("layers", []):
        print(f"  {layer['sparsity']:>9.4f}  {layer['zeros_after']:>10,}  {layer['name']} "
              f"({', '.join(layer['readers'])})")
    for s in report.get("skipped", []):
        print(f"  {'skipped':>9}  {'':>10}  {s['name']}: {s['reason']}")
