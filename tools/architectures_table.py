"""Structured pruning on every committed model, as a Markdown table.

Why this tool exists: the README's claims about real architectures (which groups are prunable, how much a
cut removes, that the cut is exact) must come from a command anyone can rerun. For each ``models/*.onnx``
it analyses the model, prunes it at ratios 0.3 and 0.5 (L2 criterion, per-group ratio), counts parameters
and MACs (``onnxprune.core.stats.model_stats``, batch 1) before and after, and runs the zero-equivalence oracle:
the pruned model against the original with the dropped channels' consumer weights zeroed
(``onnxprune.structured.oracle.zeroed_reference``), both in onnxruntime (CPU, one thread) on seeded normal inputs.
The oracle passes when the largest absolute difference is at most 1e-4 x the output scale. It also
checks that the parameter count dropped by exactly the amount the analysis predicted.

Run from the repository root::

    .venv/bin/python tools/architectures_table.py
    .venv/bin/python tools/architectures_table.py --models tv_resnet18 digits_transformer --batch 4
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onnxprune.core.io import load_model  # noqa: E402
from onnxprune.core.stats import model_stats  # noqa: E402
from onnxprune.runtime.feeds import random_feeds  # noqa: E402
from onnxprune.runtime.session import create_session, run_session  # noqa: E402
from onnxprune.structured.analysis import analyze  # noqa: E402
from onnxprune.structured.oracle import zeroed_reference  # noqa: E402
from onnxprune.structured.prune import coverage, prune_structured  # noqa: E402

RATIOS = (0.3, 0.5)
TOLERANCE = 1e-4


def _outputs(model: object, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = create_session(model, provider="cpu", threads=1)  # type: ignore[arg-type]
    return list(run_session(session, feeds).values())


def oracle_diff(pruned: object, reference: object, feeds: dict[str, np.ndarray]) -> tuple[float, float]:
    """Largest |pruned - reference| over all outputs, and the output scale it is judged against."""
    diff, scale = 0.0, 1.0
    for got, want in zip(_outputs(pruned, feeds), _outputs(reference, feeds), strict=True):
        if got.dtype.kind != "f":
            diff = max(diff, float(np.any(got != want)))
            continue
        diff = max(diff, float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64)))))
        scale = max(scale, float(np.max(np.abs(want))))
    return diff, scale


def measure(path: Path, *, batch: int, seed: int) -> dict[str, object]:
    """One model: groups, coverage, and per ratio the params/MACs after, oracle result and timings."""
    model = load_model(path)
    t0 = time.perf_counter()
    dg = analyze(model)
    t_analyze = time.perf_counter() - t0
    before = model_stats(model)
    feeds = random_feeds(model, seed=seed, batch=batch)
    row: dict[str, object] = {
        "model": path.stem,
        "groups": f"{len(dg.prunable_groups)}/{len(dg.groups)}",
        "coverage": coverage(model, dg, dict(dg.shapes)),
        "params": before.params,
        "macs": before.macs,
        "analyze_s": t_analyze,
    }
    for ratio in RATIOS:
        t0 = time.perf_counter()
        result = prune_structured(model, ratio=ratio, dg=dg)
        t_prune = time.perf_counter() - t0
        after = model_stats(result.model)
        diff, scale = oracle_diff(result.model, zeroed_reference(model, dg, result.plan), feeds)
        exact = before.params - after.params == dg.params_removed(result.plan.keep)
        row[ratio] = {
            "params": after.params, "macs": after.macs, "diff": diff,
            "pass": diff <= TOLERANCE * scale and exact, "prune_s": t_prune,
        }
    return row


def _ratio(after: int, before: int) -> str:
    return f"{after:,} ({after / before:.0%})" if before else f"{after:,}"


def render(rows: list[dict], argv: list[str], batch: int, seed: int) -> str:
    cols = ["model", "groups (prunable/total)", "coverage", "params", "MACs"]
    for r in RATIOS:
        cols += [f"params @{r}", f"MACs @{r}", f"oracle max abs diff @{r}"]
    cols += ["analyze s", "prune s @0.3/0.5"]
    lines = [
        "| " + " | ".join(cols) + " |",
        "|" + "|".join("---" if c == "model" else "---:" for c in cols) + "|",
    ]
    for row in rows:
        cells = [f"`{row['model']}`", str(row["groups"]), f"{row['coverage']:.2f}", f"{row['params']:,}",
                 f"{row['macs']:,}"]
        for r in RATIOS:
            m = row[r]
            verdict = "pass" if m["pass"] else "FAIL"
            cells += [_ratio(m["params"], row["params"]), _ratio(m["macs"], row["macs"]),
                      f"{m['diff']:.1e} {verdict}"]
        cells += [f"{row['analyze_s']:.2f}", "/".join(f"{row[r]['prune_s']:.2f}" for r in RATIOS)]
        lines.append("| " + " | ".join(cells) + " |")
    stamp = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}, " \
              f"Python {platform.python_version()}"
    command = "python tools/architectures_table.py" + ("" if not argv else " " + " ".join(argv))
    footer = [
        "",
        f"Measured {stamp} on {machine} with `{command}` (batch {batch}, seed {seed}).",
        "Coverage: share of weighted-layer MACs whose channels are in prunable groups. Ratio: share of each "
        "prunable group's channels removed (L2 criterion). Oracle: pruned vs original with the dropped channels' "
        f"consumer weights zeroed, onnxruntime CPU; pass = max abs diff <= {TOLERANCE:g} x output scale and "
        "the parameter count dropped by exactly the predicted amount. Times: analysis, and plan + surgery "
        "(wall clock, single run).",
    ]
    return "\n".join(lines + footer)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", help="model stems in models/ (default: all)")
    parser.add_argument("--batch", type=int, default=2, help="batch of the seeded oracle inputs")
    parser.add_argument("--seed", type=int, default=0, help="seed of the oracle inputs")
    args = parser.parse_args(argv)
    paths = sorted((ROOT / "models").glob("*.onnx"))
    if args.models:
        paths = [p for p in paths if p.stem in set(args.models)]
        missing = set(args.models) - {p.stem for p in paths}
        if missing:
            parser.error(f"no such model in models/: {', '.join(sorted(missing))}")
    rows = [measure(p, batch=args.batch, seed=args.seed) for p in paths]
    print(render(rows, sys.argv[1:] if argv is None else argv, args.batch, args.seed))
    return 0 if all(row[r]["pass"] for row in rows for r in RATIOS) else 1  # type: ignore[index]


if __name__ == "__main__":
    raise SystemExit(main())
