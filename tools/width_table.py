"""Measure residual-stream width pruning and rotation; print Markdown tables.

Why: the README's width figures must come from a command anyone can rerun. Two tables:
  * ``digits_transformer`` (post-norm, trained): plain width pruning (``--mode width``) at ratios 0.25 and
    0.5, with and without the least-squares re-fit; top-1 and logits cosine (of all logits together) on the
    held-out test split, calibration on ``models/digits_transformer_calib.npz``.
  * a seeded pre-norm builder (``tests/builders.py::prenorm_stack``, width 16, untrained): rotation + slicing
    (SliceGPT, :func:`onnxprune.recovery.slicegpt.slice_stream`) against plain width pruning at the same width,
    on 64 held-out random inputs (calibration: 64 others); plus the rotated model's max|diff| before slicing.
  * ``tv_vit_b_16`` (untrained, LayerNorm scales/shifts and the zero head randomized as in the tests): the
    same comparison at ratio 0.25 on 16 held-out random images (calibration: 32 others); max|diff| relative
    to the largest logit.

  * with ``--exports``, only the Hugging Face language-model exports of the real-export folder (GPT-2 and
    Llama, both torch exporters): ``--mode width --ratio 0.25`` through the pipeline, rotate + slice against
    plain channel pruning (``--importance l2``), each with and without the re-fit (``--recover none``),
    calibrated on the export's example inputs (2 × 16 tokens); logits cosine (all logits together) and
    max|diff| relative to the largest logit on those inputs and on 8 held-out sequences of 16 random token
    ids (seed 0; the exports are untrained, so any ids are as typical as others); whether the rotation check
    passed.

Usage:
  PYTHONPATH=. .venv/bin/python tools/width_table.py
  PYTHONPATH=. .venv/bin/python tools/width_table.py --exports [FOLDER]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from onnxprune.recovery.slicegpt import slice_stream
from onnxprune.recovery.width import prune_width
from onnxprune.runtime.session import create_session, run_session

ROOT = Path(__file__).resolve().parents[1]


def _run(model: onnx.ModelProto, name: str, x: np.ndarray) -> np.ndarray:
    out = model.graph.output[0].name
    return run_session(create_session(model), {name: x})[out]


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sum(a * b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def digits_table() -> None:
    model = onnx.load(ROOT / "models/digits_transformer.onnx")
    test = np.load(ROOT / "models/digits_transformer_test.npz")
    x, labels = test["tokens"], test["labels"]
    ref = _run(model, "tokens", x)
    print(f"dense top-1 {float((ref.argmax(1) == labels).mean()):.2%}\n")
    print("| ratio | width | re-fit | top-1 | cosine |\n|---|---|---|---:|---:|")
    for ratio in (0.25, 0.5):
        for refit in (False, True):
            res = prune_width(model, ratio=ratio, calib=str(ROOT / "models/digits_transformer_calib.npz"),
                              refit=refit)
            y = _run(res.model, "tokens", x)
            s = res.report["streams"][0]
            print(f"| {ratio} | {s['width_before']} → {s['width_after']} | {'lstsq' if refit else 'none'} | "
                  f"{float((y.argmax(1) == labels).mean()):.2%} | {_cos(ref, y):.4f} |")


def rotation_table() -> None:
    import sys

    sys.path.insert(0, str(ROOT))
    from tests.builders import prenorm_stack

    model = prenorm_stack()
    r = np.random.default_rng(1)
    calib = [{"x": r.standard_normal((32, 5, 4)).astype(np.float32)} for _ in range(2)]
    x = r.standard_normal((64, 5, 4)).astype(np.float32)
    ref = _run(model, "x", x)
    print("\n| ratio | width | method | cosine | rotated max\\|diff\\| before slicing |\n|---|---|---|---:|---:|")
    for ratio in (0.25, 0.5):
        for refit in (False, True):
            sl = slice_stream(model, ratio=ratio, calib=calib, refit=refit)
            pl = prune_width(model, ratio=ratio, calib=calib, refit=refit)
            diff = float(np.abs(_run(sl.rotated, "x", x) - ref).max())
            tag = "+ re-fit" if refit else ""
            w = f"16 → {sl.report['width_after']}"
            print(f"| {ratio} | {w} | rotate + slice {tag} | {_cos(ref, _run(sl.model, 'x', x)):.4f} | {diff:.1e} |")
            print(f"| {ratio} | {w} | plain width {tag} | {_cos(ref, _run(pl.model, 'x', x)):.4f} | |")


def vit_table() -> None:
    """torchvision ViT (untrained export) with random LayerNorm scales/shifts and head, as in the tests."""
    import sys

    sys.path.insert(0, str(ROOT))
    from tests.structured.test_stream import _randomized

    model = _randomized(ROOT / "models/tv_vit_b_16.onnx")
    r = np.random.default_rng(0)
    calib = [{"input": r.standard_normal((16, 3, 32, 32)).astype(np.float32)} for _ in range(2)]
    x = r.standard_normal((16, 3, 32, 32)).astype(np.float32)
    ref = _run(model, "input", x)
    print("\n| ViT ratio | width | method | cosine | rotated max\\|diff\\| before slicing |\n|---|---|---|---:|---:|")
    for refit in (False, True):
        sl = slice_stream(model, ratio=0.25, calib=calib, refit=refit)
        pl = prune_width(model, ratio=0.25, calib=calib, refit=refit)
        diff = float(np.abs(_run(sl.rotated, "input", x) - ref).max() / np.abs(ref).max())
        tag = "+ re-fit" if refit else ""
        w = f"64 → {sl.report['width_after']}"
        print(f"| 0.25 | {w} | rotate + slice {tag} | {_cos(ref, _run(sl.model, 'input', x)):.4f} | {diff:.1e} |")
        print(f"| 0.25 | {w} | plain width {tag} | {_cos(ref, _run(pl.model, 'input', x)):.4f} | |")


LM_EXPORTS = ("hf_gpt2_legacy", "hf_gpt2_dynamo", "hf_llama_gqa_legacy", "hf_llama_gqa_dynamo")


def _random_ids(seed: int, n: int, vocab: int = 1000, t: int = 16) -> dict[str, np.ndarray]:
    ids = np.random.default_rng(seed).integers(0, vocab, (n, t)).astype(np.int64)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids)}


def exports_table(folder: Path, calib_sequences: int = 0) -> None:
    """Rotate vs plain width pruning on the real GPT-2 / Llama exports (see the module docstring);
    ``calib_sequences``: calibrate on that many random-id sequences (seed 1) instead of the example inputs."""
    import tempfile

    from onnxprune.pipeline import prune

    scratch = Path(tempfile.mkdtemp(prefix="width-table-"))
    calib_file = scratch / "calib.npz"
    if calib_sequences:
        np.savez(calib_file, **_random_ids(1, calib_sequences))
    source = f"{calib_sequences} random-id sequences of 16 (seed 1)" if calib_sequences else "the example inputs"
    print(f"calibration: {source}\n")
    print("| export | method | re-fit | width | variance kept | rotation check | cosine (example) | max\\|diff\\| rel. "
          "(example) | cosine (held-out) | max\\|diff\\| rel. (held-out) |")
    print("|---|---|---|---|---:|---|---:|---:|---:|---:|")
    for name in LM_EXPORTS:
        path = folder / f"{name}.onnx"
        example = dict(np.load(folder / f"{name}.inputs.npz"))
        heldout = _random_ids(0, 8)
        original = onnx.load(path)
        refs = [_run_feeds(original, f) for f in (example, heldout)]
        for plain in (False, True):
            for refit in (False, True):
                calib = calib_file if calib_sequences else folder / f"{name}.inputs.npz"
                config = {"mode": "width", "ratio": 0.25, "calib": str(calib),
                          "bench": False, "recover": "lstsq" if refit else "none"}
                if plain:
                    config["importance"] = "l2"
                res = prune(path, config)
                w = res.report["width"]
                check = w.get("rotation_check", {}).get("passed")
                kept = f"{w['variance_kept']:.3f}" if "variance_kept" in w else "—"
                stream = w.get("streams", [{}])[0] if plain else w
                cells = []
                for ref, feeds in zip(refs, (example, heldout), strict=True):
                    y = _run_feeds(res.model, feeds)
                    cells += [f"{_cos(ref, y):.4f}", f"{np.abs(y - ref).max() / np.abs(ref).max():.1e}"]
                print(f"| {name} | {w['method']} | {'lstsq' if refit else 'none'} | "
                      f"{stream.get('width_before')} → {stream.get('width_after')} | {kept} | "
                      f"{'pass' if check else '—' if check is None else 'FAIL'} | {' | '.join(cells)} |")


def _run_feeds(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    names = {i.name for i in model.graph.input}
    return run_session(create_session(model), {k: v for k, v in feeds.items() if k in names})[
        model.graph.output[0].name]


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exports", nargs="?", const=str(Path.home() / ".cache/onnxprune/real-exports"),
                        help="only the GPT-2/Llama real exports' table, from this folder")
    parser.add_argument("--calib-sequences", type=int, default=0,
                        help="with --exports: calibrate on this many random-id sequences instead of the examples")
    args = parser.parse_args()
    if args.exports:
        exports_table(Path(args.exports).expanduser(), args.calib_sequences)
    else:
        digits_table()
        rotation_table()
        vit_table()
