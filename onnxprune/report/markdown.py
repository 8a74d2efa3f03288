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
from onnxprune.report.drift import DETAIL_HEADER, comparisons, detail_rows, drift_lines, pct
from onnxprune.runtime.bench_verdict import NOISE_ADVICE, bench_flags

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


def _groups_section(groups: Any, *, blocked: Sequence[Mapping[str, Any]] = (), round_to: Any = None) -> list[str]:
    lines = ["## Groups pruned", ""]
    if isinstance(groups, Mapping):
        groups = [{"group": k, **(v if isinstance(v, Mapping) else {"value": v})} for k, v in groups.items()]
    groups = list(groups or [])
    if groups and all("size_before" in g and "size_after" in g for g in groups):
        return lines + _named_groups(groups, blocked, round_to)
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


def _named_groups(groups: list[Mapping[str, Any]], blocked: Sequence[Mapping[str, Any]], round_to: Any) -> list[str]:
    """A prune report's groups: the cut ones by name, then how many were left whole, then the blocked ones."""
    def name(g: Mapping[str, Any]) -> str:
        return str(g.get("name") or f"group {g['id']}")

    cut = [g for g in groups if g["size_after"] != g["size_before"]]
    whole = [g for g in groups if g["size_after"] == g["size_before"]]
    lines: list[str] = []
    if cut:
        rows = [(name(g), g.get("layers") or "-", g["size_before"], g["size_after"],
                 f"{100 * g['size_after'] / g['size_before']:.1f}%" if g["size_before"] else "-",
                 g.get("criterion")) for g in cut[:MAX_GROUP_ROWS]]
        lines += _table(("group", "layers", "channels before", "after", "kept", "criterion"), rows)
        if len(cut) > MAX_GROUP_ROWS:
            lines.append(f"\n... and {len(cut) - MAX_GROUP_ROWS} more groups (see the JSON report).")
    else:
        lines.append("No group was pruned.")
    if whole:
        why = f" (--round-to {round_to} rounds their cut up to the full width)" if round_to else ""
        lines += ["", f"{len(whole)} of {len(groups)} prunable groups were left unpruned{why}: "
                  + _cell([name(g) for g in whole]) + "."]
    if blocked:
        lines += ["", "### Blocked groups (never pruned)", ""]
        lines += _table(("group", "channels", "why"), [(name(b), b.get("size"), b.get("reason")) for b in
                                                       blocked[:MAX_GROUP_ROWS]])
    return lines + [""]


def _one_validation(title: str, v: Mapping[str, Any]) -> list[str]:
    """An exactness check: a verdict, and per output the figures that the verdict rests on."""
    passed = bool(v.get("within_tolerance", v.get("passed"))) if "outputs" in v else bool(v.get("passed"))
    if "comparisons" in v:
        passed = bool(v.get("passed")) and all(c.get("within_tolerance", c.get("passed"))
                                               for c in (v.get("comparisons") or {}).values())
    lines = [f"### {title}", "", f"**{'PASS' if passed else 'FAIL'}** - {v.get('summary', '')}", ""]
    failed = [c for c in v.get("checks", []) if not c.get("passed")]
    for c in failed:
        lines.append(f"- check `{c['name']}` failed: {c.get('message', '')}")
    rows = []
    for provider, cmp in comparisons(v):
        for o in cmp.get("outputs", []):
            rows.append((provider, o["name"], o.get("dtype"), o["max_abs"], o["max_rel"], o["mean_abs"], o["cosine"],
                         o["needed_atol"], o["needed_rtol"],
                         "ok" if o["passed"] else ("FAIL: " + o["problem"] if o.get("problem") else "FAIL")))
    if rows:
        lines += _table(("provider", "output", "dtype", "max abs diff", "max rel diff", "mean abs diff", "cosine",
                         "atol that passes", "rtol that passes", "result"), rows)
    if v.get("inputs"):
        lines.append(f"\nInputs: {v['inputs']}; {v.get('samples')} sample(s); "
                     f"atol={v.get('atol')} rtol={v.get('rtol')}")
    return lines + [""]


def _drift_section(title: str, v: Mapping[str, Any]) -> list[str]:
    """Drift is a measurement (pruning changes outputs on purpose): no verdict, per floating output, named."""
    lines = [f"### {title}", "", "Measured, not enforced: pruning changes the outputs by design. "
             "Floating outputs only count as drift; other outputs are listed for completeness.", ""]
    for c in v.get("checks", []):
        if not c.get("passed"):
            lines.append(f"- check `{c['name']}` failed: {c.get('message', '')}")
    for line in drift_lines(v, width=200):
        lines.append(f"- worst output: {line}")
    lines.append("")
    lines += _table(DETAIL_HEADER, detail_rows(v))
    if v.get("inputs"):
        lines.append(f"\nInputs: {v['inputs']}; {v.get('samples')} sample(s).")
    return lines + [""]


def _validation_section(validation: Mapping[str, Any]) -> list[str]:
    lines = ["## Validation", ""]
    if "comparisons" in validation or "checks" in validation:
        if validation.get("report_only"):
            return lines + _drift_section("Pruned vs original (drift)", validation)
        return lines + _one_validation("Pruned vs original", validation)
    titles = {"exact": "Exactness (pruned vs original with dropped channels silenced)",
              "drift": "Drift from the original", "sparse_storage": "Sparse storage"}
    for key, value in validation.items():
        if isinstance(value, Mapping):
            if key == "drift" or value.get("report_only"):
                lines += _drift_section(titles.get(key, key), value)
            else:
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
    flags = bench_flags(bench.get("results", []))
    for f in flags:
        lines.append(f"- **{f['model']}** on {f['provider']} at batch {f['batch']}: {'; '.join(f['reasons'])}")
    if flags:
        lines.append(f"- {NOISE_ADVICE}")
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
        lines += _groups_section(groups, blocked=report.get("blocked") or (),
                                 round_to=(settings or {}).get("round_to"))
    if validation:
        lines += _validation_section(validation)
    accuracy = report.get("accuracy")
    if accuracy:
        before, after = accuracy.get("before", {}), accuracy.get("after", {})
        rows = [(label, pct(before.get(k)), pct(after.get(k)),
                 "-" if before.get(k) is None or after.get(k) is None
                 else f"{100 * (float(after[k]) - float(before[k])):+.2f} pts")
                for k, label in (("top1", "top-1"), ("top5", "top-5")) if k in before]
        lines += ["## Accuracy", "", *_table(("metric", "before", "after", "change"), rows),
                  "", f"On {after.get('n', before.get('n'))} labelled samples.", ""]
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

