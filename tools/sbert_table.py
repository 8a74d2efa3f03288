"""Heads, feed-forward neurons and the residual stream of a post-norm sentence encoder, as a Markdown table.

Why this tool exists: a post-norm model's stream (LayerNorm after each residual add, as the original BERT)
cannot be rotated, so onnxprune cuts it by plain channel pruning and re-fits the readers by least squares;
neither that nor the re-fit of heads and neurons is exact, and a sentence encoder is judged by how far its
embeddings move. For each setting this runs the CLI exactly as a user would (``onnxprune prune MODEL -o OUT
FLAGS ... --data VALID``, one process each; the combined setting is two runs, heads + FFN first, then the
stream of that output), then measures on the held-out sentences the mean cosine of each pruned embedding to
the original's, also after subtracting the original embeddings' mean from both (the "centred" cosine: a
common direction that every sentence shares cannot make two different embeddings look alike there).

Checks shown: structured runs are proven by the pipeline's exactness oracle on VALID (the first 16 held-out
sentences, with their attention masks): the pruned model against the original with the dropped channels'
consumer weights zeroed (before any re-fit); width runs by the rewrite check (the exact rewrites before the
cut: the identity projection that keeps the ``embedding`` output at full width, folds) against the original.

Model and data come from ``tools/train_tiny_sbert.py``. Helpers are ``tools/lm_table.py``'s. Run from the
repository root (project venv)::

    .venv/bin/python tools/sbert_table.py                       # every setting, Markdown on stdout
    .venv/bin/python tools/sbert_table.py --only dense width_lstsq --json out.json
"""

from __future__ import annotations

import argparse
import datetime as _dt
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lm_table import Setting, _rel, mean_cosine, oracle_cell, run_setting, run_table  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
VALID_SENTENCES = 16


def settings(ratio: float, width: float, both: tuple[float, float], calib: str) -> list[tuple[str, str, list[Setting]]]:
    """The rows, in table order: (key, label, the CLI runs chained, each on the previous one's output)."""
    c = ("--calib", calib)
    r, w, br, bw = str(ratio), str(width), str(both[0]), str(both[1])

    def heads(key: str, rr: str, recover: str) -> Setting:
        return Setting(key, "", ("--ratio", rr, *c, "--recover", recover), True)

    def stream(key: str, ww: str, recover: str) -> Setting:
        return Setting(key, "", ("--mode", "width", "--ratio", ww, *c, "--recover", recover, "--no-bench"))

    return [
        ("dense", "dense (original)", []),
        ("heads_none", f"heads + FFN {r}, magnitude, no re-fit", [heads("heads_none", r, "none")]),
        ("heads_lstsq", f"heads + FFN {r}, magnitude + re-fit", [heads("heads_lstsq", r, "lstsq")]),
        ("width_none", f"stream {w}, plain, no re-fit", [stream("width_none", w, "none")]),
        ("width_lstsq", f"stream {w}, plain + re-fit", [stream("width_lstsq", w, "lstsq")]),
        ("both_none", f"heads + FFN {br}, then stream {bw}, no re-fit",
         [heads("both_none.1", br, "none"), stream("both_none.2", bw, "none")]),
        ("both_lstsq", f"heads + FFN {br}, then stream {bw}, + re-fit",
         [heads("both_lstsq.1", br, "lstsq"), stream("both_lstsq.2", bw, "lstsq")]),
    ]


def embeddings_of(model: Path, data: dict[str, np.ndarray], batch: int = 64) -> np.ndarray:
    """The model's ``embedding`` output on every held-out sentence, float32 [N, d]."""
    from onnxprune.runtime.session import create_session

    sess = create_session(model, provider="cpu")
    n = len(data["input_ids"])
    return np.concatenate([sess.run(["embedding"], {k: v[i:i + batch] for k, v in data.items()})[0]
                           for i in range(0, n, batch)])


def check_cell(report: dict[str, Any], structured: bool) -> str:
    """The exactness oracle (structured) or the width rewrite check: verdict and worst max|diff|."""
    if structured:
        return oracle_cell(report)
    width = report.get("width") or {}
    check = width.get("rewrite_check") or width.get("rotation_check")
    if not check:
        return "—"
    # the same layout as the oracle's report: oracle_cell reads it from under validation/exact
    return "rewrite " + oracle_cell({"validation": {"exact": check}})


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    held = dict(np.load(args.heldout))
    shown = {str(args.model): _rel(args.model), str(args.calib): _rel(args.calib), sys.executable: "onnxprune"}
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="onnxprune-sbert-") as tmp:
        work = Path(tmp)
        valid = work / "valid16.npz"
        np.savez(valid, **{k: v[:VALID_SENTENCES] for k, v in held.items()})
        shown[str(valid)] = "valid16.npz"
        reference = embeddings_of(args.model, held)
        centre = reference.mean(axis=0)
        for key, label, runs in settings(args.ratio, args.width_ratio, (args.both_ratio, args.both_width),
                                         str(args.calib)):
            if args.only and key not in args.only:
                continue
            print(f"[sbert_table] {key} ...", file=sys.stderr, flush=True)
            if not runs:
                rows.append({"key": key, "label": label, "commands": [], "cosine": 1.0, "centred_cosine": 1.0,
                             "macs_kept": 1.0, "params_kept": 1.0, "checks": "—"})
                continue
            row: dict[str, Any] = {"key": key, "label": label, "commands": [], "checks": []}
            model, first, last = args.model, None, None
            for s in runs:
                got = run_setting(s, model, valid, work, shown)
                row["commands"].append(got["command"])
                if "error" in got:
                    row["error"] = got["error"]
                    break
                shown[str(got["output"])] = got["output"].name
                first = first or got["report"]
                last = got["report"]
                row["checks"].append(check_cell(last, s.exact))
                model = got["output"]
            if "error" not in row and first is not None and last is not None:
                emb = embeddings_of(model, held)
                row.update(cosine=mean_cosine(reference, emb), centred_cosine=mean_cosine(reference - centre,
                                                                                          emb - centre),
                           macs_kept=last["macs_after"] / first["macs_before"],
                           params_kept=last["params_after"] / first["params_before"],
                           stream=_stream_width(last), checks="; ".join(row["checks"]))
            rows.append(row)
    return rows


def _stream_width(report: dict[str, Any]) -> str | None:
    """``d → k`` of the stream in a width run, and the method (plain or rotate)."""
    width = report.get("width") or {}
    streams = width.get("streams") or [width]
    before, after = streams[0].get("width_before"), streams[0].get("width_after")
    if before is None or after is None:
        return width.get("method")
    return f"{width.get('method')} {before} → {after}"


def render(rows: list[dict[str, Any]], args: argparse.Namespace, seconds: float) -> str:
    lines = ["| setting | MACs kept | params kept | mean cosine | centred cosine | checks |",
             "|---|---:|---:|---:|---:|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['label']} | — | — | refused: {r['error']} | — | — |")
            continue
        label = f"{r['label']} ({r['stream']})" if r.get("stream") else r["label"]
        lines.append(f"| {label} | {r['macs_kept']:.1%} | {r['params_kept']:.1%} | {r['cosine']:.4f} | "
                     f"{r['centred_cosine']:.4f} | {r['checks']} |")
    when = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    n = len(np.load(args.heldout)["input_ids"])
    lines += ["", f"Measured {when} on {platform.machine()}, Python {platform.python_version()}, {seconds:.0f} s, "
              f"with `python tools/sbert_table.py {' '.join(sys.argv[1:])}`. Cosines: embedding of each of the "
              f"{n} held-out sentences ({_rel(args.heldout)}) against the original's, averaged; centred: after "
              f"subtracting the original embeddings' mean. `valid16.npz` is the first {VALID_SENTENCES} held-out "
              "sentences (the checks' inputs). Commands:", ""]
    for r in rows:
        lines += [f"- `{r['key']}`: " + " then ".join(f"`{c}`" for c in r["commands"])] if r["commands"] else []
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=MODELS / "tiny_sbert.onnx")
    ap.add_argument("--calib", type=Path, default=MODELS / "tiny_sbert_calib.npz")
    ap.add_argument("--heldout", type=Path, default=MODELS / "tiny_sbert_heldout.npz")
    ap.add_argument("--ratio", type=float, default=0.3, help="heads + FFN ratio alone (default 0.3)")
    ap.add_argument("--width-ratio", type=float, default=0.32, help="stream ratio alone (default 0.32)")
    ap.add_argument("--both-ratio", type=float, default=0.15, help="heads + FFN ratio of the combined row")
    ap.add_argument("--both-width", type=float, default=0.15, help="stream ratio of the combined row")
    ap.add_argument("--only", nargs="+", metavar="KEY", help="only these settings (keys as in --json)")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON here")
    return run_table(ap.parse_args(argv), measure, render)


if __name__ == "__main__":
    raise SystemExit(main())
