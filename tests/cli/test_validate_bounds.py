"""``onnxprune validate``: drift is measured and passes; bounds the user sets are enforced with exit 4."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from onnxprune.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
MLP = str(ROOT / "models" / "digits_mlp.onnx")
DATA = str(ROOT / "models" / "digits_mlp_test.npz")


@pytest.fixture(scope="module")
def pruned(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("validate") / "mlp-pruned.onnx"
    # --round-to 1: the widths the figures below were measured at
    assert main(["prune", MLP, "-o", str(out), "-q", "--no-validate", "--round-to", "1"]) == 0
    return str(out)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "onnxprune", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=300, check=False)


def test_exit_codes_pass_bound_crossed_bad_input_and_usage(pruned) -> None:
    ok = _cli("validate", MLP, pruned, "--data", DATA)
    assert ok.returncode == 0, ok.stderr  # a pruned model drifts; with no bound set that is reported, not failed
    assert "validation PASSED" in ok.stdout and ok.stderr == ""
    crossed = _cli("validate", MLP, pruned, "--data", DATA, "--min-cosine", "0.9999")
    assert crossed.returncode == 4
    assert crossed.stderr.startswith("onnxprune: validation failed: cpu 'probabilities': cosine 0.99")
    assert "--min-cosine 0.9999" in crossed.stderr and len(crossed.stderr.splitlines()) == 1
    missing = _cli("validate", MLP, str(ROOT / "models" / "no-such.onnx"))
    assert missing.returncode == 1
    usage = _cli("validate", MLP)
    assert usage.returncode == 2


def test_drift_is_reported_per_floating_output_by_name(pruned, capsys) -> None:
    assert main(["validate", MLP, pruned, "--data", DATA]) == 0
    out = capsys.readouterr().out
    assert "drift: cpu: 'probabilities' cosine 0.9917, top-1 agree 98.33%, max|diff| 0.709" in out
    assert "label" in out and "not a drift measure" in out  # the int64 class label is listed, not measured
    assert "bounds: none set" in out


def test_each_bound_is_checked_and_named(pruned, capsys) -> None:
    assert main(["validate", MLP, pruned, "--data", DATA, "--min-top1", "0.99"]) == 4
    captured = capsys.readouterr()
    assert "crossed: cpu 'probabilities': top-1 agreement 98.33% < --min-top1 0.99" in captured.out
    assert main(["validate", MLP, pruned, "--data", DATA, "--min-top1", "0.98", "--min-cosine", "0.99"]) == 0
    capsys.readouterr()
    assert main(["validate", MLP, pruned, "--data", DATA, "--atol", "0.5", "--json"]) == 4
    doc = json.loads(capsys.readouterr().out)
    assert doc["passed"] is False and doc["bounds"]["atol"] == 0.5
    assert any("'probabilities': max|diff| 0.709 outside --atol 0.5" in v for v in doc["violations"])
    assert main(["validate", MLP, MLP, "--data", DATA, "--atol", "0"]) == 0  # identical models: bit-exact


def test_bad_bounds_are_bad_input(pruned, capsys) -> None:
    assert main(["validate", MLP, pruned, "--min-cosine", "1.5"]) == 1
    assert "--min-cosine must be a finite number in [-1, 1], got 1.5" in capsys.readouterr().err
    assert main(["validate", MLP, pruned, "--min-top1", "98"]) == 1
    assert "--min-top1 must be a finite number in [0, 1]" in capsys.readouterr().err
