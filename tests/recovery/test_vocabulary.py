"""``--keep-tokens`` in a prune run: ids read from a file or the calibration data, the result proven, bad input
refused with one line and no output written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxprune.cli.main import main
from onnxprune.core.errors import ConfigError
from onnxprune.pipeline import prune
from onnxprune.recovery.vocabulary import read_token_ids
from onnxprune.runtime.session import create_session, run_session
from onnxprune.structured.vocab import KEPT_IDS_KEY
from tests.structured.test_vocab import _lm

KEEP = [2, 5, 11, 30, 44]


def _files(tmp_path: Path, head: str = "tied") -> tuple[Path, Path]:
    model = tmp_path / "lm.onnx"
    onnx.save(_lm(head), model)
    calib = tmp_path / "calib.npz"
    np.savez(calib, ids=np.random.default_rng(0).choice(KEEP, size=(4, 6)).astype(np.int64))
    return model, calib


@pytest.mark.parametrize("head", ["tied", "untied", "gemm"])
def test_keep_tokens_from_the_calibration_data(tmp_path: Path, head: str) -> None:
    model, calib = _files(tmp_path, head)
    out = tmp_path / "out.onnx"
    result = prune(model, {"ratio": 0.25, "calib": str(calib), "keep_tokens": "calib", "bench": False},
                   output=out)
    vocab = result.report["vocab"]
    assert vocab["vocab_after"] == len(KEEP) and vocab["check"]["passed"] is True
    saved = onnx.load(out)
    assert json.loads({p.key: p.value for p in saved.metadata_props}[KEPT_IDS_KEY]) == KEEP
    ids = np.array([[44, 2, 5], [30, 30, 11]])
    pruned_logits = run_session(create_session(saved), {"ids": ids})["logits"]
    assert pruned_logits.shape[-1] == len(KEEP)
    assert result.report["settings"]["keep_tokens"] == "calib"


def test_keep_tokens_from_a_file_checked_on_random_kept_ids(tmp_path: Path) -> None:
    model, _ = _files(tmp_path)
    ids = tmp_path / "ids.txt"
    ids.write_text("44, 2\n5 11\n30\n")
    result = prune(model, {"ratio": 0.0, "keep_tokens": str(ids), "unknown_token": 5, "bench": False})
    vocab = result.report["vocab"]
    assert vocab["unknown_token_id"] == 5 and vocab["check"]["data"] == "random kept ids (seed 0)"
    assert vocab["check"]["passed"] is True


def test_token_id_files(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.array([[7, 3], [3, 9]]))
    np.savez(tmp_path / "b.npz", x=np.array([4]), y=np.array([[1, 4]]))
    (tmp_path / "c.txt").write_text("1.5 2")
    assert read_token_ids(tmp_path / "a.npy", calib=None, ids_input="ids").tolist() == [3, 7, 9]
    assert read_token_ids(tmp_path / "b.npz", calib=None, ids_input="ids").tolist() == [1, 4]
    with pytest.raises(ConfigError, match="is not a list of integer token ids"):
        read_token_ids(tmp_path / "c.txt", calib=None, ids_input="ids")


@pytest.mark.parametrize("flags, message", [
    (["--keep-tokens", "missing.txt"], "--keep-tokens: no file missing.txt"),
    (["--keep-tokens", "calib"], "--keep-tokens calib keeps the calibration data's token ids; pass --calib"),
    (["--unknown-token", "3"], "--unknown-token applies only with --keep-tokens"),
    (["--keep-tokens", "IDS", "--unknown-token", "3"], "the unknown token id 3 is not among the kept ids"),
])
def test_bad_vocabulary_options_are_one_line_and_write_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                flags: list[str], message: str) -> None:
    model, _ = _files(tmp_path)
    (tmp_path / "ids.txt").write_text(" ".join(map(str, KEEP)))
    flags = [str(tmp_path / "ids.txt") if f == "IDS" else f for f in flags]
    out = tmp_path / "out.onnx"
    assert main(["prune", str(model), "-o", str(out), "--ratio", "0", "--no-bench", *flags]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()


@pytest.mark.slow  # a few seconds each alone
@pytest.mark.parametrize("name", ["hf_gpt2_dynamo", "hf_gpt2_legacy", "hf_llama_gqa_legacy"])
def test_hugging_face_exports_keep_their_tokens_under_width_rotation(name: str, tmp_path: Path) -> None:
    """The real GPT-2 (tied head: the dynamo export reads Transpose(wte), the legacy one stores a copy) and
    Llama exports: vocabulary pruned to the calibration data's ids and every 8th id (more rows than the sliced
    stream is wide, which the tied head's adapter needs), then the stream rotated and sliced; the vocabulary
    proven exact at the kept ids, the rotation proven exact against the smaller model, and the head tied to
    the cut table again. Skipped without the real-export folder (tests/test_real_exports.py)."""
    import os

    folder = Path(os.environ.get("ONNXPRUNE_REAL_EXPORTS", Path.home() / ".cache/onnxprune/real-exports"))
    if not (folder / f"{name}.onnx").exists():
        pytest.skip(f"no {name}.onnx in {folder}")
    calib = str(folder / f"{name}.inputs.npz")
    keep = np.union1d(np.load(calib)["input_ids"], np.arange(0, 1000, 8))
    ids = tmp_path / "ids.txt"
    ids.write_text(" ".join(map(str, keep)))
    result = prune(folder / f"{name}.onnx", {"mode": "width", "ratio": 0.25, "calib": calib,
                                            "keep_tokens": str(ids), "bench": False})
    vocab, width = result.report["vocab"], result.report["width"]
    assert vocab["check"]["passed"] is True and vocab["check"]["max_diff"] == 0.0
    assert vocab["vocab_after"] == keep.size
    assert width["method"] == "rotate" and width["rotation_check"]["passed"] is True
    if "gpt2" in name:
        assert width["tied_heads"], "the LM head is tied to the cut table again"
