"""The CLI dispatcher: exit codes, one-line errors, --version, help."""

from __future__ import annotations

import subprocess
import sys

import pytest

from onnxprune.cli.main import COMMANDS, build_parser, main


def test_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert "onnxprune" in capsys.readouterr().out
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


def test_every_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    for name in COMMANDS:
        assert main([name, "--help"]) == 0
        assert "usage: onnxprune " + name in capsys.readouterr().out


def test_usage_error_is_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["no-such-command"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("onnxprune: error:")


def test_missing_file_is_one_line_exit_1(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.onnx"
    assert main(["analyze", str(missing)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"onnxprune: error: {missing}: no such file; check the path"]


def test_verbose_adds_traceback(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", str(tmp_path / "nope.onnx"), "--verbose"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("onnxprune: error:")


def test_module_entry_point_runs(tmp_path) -> None:
    proc = subprocess.run([sys.executable, "-m", "onnxprune", "analyze", str(tmp_path / "x.onnx")],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("onnxprune: error:") and "Traceback" not in proc.stderr


def test_parser_builds_every_command() -> None:
    parser = build_parser()
    assert parser.prog == "onnxprune"
