"""``--anchor-samples N|all`` on ``sensitivity`` and on ``prune`` budgets: validated with one line, and passed
on to the Gram anchors (API: ``sensitivity(anchor_samples=)``, ``PruneConfig(anchor_samples=)``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from onnxprune.cli.main import main
from onnxprune.config import PruneConfig
from onnxprune.core.errors import ConfigError
from onnxprune.recovery import sensitivity as sensitivity_module
from onnxprune.recovery.sensitivity import DEFAULT_ANCHOR_SAMPLES, parse_anchor_samples, sensitivity

ROOT = Path(__file__).resolve().parents[2]
CNN = str(ROOT / "models" / "digits_cnn.onnx")
CALIB = str(ROOT / "models" / "digits_cnn_calib.npz")  # 256 samples


def _sensitivity_json(capsys, *extra: str) -> dict:
    assert main(["sensitivity", CNN, "--calib", CALIB, "--ratios", "0.3,0.5", "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def test_sensitivity_flag_reaches_the_anchors(capsys):
    """``all`` measures the anchors on every sample (exact points, as the API's ``None``); ``32`` gives the
    API's ``anchor_samples=32`` report; no flag is the default 64."""
    every = _sensitivity_json(capsys, "--anchor-samples", "all")
    assert all(any(g["exact"]) for g in every["groups"])
    api_all = sensitivity(CNN, CALIB, ratios=(0.3, 0.5), anchor_samples=None).to_dict()
    assert every["groups"] == json.loads(json.dumps(api_all["groups"]))
    on32 = _sensitivity_json(capsys, "--anchor-samples", "32")
    api32 = sensitivity(CNN, CALIB, ratios=(0.3, 0.5), anchor_samples=32).to_dict()
    assert on32["groups"] == json.loads(json.dumps(api32["groups"]))
    assert not any(any(g["exact"]) for g in on32["groups"])
    assert on32["groups"] != every["groups"]
    default = _sensitivity_json(capsys)
    api64 = sensitivity(CNN, CALIB, ratios=(0.3, 0.5), anchor_samples=DEFAULT_ANCHOR_SAMPLES).to_dict()
    assert default["groups"] == json.loads(json.dumps(api64["groups"]))


@pytest.mark.parametrize("bad", ["0", "-3", "x", "1.5", "true", ""])
def test_bad_values_fail_with_one_line(bad, capsys, tmp_path):
    out = tmp_path / "out.onnx"
    for argv in (["sensitivity", CNN, "--calib", CALIB, f"--anchor-samples={bad}"],
                 ["prune", CNN, "-o", str(out), "--target-macs", "0.5", "--calib", CALIB, f"--anchor-samples={bad}"]):
        assert main(argv) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"onnxprune: error: --anchor-samples must be a positive number of samples or 'all', "
                       f"got '{bad}'; e.g. --anchor-samples 64"]
    assert not out.exists()


def test_prune_flag_needs_a_budget(capsys, tmp_path):
    out = tmp_path / "out.onnx"
    assert main(["prune", CNN, "-o", str(out), "--calib", CALIB, "--anchor-samples", "8"]) == 1
    assert "--anchor-samples applies only with --target-macs" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(("flag", "expected"), [("all", None), ("16", 16), (None, DEFAULT_ANCHOR_SAMPLES)])
def test_prune_budget_passes_the_flag_to_sensitivity(flag, expected, monkeypatch, tmp_path):
    seen = []
    real = sensitivity_module.start_sensitivity

    def spy(*args, **kwargs):
        seen.append(kwargs["anchor_samples"])
        return real(*args, **kwargs)

    monkeypatch.setattr(sensitivity_module, "start_sensitivity", spy)
    monkeypatch.setattr("onnxprune.recovery.budget.start_sensitivity", spy)
    extra = [] if flag is None else ["--anchor-samples", flag]
    assert main(["prune", CNN, "-o", str(tmp_path / "out.onnx"), "--target-macs", "0.5", "--calib", CALIB,
                 "--no-validate", "--quiet", *extra]) == 0
    assert seen == [expected]


def test_api_values():
    assert PruneConfig().anchor_samples == DEFAULT_ANCHOR_SAMPLES
    assert PruneConfig(target_macs=0.5, anchor_samples=None).anchor_samples is None
    for bad in (0, -1, 2.5, True, "all"):
        with pytest.raises(ConfigError, match="anchor_samples must be "):
            PruneConfig(target_macs=0.5, anchor_samples=bad)  # type: ignore[arg-type]
    assert parse_anchor_samples("all") is None and parse_anchor_samples(" 12 ") == 12
    with pytest.raises(ConfigError, match="anchor_samples must be a positive integer or None"):
        sensitivity(CNN, CALIB, anchor_samples=0)
