"""Sensitivity: per-group curves rank a known insensitive group first; the CLI prints and plots them."""

from __future__ import annotations

import json

import numpy as np
import pytest
from builders import mlp3

from onnxprune.cli.main import main
from onnxprune.core.errors import CalibrationError, ConfigError
from onnxprune.recovery.sensitivity import parse_ratios, sensitivity


def _calib(n: int = 64, d: int = 8, seed: int = 0) -> list[dict[str, np.ndarray]]:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return [{"x": x[: n // 2]}, {"x": x[n // 2:]}]


def test_insensitive_group_ranks_first_and_errors_grow_with_ratio():
    model = mlp3()
    report = sensitivity(model, _calib(), ratios=(0.2, 0.5, 0.8))
    assert report.metric == "relative_l2" and report.samples == 64
    ranked = report.ranked()
    assert [g.source for g in ranked] == ["fc2", "fc1"]  # fc2 reaches the output through tiny weights
    quiet, loud = ranked
    assert max(quiet.errors) < 0.1 * min(loud.errors)
    for g in ranked:
        assert list(g.errors) == sorted(g.errors) and g.errors[0] > 0
        assert list(g.kept) == [g.size - round(r * g.size + 1e-9) for r in (0.2, 0.5, 0.8)]
        assert list(g.macs) == sorted(g.macs, reverse=True) and g.macs[0] < report.macs
    table = report.table()
    assert table.splitlines()[2].startswith("| 1 | 1 | 10 | `fc2` |")


def test_recovery_lowers_measured_error():
    model = mlp3(quiet_scale=1.0)
    data = _calib(256)
    plain = sensitivity(model, data, ratios=(0.5,))
    fitted = sensitivity(model, data, ratios=(0.5,), recover="lstsq")
    for a, b in zip(plain.groups, fitted.groups, strict=True):
        assert b.errors[0] < a.errors[0]


def test_sensitivity_options_are_checked():
    with pytest.raises(ConfigError, match="must be numbers in \\(0, 1\\)"):
        parse_ratios("0.2,1.5")
    with pytest.raises(ConfigError, match="comma-separated numbers"):
        parse_ratios("a,b")
    assert parse_ratios("0.5, 0.1,0.5") == (0.1, 0.5)
    with pytest.raises(ConfigError, match="recover must be"):
        sensitivity(mlp3(), _calib(), recover="retrain")
    with pytest.raises(ConfigError, match="groups \\[7\\] are not prunable"):
        sensitivity(mlp3(), _calib(), groups=[7])
    with pytest.raises(ConfigError, match="needs calibration data|unknown"):
        sensitivity(mlp3(), _calib(), importance="nope")


def test_cli_sensitivity_json_plot_and_errors(tmp_path, capsys):
    calib = tmp_path / "calib.npz"
    np.savez(calib, input=np.random.default_rng(1).standard_normal((40, 1, 8, 8)).astype(np.float32))
    plot = tmp_path / "sens.png"
    rc = main(["sensitivity", "models/digits_cnn.onnx", "--calib", str(calib), "--ratios", "0.25,0.5",
               "--json", "--plot", str(plot)])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert report["metric"] == "relative_l2" and report["ratios"] == [0.25, 0.5]
    scores = [g["score"] for g in report["groups"]]
    assert scores == sorted(scores) and len(scores) == 4
    assert plot.stat().st_size > 1000
    rc = main(["sensitivity", "models/digits_cnn.onnx", "--calib", str(calib), "--ratios", "0.5",
               "--importance", "apoz"])
    out = capsys.readouterr().out
    assert rc == 0 and "importance apoz" in out and "| rank | group |" in out
    bad = tmp_path / "bad.npz"
    np.savez(bad, input=np.zeros((4, 64), np.float32))
    assert main(["sensitivity", "models/digits_cnn.onnx", "--calib", str(bad)]) == 1
    assert "onnxprune: error: input data" in capsys.readouterr().err
    assert main(["sensitivity", "models/digits_cnn.onnx", "--calib", str(calib), "--ratios", "2"]) == 1
    assert "--ratios must be numbers in (0, 1)" in capsys.readouterr().err


def test_bad_calibration_is_calibration_error():
    with pytest.raises(CalibrationError, match="no input 'x'"):
        sensitivity(mlp3(), [{"y": np.zeros((2, 8), np.float32)}])
