"""A Markdown report of a prune run, for people: settings, size, groups pruned, validation, benchmark.

Why: the JSON report is for machines and CI; a reviewer deciding whether to ship a pruned model wants one
page with the before/after numbers, the proof that it still computes the same function (or how far it
drifted), and the measured speed. Everything rendered here comes from the dicts the run produced
(``ValidationReport.to_dict()``, ``BenchReport.to_dict()``, the prune report); nothing is recomputed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from onnxprune.core.io import check_output_path

#: Groups listed in full up to this many; the rest are counted.
MAX_GROUP_ROWS = 200
MAX_GROUP_COLUMNS = 8


def _cell(value: Any) -> str:
    """One table cell: numbers with separators, lists shortened, pipes escaped."""
    return _text(value).replace("|", "\\|").replace("\n", " ")


def _text(value: Any) -> str:
    if isinstance(value, bool):
        text = "yes" if value else "no"
    elif isinstance(value, int):
        text = f"{value:,}"
    elif isinstance(value, float):
        text = f"{value:.4g}"
    elif isinstance(value, (list, tuple)):
        items = [_text(v) for v in value[:8]]
        text = ", ".join(items) + (f", ... ({len(value)} in all)" if len(value) > 8 else "")
    elif value is None:
        text = "-"
    else:
        text = str(value)
    return text


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def _change(before: Any, after: Any) -> str:
    if isinstance(before, (int, float)) and isinstance(after, (int, float)) and before:
        return f"{after / before:.3f}x ({100 * (after - before) / before:+.1f}%)"
    return "-"


def _size_section(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    keys = [k for k in ("params", "nonzero_params", "macs", "file_size") if k in before or k in after]
    keys += [k for k in before if k not in keys and isinstance(before[k], (int, float)) and k in after]
    rows = [(k, before.get(k), after.get(k), _change(before.get(k), after.get(k))) for k in keys]
    return ["## Size", "", *_table(("", "before", "after", "after / before"), rows), ""]


def _groups_section(groups: Any) -> list[str]:
    lines = ["## Groups pruned", ""]
    if isinstance(groups, Mapping):
        groups = [{"group": k, **(v if isinstance(v, Mapping) else {"value": v})} for k, v in groups.items()]
    groups = list(groups or [])
    if not groups:
        return lines + ["No group was pruned.", ""]
    columns: list[str] = []
    for g in groups:
        for k in g:
            if k not in columns and len(columns) < MAX_GROUP_COLUMNS:
                columns.append(k)
    rows = [[g.get(c) for c in columns] for g in groups[:MAX_GROUP_ROWS]]
    lines += _table(columns, rows)
    if len(groups) > MAX_GROUP_ROWS:
        lines.append(f"\n... and {len(groups) - MAX_GROUP_ROWS} more groups (see the JSON report).")
    return lines + [""]


def _one_validation(title: str, v: Mapping[str, Any]) -> list[str]:
    lines = [f"### {title}", "", f"**{'PASS' if v.get('passed') else 'FAIL'}** - {v.get('summary', '')}", ""]
    failed = [c for c in v.get("checks", []) if not c.get("passed")]
    for c in failed:
        lines.append(f"- check `{c['name']}` failed: {c.get('message', '')}")
    rows = []
    for provider, cmp in (v.get("comparisons") or {}).items():
        for o in cmp.get("outputs", []):
            rows.append((provider, o["name"], o["max_abs"], o["max_rel"], o["mean_abs"], o["cosine"],
                         o.get("top1"), o.get("top5"), o["needed_atol"], o["needed_rtol"],
                         "ok" if o["passed"] else ("FAIL: " + o["problem"] if o.get("problem") else "FAIL")))
    if rows:
        lines += _table(("provider", "output", "max abs diff", "max rel diff", "mean abs diff", "cosine",
                         "top-1 agree", "top-5 agree", "atol that passes", "rtol that passes", "result"), rows)
    if v.get("inputs"):
        lines.append(f"\nInputs: {v['inputs']}; {v.get('samples')} sample(s); "
                     f"atol={v.get('atol')} rtol={v.get('rtol')}" + (f" ({v['rule']})" if v.get("rule") else "")
                     + (" (report only)" if v.get("report_only") else ""))
    return lines + [""]


def _validation_section(validation: Mapping[str, Any]) -> list[str]:
    lines = ["## Validation", ""]
    if "comparisons" in validation or "checks" in validation:
        return lines + _one_validation("Pruned vs original", validation)
    titles = {"exact": "Exactness (pruned vs original with dropped channels silenced)",
              "drift": "Drift from the original (report only)", "sparse_storage": "Sparse storage"}
    for key, value in validation.items():
        if isinstance(value, Mapping):
            lines += _one_validation(titles.get(key, key), value)
    return lines


def _bench_section(bench: Mapping[str, Any]) -> list[str]:
    lines = ["## Benchmark", ""]
    machine = bench.get("machine") or {}
    if machine:
        lines.append("Machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()) + "  ")
    settings = bench.get("settings") or {}
    if settings:
        lines.append("Settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()))
    lines.append("")
    rows = []
    for r in bench.get("results", []):
        rows.append((r["model"], r["provider"], r["batch"], r["p50_ms"], r["p90_ms"], r["p99_ms"], r["throughput"],
                     r.get("speedup"), r.get("ideal_speedup"), r.get("efficiency"),
                     None if r.get("peak_rss_bytes") is None else r["peak_rss_bytes"] / 2**20,
                     "**SLOWER than the first model**" if r.get("slower") else ""))
    lines += _table(("model", "provider", "batch", "p50 ms", "p90 ms", "p99 ms", "items/s", "speedup",
                     "ideal (MAC ratio)", "speedup / ideal", "peak RSS MB", ""), rows)
    lines.append("")
    for s in bench.get("skipped", []):
        lines.append(f"- skipped {s['model']} on {s['provider']} at batch {s['batch']}: {s['reason']}")
    for note in bench.get("notes", []):
        lines.append(f"- {note}")
    return lines + [""]


def render_markdown(
    *,
    report: Mapping[str, Any] | None = None,
    settings: Mapping[str, Any] | None = None,
    stats_before: Mapping[str, Any] | None = None,
    stats_after: Mapping[str, Any] | None = None,
    groups: Any = None,
    validation: Mapping[str, Any] | None = None,
    bench: Mapping[str, Any] | None = None,
) -> str:
    """The Markdown text; see :func:`write_markdown_report` for the arguments."""
    report = dict(report or {})
    settings = settings if settings is not None else report.get("settings")
    if stats_before is None and "params_before" in report:
        stats_before = {k[: -len("_before")]: v for k, v in report.items() if k.endswith("_before")
                        and isinstance(v, (int, float))}
    if stats_after is None and "params_after" in report:
        stats_after = {k[: -len("_after")]: v for k, v in report.items() if k.endswith("_after")
                       and isinstance(v, (int, float))}
    groups = groups if groups is not None else report.get("groups")
    validation = validation if validation is not None else report.get("validation")
    bench = bench if bench is not None else report.get("bench")

    title = "# onnxprune report" + (f" ({report['mode']})" if report.get("mode") else "")
    lines = [title, ""]
    if settings:
        lines += ["## Settings", "", *_table(("setting", "value"), [(k, v) for k, v in settings.items()]), ""]
    if stats_before or stats_after:
        lines += _size_section(stats_before or {}, stats_after or {})
    if groups is not None:
        lines += _groups_section(groups)
    if validation:
        lines += _validation_section(validation)
    accuracy = report.get("accuracy")
    if accuracy:
        keys = [k for k in accuracy.get("before", {}) if isinstance(accuracy["before"][k], (int, float))]
        rows = [(k, accuracy["before"].get(k), accuracy.get("after", {}).get(k)) for k in keys]
        lines += ["## Accuracy", "", *_table(("metric", "before", "after"), rows), ""]
    if bench:
        lines += _bench_section(bench)
    warnings = report.get("warnings")
    if warnings:
        lines += ["## Warnings", "", *[f"- {w}" for w in warnings], ""]
    return "\n".join(lines).rstrip() + "\n"


def write_markdown_report(
    path: str | os.PathLike[str],
    *,
    report: Mapping[str, Any] | None = None,
    settings: Mapping[str, Any] | None = None,
    stats_before: Mapping[str, Any] | None = None,
    stats_after: Mapping[str, Any] | None = None,
    groups: Any = None,
    validation: Mapping[str, Any] | None = None,
    bench: Mapping[str, Any] | None = None,
) -> Path:
    """Write the Markdown report (atomically).

    Pass either the whole prune ``report`` dict (its ``settings``, ``*_before``/``*_after`` numbers,
    ``groups``, ``validation``, ``accuracy``, ``bench`` and ``warnings`` keys are used), or the sections
    one by one; a section given explicitly wins over the one in ``report``. Missing sections are left out.

    Args:
        path: the ``.md`` file to write.
        report: the prune run's JSON-able report.
        settings: option name → value.
        stats_before / stats_after: ``{"params": ..., "macs": ..., "file_size": ...}``.
        groups: a list of dicts (one row per group, keys as columns) or a dict of them.
        validation: a ``ValidationReport.to_dict()``, or a dict of them by title (``exact``, ``drift``).
        bench: a ``BenchReport.to_dict()``.

    Returns:
        The path written.

    Raises:
        OutputError: the folder is missing or not writable.

    Example:
        >>> write_markdown_report("report.md", report=result.report)  # doctest: +SKIP
    """
    from onnxprune.core.io import write_text_atomic

    out = check_output_path(path)
    write_text_atomic(out, render_markdown(report=report, settings=settings, stats_before=stats_before,
                                           stats_after=stats_after, groups=groups, validation=validation,
                                           bench=bench))
    return out

