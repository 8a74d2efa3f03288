"""``--mode depth`` / ``PruneConfig(mode="depth")``: whole residual blocks by count or by a MACs budget, alone or
with channel pruning in the same run, each cut proven against its oracle."""

from __future__ import annotations

from pathlib import Path

import pytest

from onnxprune import PruneConfig, prune
from onnxprune.cli.main import main
from onnxprune.core.errors import ConfigError

MODELS = Path(__file__).resolve().parents[1] / "models"
MODEL = str(MODELS / "digits_transformer.onnx")


def test_a_macs_budget_removes_blocks_and_no_channel() -> None:
    result = prune(MODEL, PruneConfig(mode="depth", target_macs=0.8))
    report = result.report
    assert report["mode"] == "depth"
    (block,) = report["depth"]["removed_blocks"]  # 74.5% of the MACs left after the first (measured)
    assert block["add"] == "/encoder/layers.0/Add" and report["depth"]["exact"]["passed"]
    assert report["macs_after"] <= 0.8 * report["macs_before"]
    assert result.plan is not None and result.plan.channels_removed == 0
    assert report["settings"]["ratio"] == 0.0 and report["settings"]["target_macs"] == 0.8


def test_depth_by_budget_then_width_in_one_run() -> None:
    alone = prune(MODEL, PruneConfig(mode="depth", remove_blocks=1)).report
    both = prune(MODEL, PruneConfig(mode="depth", remove_blocks=1, ratio=0.3, round_to=1, bench=False))
    assert both.plan is not None and both.plan.channels_removed > 0
    assert both.report["validation"]["exact"]["passed"] and both.report["depth"]["exact"]["passed"]
    assert both.report["macs_after"] < alone["macs_after"]


@pytest.mark.parametrize(("options", "message"), [
    ({"mode": "depth"}, "give remove_blocks N or target_macs F"),
    ({"mode": "depth", "remove_blocks": 1, "target_macs": 0.5}, "give remove_blocks N or target_macs F"),
    ({"mode": "depth", "target_params": 0.5}, "target_params does not apply to mode='depth'"),
])
def test_depth_mode_needs_one_budget(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        PruneConfig(**options)


def test_cli_depth_mode(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "d.onnx"
    assert main(["prune", MODEL, "-o", str(out), "--mode", "depth", "--target-macs", "0.8"]) == 0
    assert "residual blocks       1 removed, proven exact: /encoder/layers.0/Add" in capsys.readouterr().out
    assert main(["prune", MODEL, "-o", str(tmp_path / "e.onnx"), "--mode", "depth"]) == 1
    err = capsys.readouterr().err
    assert "--mode depth removes whole residual blocks: give --remove-blocks N or --target-macs F" in err
