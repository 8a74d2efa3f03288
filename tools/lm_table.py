"""Every pruning mode on the trained tiny GPT, judged by held-out perplexity, as a Markdown table.

Why this tool exists: a language model pruned "with little loss" must be measured on text it never saw, by
the number language models are judged by. For each setting this runs the CLI exactly as a user would
(``onnxprune prune MODEL -o OUT FLAGS --round-to 1 --no-bench --data VALID``, one process each), then on the
held-out windows measures the pruned model's next-token perplexity (``onnxprune.runtime.perplexity``, what
``onnxprune eval OUT --perplexity HELDOUT`` prints) and the mean cosine of its logits against the original's
(one cosine per token position, over the vocabulary, averaged). Structured settings are checked by the
pipeline's exactness oracle on VALID (the first 16 held-out windows): heads and neurons against the original
with the dropped channels' consumer weights zeroed, removed blocks against the original with the blocks' last
projections zeroed; the table shows its worst max|diff|. Width and sparse modes are not exact by design.

``--round-to 1`` keeps widths reproducible (``auto`` times layers on this machine); the model and data come
from ``tools/train_tiny_gpt.py``. Run from the repository root (project venv)::

    .venv/bin/python tools/lm_table.py                         # every setting, Markdown on stdout
    .venv/bin/python tools/lm_table.py --only dense heads_l2 --json out.json
    .venv/bin/python tools/lm_table.py --model ~/.cache/onnxprune/tiny_gpt/tiny_gpt_dynamo.onnx
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
VALID_WINDOWS = 16


@dataclass(frozen=True)
class Setting:
    """One row: a key for ``--only``, what it is, and the prune flags (``None``: the dense model itself)."""

    key: str
    label: str
    flags: tuple[str, ...] | None
    exact: bool = False


def settings(ratio: float, width: float, calib: str) -> list[Setting]:
    """The rows, in table order; ``calib`` is the calibration npz as the command line names it."""
    c = ("--calib", calib)
    r, w = str(ratio), str(width)
    return [
        Setting("dense", "dense (original)", None),
        Setting("heads_l2", f"heads + FFN, ratio {r}, magnitude (l2)", ("--ratio", r), True),
        Setting("heads_l2_lstsq", f"heads + FFN, ratio {r}, l2 + re-fit", ("--ratio", r, *c, "--recover", "lstsq"),
                True),
        Setting("heads_act_lstsq", f"heads + FFN, ratio {r}, activation + re-fit",
                ("--ratio", r, *c, "--importance", "activation", "--recover", "lstsq"), True),
        Setting("blocks1_norm", "remove 1 block, by magnitude", ("--remove-blocks", "1", "--ratio", "0"), True),
        Setting("blocks1_infl", "remove 1 block, by block influence", ("--remove-blocks", "1", "--ratio", "0", *c),
                True),
        Setting("blocks2_norm", "remove 2 blocks, by magnitude", ("--remove-blocks", "2", "--ratio", "0"), True),
        Setting("blocks2_infl", "remove 2 blocks, by block influence", ("--remove-blocks", "2", "--ratio", "0", *c),
                True),
        Setting("width_rot", f"width −{width:.0%}: rotate + slice, no re-fit",
                ("--mode", "width", "--ratio", w, *c, "--recover", "none")),
        Setting("width_rot_lstsq", f"width −{width:.0%}: rotate + slice + re-fit",
                ("--mode", "width", "--ratio", w, *c)),
        Setting("width_plain", f"width −{width:.0%}: plain magnitude, no re-fit",
                ("--mode", "width", "--ratio", w, *c, "--importance", "l2", "--recover", "none")),
        Setting("width_plain_lstsq", f"width −{width:.0%}: plain magnitude + re-fit",
                ("--mode", "width", "--ratio", w, *c, "--importance", "l2")),
        Setting("unstr_mag", "unstructured 50 %, magnitude", ("--mode", "unstructured", "--sparsity", "0.5")),
        Setting("unstr_wanda_lstsq", "unstructured 50 %, Wanda + re-fit",
                ("--mode", "unstructured", "--sparsity", "0.5", *c, "--importance", "wanda", "--recover", "lstsq")),
        Setting("nm_mag", "2:4, magnitude", ("--mode", "nm", "--nm", "2:4")),
        Setting("nm_wanda_lstsq", "2:4, Wanda + re-fit",
                ("--mode", "nm", "--nm", "2:4", *c, "--importance", "wanda", "--recover", "lstsq")),
    ]


def logits_of(model: Path, ids: np.ndarray, batch: int = 32) -> np.ndarray:
    """The model's logits on every held-out window, float32 [N, T, V]."""
    from onnxprune.runtime.session import create_session

    sess = create_session(model, provider="cpu")
    return np.concatenate([sess.run(["logits"], {"input_ids": ids[i:i + batch]})[0]
                           for i in range(0, len(ids), batch)])


def mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over token positions of the cosine between two logit vectors."""
    a2, b2 = a.reshape(-1, a.shape[-1]).astype(np.float64), b.reshape(-1, b.shape[-1]).astype(np.float64)
    num = np.sum(a2 * b2, axis=1)
    den = np.linalg.norm(a2, axis=1) * np.linalg.norm(b2, axis=1)
    return float(np.mean(num / np.maximum(den, 1e-30)))


def oracle_cell(report: dict[str, Any]) -> str:
    """The exactness oracle's verdict and worst max|diff| from a prune report, or why there is none."""
    exact = (report.get("validation") or {}).get("exact")
    if not exact:
        return "—"
    worst = max((o["max_abs"] for c in exact.get("comparisons", {}).values() for o in c.get("outputs", [])),
                default=float("nan"))
    return f"{'pass' if exact.get('passed') else 'FAIL'} {worst:.1e}"


def run_setting(s: Setting, model: Path, valid: Path, work: Path, shown: dict[str, str]) -> dict[str, Any]:
    """Prune with the CLI in its own process; returns the report and the command as a user would type it."""
    out, report = work / f"{s.key}.onnx", work / f"{s.key}.json"
    assert s.flags is not None
    structured = "--mode" not in s.flags
    common = (*(("--round-to", "1", "--no-bench") if structured else ()), "--data", str(valid))
    argv = [sys.executable, "-m", "onnxprune", "prune", str(model), "-o", str(out), *s.flags, *common,
            "--report", str(report), "--quiet"]
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, check=False)
    seconds = time.perf_counter() - start
    pretty = " ".join(shlex.quote(shown.get(a, a)) for a in ["onnxprune", "prune", str(model), "-o",
                                                               f"{s.key}.onnx", *s.flags, *common])
    if proc.returncode != 0:
        return {"command": pretty, "error": (proc.stderr.strip().splitlines() or ["?"])[-1],
                "seconds": seconds}
    return {"command": pretty, "output": out, "report": json.loads(report.read_text()), "seconds": seconds}


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    from onnxprune.runtime.perplexity import evaluate_perplexity

    ids = np.load(args.heldout)["input_ids"]
    shown = {str(args.model): _rel(args.model), str(args.calib): _rel(args.calib), sys.executable: "onnxprune"}
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="onnxprune-lm-") as tmp:
        work = Path(tmp)
        valid = work / "valid16.npz"
        np.savez(valid, input_ids=ids[:VALID_WINDOWS])
        shown[str(valid)] = "valid16.npz"
        reference = logits_of(args.model, ids)
        dense = evaluate_perplexity(args.model, args.heldout).perplexity
        for s in settings(args.ratio, args.width_ratio, str(args.calib)):
            if args.only and s.key not in args.only:
                continue
            print(f"[lm_table] {s.key} ...", file=sys.stderr, flush=True)
            if s.flags is None:
                rows.append({"key": s.key, "label": s.label, "command": f"onnxprune eval {_rel(args.model)} "
                             f"--perplexity {_rel(args.heldout)}", "perplexity": dense, "ratio_to_dense": 1.0,
                             "cosine": 1.0, "macs_kept": 1.0, "params_kept": 1.0, "oracle": "—"})
                continue
            got = run_setting(s, args.model, valid, work, shown)
            row: dict[str, Any] = {"key": s.key, "label": s.label, "command": got["command"],
                                   "seconds": round(got["seconds"], 1)}
            if "error" in got:
                row["error"] = got["error"]
            else:
                rep = got["report"]
                ppl = evaluate_perplexity(got["output"], args.heldout).perplexity
                row.update(perplexity=ppl, ratio_to_dense=ppl / dense,
                           cosine=mean_cosine(reference, logits_of(got["output"], ids)),
                           macs_kept=rep["macs_after"] / rep["macs_before"],
                           params_kept=rep["params_after"] / rep["params_before"],
                           oracle=oracle_cell(rep) if s.exact else "not exact (by design)",
                           width=rep.get("width", {}).get("method"), blocks=_blocks(rep))
            rows.append(row)
    return rows


def _blocks(report: dict[str, Any]) -> str | None:
    """The removed residual blocks, named by their last projection (``/blocks.2/down/MatMul``)."""
    removed = (report.get("depth") or {}).get("removed_blocks") or []
    return ", ".join(str(r["last"]) for r in removed) or None


def _rel(path: Path | str) -> str:
    p = Path(path).resolve()
    try:
        return str(p.relative_to(ROOT))
    except ValueError:
        return str(path)


def render(rows: list[dict[str, Any]], args: argparse.Namespace, seconds: float) -> str:
    lines = ["| setting | MACs kept | params kept | held-out perplexity (× dense) | mean cosine of logits | "
             "exactness oracle |", "|---|---:|---:|---:|---:|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['label']} | — | — | refused: {r['error']} | — | — |")
            continue
        label = f"{r['label']} ({r['blocks']})" if r.get("blocks") else r["label"]
        lines.append(f"| {label} | {r['macs_kept']:.1%} | {r['params_kept']:.1%} | {r['perplexity']:.3f} "
                     f"({r['ratio_to_dense']:.2f}×) | {r['cosine']:.4f} | {r['oracle']} |")
    when = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines += ["", f"Measured {when} on {platform.machine()}, Python {platform.python_version()}, "
              f"{seconds:.0f} s, with `python tools/lm_table.py {' '.join(sys.argv[1:])}`. Held-out: "
              f"{_rel(args.heldout)}; `valid16.npz` is its first {VALID_WINDOWS} windows (the exactness "
              "oracle's inputs). Commands:", ""]
    lines += [f"- `{r['key']}`: `{r['command']}`" for r in rows]
    return "\n".join(lines) + "\n"


def run_table(args: argparse.Namespace, measure: Callable[[argparse.Namespace], list[dict[str, Any]]],
              render: Callable[[list[dict[str, Any]], argparse.Namespace, float], str]) -> int:
    """Measure, print the Markdown table (and ``--json`` the rows): the tail of this tool and of sbert_table."""
    start = time.perf_counter()
    rows = measure(args)
    text = render(rows, args, time.perf_counter() - start)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2, default=str) + "\n")
    sys.stdout.write(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=MODELS / "tiny_gpt.onnx")
    ap.add_argument("--calib", type=Path, default=MODELS / "tiny_gpt_calib.npz")
    ap.add_argument("--heldout", type=Path, default=MODELS / "tiny_gpt_heldout.npz")
    ap.add_argument("--ratio", type=float, default=0.3, help="structured ratio of heads + FFN (default 0.3)")
    ap.add_argument("--width-ratio", type=float, default=0.25, help="--mode width ratio (default 0.25)")
    ap.add_argument("--only", nargs="+", metavar="KEY", help="only these settings (keys as in --json)")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON here")
    return run_table(ap.parse_args(argv), measure, render)


if __name__ == "__main__":
    raise SystemExit(main())
