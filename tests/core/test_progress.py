"""Progress off a terminal: plain lines every 10 % (or 10 s) for long loops, nothing for short ones or -q."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from builders import mlp

import onnxprune.core.progress as progress_module
from onnxprune.cli.main import main
from onnxprune.core.progress import progress


def test_lines_every_tenth_when_stderr_is_not_a_terminal(monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(progress_module, "LINE_AFTER_S", 0.0)
    assert list(progress(range(20), desc="calibrating", total=20)) == list(range(20))
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 10
    assert lines[0].startswith("onnxprune: calibrating: 10% (2/20), ")
    assert lines[-1].startswith("onnxprune: calibrating: 100% (20/20), ")


def test_unknown_total_prints_every_interval(monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(progress_module, "LINE_AFTER_S", 0.0)
    monkeypatch.setattr(progress_module, "LINE_EVERY_S", 0.0)
    assert list(progress(iter(range(3)), desc="runs")) == [0, 1, 2]
    assert capsys.readouterr().err.splitlines()[-1].startswith("onnxprune: runs: 3 done, ")


def test_short_loops_stay_silent(capsys: pytest.CaptureFixture[str]) -> None:
    assert list(progress(range(50), desc="quick", total=50)) == list(range(50))
    assert capsys.readouterr().err == ""


def test_sensitivity_prints_progress_lines_to_a_pipe_but_not_with_quiet(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(progress_module, "LINE_AFTER_S", 0.0)
    model, calib = tmp_path / "m.onnx", tmp_path / "c.npz"
    onnx.save(mlp(), str(model))
    np.savez(calib, x=np.random.default_rng(0).standard_normal((16, 16)).astype(np.float32))
    argv = ["sensitivity", str(model), "--calib", str(calib), "--ratios", "0.5"]
    assert main(argv) == 0
    assert "onnxprune: whole-model anchors: 100% (1/1)" in capsys.readouterr().err  # the Gram path's one loop
    assert main([*argv, "-q"]) == 0
    assert capsys.readouterr().err == ""
