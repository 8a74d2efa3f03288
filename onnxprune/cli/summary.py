"""The console summary of ``onnxprune prune``: what changed, which layers, how far outputs moved, how fast.

Why a module of its own: the summary is what most users read, and it must stay readable (lines under 100
characters, names instead of group numbers, percentages for accuracy, a "kept" column that means what it
says) while the details go to ``--verbose`` and the reports. Everything is read from the run's report dict;
nothing is recomputed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from onnxprune.report.drift import detail_text, drift_lines, exact_lines, fmt, pct, short
from onnxprune.runtime.bench_verdict import NOISE_ADVICE, bench_flags, ties

#: Groups listed without ``--verbose`` (the ones that lost the most channels).
TOP_GROUPS = 5
#: Width of the label column.
LABEL = 22
#: No summary line is longer than this.
MAX_LINE = 99


def human(n: float) -> str:
    """``1234567`` → ``1.23M``."""
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:g}"


def _row(label: str, text: str) -> str:
    return f"  {label:<{LABEL}}{text}"


def _rows(label: str, texts: Sequence[str]) -> list[str]:
    """The first text beside ``label``, the others aligned under it."""
    return [_row(label if i == 0 else "", t) for i, t in enumerate(texts)]


def size_lines(report: Mapping[str, Any]) -> list[str]:
    """Params, MACs and file size before/after; ``kept`` is after / before (``--ratio`` is the share removed)."""
    rows = [
        ("params" + (" (non-zero)" if report["mode"] not in ("structured", "width", "depth") else ""),
         report["params_before"], report["params_after"]),
        (f"MACs (batch {report.get('macs_batch', 1)})", report["macs_before"], report["macs_after"]),
        ("file size (bytes)", report["file_size_before"], report["file_size_after"]),
    ]
    lines = [f"  {'':<{LABEL}}{'before':>12}{'after':>12}{'kept':>9}"]
    for label, before, after in rows:
        kept = f"{100 * after / before:.1f}%" if before else "-"
        lines.append(f"  {label:<{LABEL}}{human(before):>12}{human(after):>12}{kept:>9}")
    return lines


def _pruned(g: Mapping[str, Any]) -> bool:
    return g.get("size_after", g.get("size_before")) != g.get("size_before")


def _group_row(g: Mapping[str, Any]) -> str:
    before, after = int(g["size_before"]), int(g["size_after"])
    name = short(str(g.get("name") or f"group {g['id']}"), 48)
    state = f"kept {100 * after / before:.0f}%" if before and after != before else "unpruned"
    return f"    {name:<48} {before:>6} -> {after:<6} {state}"


def group_lines(report: Mapping[str, Any], *, verbose: bool) -> list[str]:
    """Which groups were cut (named by their layers), which were left whole, and which were blocked."""
    groups = list(report.get("groups", []))
    blocked = list(report.get("blocked", []))
    pruned = [g for g in groups if _pruned(g)]
    lines = [_row("channel groups", f"{len(pruned)} of {len(groups)} pruned, {len(blocked)} blocked, "
                                    f"coverage {100 * float(report.get('coverage', 0.0)):.1f}%")]
    depth = report.get("depth") or {}
    removed = depth.get("removed_blocks", [])
    if removed:  # --remove-blocks ran first, and was proven on its own (a failure stops the run)
        proof = ", proven exact" if (depth.get("exact") or {}).get("passed") else ""
        lines.insert(0, _row("residual blocks", f"{len(removed)} removed{proof}: "
                                                f"{', '.join(short(str(b['add']), 40) for b in removed)}"))
    if verbose:
        lines += [_group_row(g) for g in groups]
        for b in blocked:
            name = short(str(b.get("name") or f"group {b['id']}"), 40)
            lines.append(f"    {name:<40} blocked: {b.get('reason', '')}")
    else:
        top = sorted(pruned, key=lambda g: (int(g["size_after"]) - int(g["size_before"]), int(g["id"])))
        lines += [_group_row(g) for g in top[:TOP_GROUPS]]
        if len(pruned) > TOP_GROUPS:
            lines.append(f"    ... and {len(pruned) - TOP_GROUPS} more pruned groups (--verbose lists all)")
    unpruned = len(groups) - len(pruned)
    if unpruned:
        why = ""
        round_to = (report.get("settings") or {}).get("round_to")
        if round_to:
            why = f": --round-to {round_to} rounds their cut up to the full width"
        lines.append(_row("left unpruned", f"{unpruned} of {len(groups)} groups{why}"))
    return lines


def validation_lines(validation: Mapping[str, Any], *, verbose: bool) -> list[str]:
    """Exactness verdict and drift, one short line per provider; every output's figures with ``verbose``."""
    lines = []
    if "exact" in validation:
        lines += _rows("exactness", exact_lines(validation["exact"]))
    if "drift" in validation:
        width = MAX_LINE - 2 - LABEL
        lines += _rows("drift vs original", drift_lines(validation["drift"], width=width))
        if verbose:
            drift = validation["drift"]
            lines.append(f"    drift on {drift.get('samples')} samples, {drift.get('inputs')}:")
            lines += detail_text(drift, indent="    ")
    if "sparse_storage" in validation:
        lines += _rows("sparse storage", exact_lines(validation["sparse_storage"]))
    return lines


def accuracy_lines(accuracy: Mapping[str, Any], *, verbose: bool) -> list[str]:
    """Top-1 (and with ``verbose`` top-5) accuracy before → after, in percent, with the change in points."""
    b, a = accuracy["before"], accuracy["after"]
    lines = []
    for key, label in (("top1", "top-1 accuracy"), ("top5", "top-5 accuracy"))[:2 if verbose else 1]:
        if b.get(key) is None or a.get(key) is None:
            continue
        change = 100 * (float(a[key]) - float(b[key]))
        lines.append(_row(label, f"{pct(b[key])} -> {pct(a[key])} ({change:+.2f} pts, n={a.get('n')})"))
    return lines


def bench_lines(bench: Mapping[str, Any], *, verbose: bool, verdicts: Sequence[Any] | None = None) -> list[str]:
    """One row per provider and batch: original → pruned p50, speedup against the MAC ideal, flags; a row slower
    by its median whose never-slower verdict (``verdicts``) calls it a tie says "tie" instead of "SLOWER"."""
    results = list(bench.get("results", []))
    flags = {(f["model"], f["provider"], f["batch"]): f["reasons"] for f in bench_flags(results)}
    base = {(r["provider"], r["batch"]): r for r in results if r.get("model") == "original"}
    rows = []
    for r in results:
        b = base.get((r["provider"], r["batch"]))
        if r.get("model") == "original" or b is None:
            continue
        text = (f"{r['provider']} batch {r['batch']}: {b['p50_ms']:.3f} -> {r['p50_ms']:.3f} ms, "
                f"{fmt(r.get('speedup'), '.2f')}x (ideal {fmt(r.get('ideal_speedup'), '.2f')}x)")
        reasons = flags.get((r["model"], r["provider"], r["batch"]), []) + flags.get(
            ("original", r["provider"], r["batch"]), [])
        if r.get("slower"):
            text += " tie (within the margin)" if ties([r], verdicts) else " SLOWER"
        if reasons:
            text += " " + "/".join(sorted({x.split(":")[0] for x in reasons}))
        rows.append(text)
        if verbose:
            rows += [f"  {x}" for x in reasons]
    lines = _rows("speed (p50)", rows)
    if flags:
        lines.append(_row("", NOISE_ADVICE))
    return lines


def confirmation_lines(report: Mapping[str, Any]) -> list[str]:
    """What timing a slower row again found: a SLOWER row above it that did not hold is said to be load."""
    rows = [f"{c['provider']} batch {c['batch']}: {c['speedup']:.2f}x (95% {c['low']:.2f}-{c['high']:.2f}), "
            f"fastest runs {c['fastest']:.2f}x, {c['rounds']} rounds in {c['seconds']:.2g} s: "
            + ("slower" if c["slower"] else "not slower (the first timing met load)")
            for c in (report.get("speed") or {}).get("confirmation", [])]
    return _rows("timed again", rows)


def _prediction_text(p: Mapping[str, Any]) -> str:
    """One batch's prediction, said for what it is: a layer sum without calibration is no prediction of the
    model (it leaves out the fixed per-run cost), and a figure above the MAC ideal says why it may be."""
    above = f"above the MAC ideal {p['mac_ideal']:.2f}x" if p.get("above_mac_ideal") else ""
    if p.get("basis") == "layer sum, uncalibrated":
        why = f"; {above}, as layers timed alone leave out the per-run overhead" if above else ""
        return (f"batch {p['batch']}: layer sum {p['predicted_speedup']:.2f}x (uncalibrated{why}; "
                f"--bench calibrates it)")
    return f"batch {p['batch']}: predicted {p['predicted_speedup']:.2f}x" + (f" ({above})" if above else "")


def latency_lines(report: Mapping[str, Any]) -> list[str]:
    """The latency table's prediction per batch beside the measured speedup, and a retry if there was one."""
    rows = []
    for p in (report.get("latency") or {}).get("prediction", []):
        text = _prediction_text(p)
        if "measured_speedup" in p:
            text += f", measured {p['measured_speedup']:.2f}x (error {100 * p['error']:+.0f}%)"
        rows.append(text)
    target = report.get("latency_target") or {}
    if target.get("checks"):
        text = (f"target {target['target_speedup']:.2f}x at batch {target['batch']}: "
                f"{len(target['group_ratios'])} groups cut, ranked by {target['allocation']}; predicted "
                f"{target['predicted_speedup']:.2f}x")
        if target.get("measured_speedup") is not None:
            text += f", timed whole {target['measured_speedup']:.2f}x"
            if target.get("measured_interval"):
                text += " (95% {:.2f}-{:.2f}, {} check(s))".format(*target["measured_interval"], len(target["checks"]))
        rows.append(text)
    lines = _rows("latency model", rows)
    if (report.get("speed") or {}).get("retried"):
        lines.append(_row("", f"retried with --round-to {report['settings'].get('round_to')}: the first try "
                              f"was slower"))
    return lines


def dims_lines(report: Mapping[str, Any]) -> list[str]:
    """The input sizes onnxprune chose for dynamic axes (MACs and checks use them), when it chose any."""
    from onnxprune.runtime.dims import describe_assumed

    text = describe_assumed(report.get("dims_assumed", []))
    return [_row("input dims", text)] if text else []


def summary_lines(report: Mapping[str, Any], output: str, *, verbose: bool = False) -> list[str]:
    """Every line of the summary, in order (see the module doc)."""
    lines = [f"onnxprune prune --mode {report['mode']}  ->  {output}", *size_lines(report)]
    lines += dims_lines(report)
    if "sparsity" in report:
        lines.append(_row("sparsity achieved", f"{100 * float(report['sparsity']['overall']):.2f}%"))
    calibration = report.get("calibration")
    if isinstance(calibration, dict):  # sparsegpt / --sequential (onnxprune/recovery/sequential.py)
        kind = "sequential" if calibration.get("sequential") else "one-shot"
        lines.append(_row("calibration", f"{kind}, {calibration.get('passes')} pass(es) over --calib, "
                                         f"{float(calibration.get('seconds', 0)):.2f} s"))
    declined = (report.get("sparsegpt") or {}).get("magnitude_instead") if isinstance(report.get("sparsegpt"), dict) \
        else None
    if declined:
        lines.append(_row("sparsegpt", f"{len(declined)} weight(s) pruned by magnitude instead "
                                       f"(e.g. {declined[0]['name']}: {declined[0]['reason']})"[:78]))
    if "groups" in report:
        lines += group_lines(report, verbose=verbose)
    if report.get("validation"):
        lines += validation_lines(report["validation"], verbose=verbose)
    vocab = report.get("vocab")
    if isinstance(vocab, dict):  # --keep-tokens (onnxprune/recovery/vocabulary.py)
        check = vocab.get("check")
        proof = "" if check is None else f", logits at the kept ids: {'pass' if check['passed'] else 'FAIL'} " \
                                         f"(max|diff| {check['max_diff']:.2g})"
        lines.append(_row("vocabulary", f"{vocab['vocab_before']} -> {vocab['vocab_after']} ids{proof}"))
    if "accuracy" in report:
        lines += accuracy_lines(report["accuracy"], verbose=verbose)
    if report.get("bench"):
        lines += bench_lines(report["bench"], verbose=verbose, verdicts=(report.get("speed") or {}).get("verdicts"))
        lines += confirmation_lines(report)
    lines += latency_lines(report)
    skipped = list(report.get("skipped", []))
    for item in skipped if verbose else skipped[:10]:
        lines.append(f"  skipped {item['name']}: {item['reason']}")
    lines.append(_row("time", f"{report['seconds']:.2f} s"))
    return lines


def print_summary(report: Mapping[str, Any], output: str, *, verbose: bool = False) -> None:
    """Print :func:`summary_lines` on stdout."""
    print("\n".join(summary_lines(report, output, verbose=verbose)))
