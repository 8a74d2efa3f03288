"""Short, honest text for comparisons: exactness verdicts and drift, per output, named.

Why: pruning changes a model's outputs on purpose, so "drift" is a measurement, not a verdict; and it
means something only for floating outputs (the max|diff| of an int64 class label is a difference of class
numbers). These helpers turn the dicts the run produced (``ValidationReport.to_dict()`` and
``Comparison.to_dict()``, also as read back from JSON) into lines under 100 characters for the console,
and into per-output rows for ``--verbose`` and the Markdown report. A number that could not be computed
(NaN) is printed as ``nan`` and ranks as the worst, never as perfect.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

#: Longest output name shown on a console line before it is shortened.
NAME_WIDTH = 28


def number(value: Any) -> float:
    """A float from a report value: JSON strings ``"nan"``/``"inf"`` and ``None`` become NaN/inf/NaN."""
    if value is None:
        return math.nan
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return math.nan
    return float(value)


def fmt(value: Any, spec: str = ".3g") -> str:
    """``value`` formatted with ``spec``; ``-`` for a missing value and ``nan``/``inf`` spelled out."""
    if value is None:
        return "-"
    x = number(value)
    if not math.isfinite(x):
        return str(x)
    return format(x, spec)


def pct(value: Any) -> str:
    """A fraction in [0, 1] as a percentage with two decimals (``-`` when missing)."""
    return "-" if value is None else fmt(100 * number(value), ".2f") + "%"


def short(name: str, width: int = NAME_WIDTH) -> str:
    """``name`` cut to ``width`` characters, keeping its end (the part that differs in exported names)."""
    return name if len(name) <= width else "..." + name[-(width - 3):]


def is_floating(output: Mapping[str, Any]) -> bool:
    """True for a floating output (dtype ``float*``/``bfloat16``); old reports without a dtype count as float."""
    dtype = str(output.get("dtype") or "")
    return not dtype or "float" in dtype


def comparisons(validation: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """``[(provider, comparison dict)]`` of a ``ValidationReport`` dict, or ``[("", cmp)]`` of a Comparison."""
    if "comparisons" in validation:
        return list((validation.get("comparisons") or {}).items())
    if "outputs" in validation:
        return [("", validation)]
    return []


def floating_outputs(cmp: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The floating outputs of one comparison, worst cosine first (NaN first of all)."""
    outs = [o for o in cmp.get("outputs", []) if is_floating(o)]

    def badness(o: Mapping[str, Any]) -> float:
        c = number(o.get("cosine"))
        return -math.inf if math.isnan(c) else c

    return sorted(outs, key=badness)


def output_drift(o: Mapping[str, Any], *, name_width: int = NAME_WIDTH) -> str:
    """``'name' cosine 0.9917, top-1 agree 98.33%, max|diff| 0.709`` (``problem`` instead, if any)."""
    head = f"'{short(str(o['name']), name_width)}'"
    if o.get("problem"):
        return f"{head} {o['problem']}"
    text = f"{head} cosine {fmt(o.get('cosine'), '.4f')}"
    if o.get("top1") is not None:
        text += f", top-1 agree {pct(o['top1'])}"
    return text + f", max|diff| {fmt(o.get('max_abs'))}"


def drift_lines(validation: Mapping[str, Any], *, width: int = 99) -> list[str]:
    """One line per provider, at most ``width`` characters: its worst floating output's drift.

    When there are several floating outputs the line says so (``worst of N``); the output name is
    shortened as needed to fit.
    """
    lines = []
    for provider, cmp in comparisons(validation):
        outs = floating_outputs(cmp)
        prefix = f"{provider}: " if provider else ""
        if not outs:
            lines.append(prefix + "no floating output to measure drift on")
            continue
        more = f" (worst of {len(outs)})" if len(outs) > 1 else ""
        name_width = NAME_WIDTH
        text = prefix + output_drift(outs[0], name_width=name_width) + more
        while len(text) > width and name_width > 8:
            name_width -= 1
            text = prefix + output_drift(outs[0], name_width=name_width) + more
        lines.append(text)
    return lines


def exact_lines(validation: Mapping[str, Any]) -> list[str]:
    """One line per provider: pass/FAIL and the largest difference over all outputs."""
    lines = []
    samples = validation.get("samples")
    for provider, cmp in comparisons(validation):
        outs = list(cmp.get("outputs", []))
        worst = max((number(o.get("max_abs")) for o in outs), default=0.0, key=lambda x: math.inf
                    if math.isnan(x) else x)
        verdict = "pass" if cmp.get("within_tolerance", cmp.get("passed")) else "FAIL"
        on = f" on {samples} samples" if samples else ""
        lines.append(f"{provider + ': ' if provider else ''}{verdict}, max|diff| {fmt(worst)}{on}")
    return lines


def detail_rows(validation: Mapping[str, Any]) -> list[tuple[str, ...]]:
    """Every provider × output: dtype, cosine, top-1, top-5, max/mean abs and max rel diff, problem.

    Non-floating outputs are listed (so nothing is hidden) with their metrics left out of the drift.
    """
    rows: list[tuple[str, ...]] = []
    for provider, cmp in comparisons(validation):
        for o in cmp.get("outputs", []):
            dtype = str(o.get("dtype") or "-")
            if not is_floating(o):
                note = o.get("problem") or ("equal" if number(o.get("max_abs")) == 0 else "differs")
                rows.append((provider, str(o["name"]), dtype, "-", "-", "-", "-", "-", "-",
                             f"{note} (not a drift measure)"))
                continue
            rows.append((provider, str(o["name"]), dtype, fmt(o.get("cosine"), ".6f"), pct(o.get("top1")),
                         pct(o.get("top5")), fmt(o.get("max_abs")), fmt(o.get("mean_abs")),
                         fmt(o.get("max_rel")), str(o.get("problem") or "")))
    return rows


DETAIL_HEADER = ("provider", "output", "dtype", "cosine", "top-1 agree", "top-5 agree", "max|diff|",
                 "mean|diff|", "max rel diff", "note")


def detail_text(validation: Mapping[str, Any], indent: str = "") -> list[str]:
    """:func:`detail_rows` as an aligned plain-text table."""
    rows = [DETAIL_HEADER, *detail_rows(validation)]
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(DETAIL_HEADER) - 1)]
    lines = []
    for r in rows:
        cells = [str(c).ljust(w) if i < 3 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths,
                                                                                               strict=False))]
        lines.append((indent + "  ".join(cells) + "  " + str(r[-1])).rstrip())
    return lines


def validation_text(doc: Mapping[str, Any], *, bounds: str, violations: list[str]) -> str:
    """What ``onnxprune validate`` prints: models, inputs, checks, every output's drift, bounds, verdict."""
    lines = [f"original:  {doc.get('original')}", f"candidate: {doc.get('candidate')}",
             f"inputs:    {doc.get('inputs')}; {doc.get('samples')} sample(s) in batches of {doc.get('batch_size')}"]
    for c in doc.get("checks", []):
        lines.append(f"check {c['name']:<16} {'ok' if c['passed'] else 'FAILED: ' + str(c.get('message', ''))}")
    if doc.get("comparisons"):
        lines += ["", *detail_text(doc), ""]
        lines += [f"drift: {line}" for line in drift_lines(doc, width=92)]
    if bounds == "none":
        lines.append("bounds: none set, so drift is reported and not judged "
                     "(set --atol/--rtol/--min-cosine/--min-top1)")
    else:
        lines.append(f"bounds: {bounds}")
    if violations:
        lines += [f"  crossed: {v}" for v in violations]
    checks_ok = all(c["passed"] for c in doc.get("checks", []))
    verdict = "PASSED" if checks_ok and not violations else "FAILED"
    lines.append(f"validation {verdict}")
    return "\n".join(lines)
