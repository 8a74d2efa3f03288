"""``--remove-blocks`` / ``PruneConfig(remove_blocks=N)``: depth pruning before the width cut, each proven."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from onnxprune import PruneConfig, prune
from onnxprune.cli.main import main
from onnxprune.core.errors import ConfigError
from onnxprune.core.stats import count_params

MODELS = Path(__file__).resolve().parents[1] / "models"


def test_depth_then_width_is_proven_twice() -> None:
    result = prune(str(MODELS / "digits_transformer.onnx"), PruneConfig(remove_blocks=2, ratio=0.3))
    depth = result.report["depth"]
    assert len(depth["removed_blocks"]) == 2 and depth["exact"]["passed"]
    assert result.report["validation"]["exact"]["passed"]
    scores = [b["score"] for b in depth["removed_blocks"]]
    assert all(s < 5.6 for s in scores)  # the two attention branches (4.81, 5.54) before the MLPs (5.79, 5.91)


def test_depth_only_removes_a_resnet_block(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r18.onnx"
    assert main(["prune", str(MODELS / "tv_resnet18.onnx"), "-o", str(out), "--remove-blocks", "1",
                 "--ratio", "0"]) == 0
    text = capsys.readouterr().out
    assert "residual blocks       1 removed, proven exact: /layer1/layer1.1/Add" in text
    from onnxprune.core.io import load_model
    from onnxprune.core.ir import GraphIndex

    original = load_model(MODELS / "tv_resnet18.onnx")
    index = GraphIndex(original)
    branch = [n for n in original.graph.node if n.op_type in ("Conv", "BatchNormalization") and "layer1.1/" in n.name]
    assert len(branch) == 4  # conv1 -> bn1 -> ReLU -> conv2 -> bn2: all their weights go, nothing else
    weights = sum(int(np.prod(index.const_shape(i))) for n in branch for i in n.input[1:])  # type: ignore[arg-type]
    assert count_params(original) - count_params(load_model(out)) == weights


@pytest.mark.parametrize(("flags", "message"), [
    (["--remove-blocks", "9"], "cannot remove 9 residual blocks: the model has 5 removable ones"),
    (["--remove-blocks", "-1"], "--remove-blocks must be an integer >= 0"),
    (["--remove-blocks", "1", "--sparsity", "0.5"], "--remove-blocks (--mode structured or --mode depth)"),
])
def test_bad_remove_blocks_is_one_line(flags: list[str], message: str, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "x.onnx"
    assert main(["prune", str(MODELS / "tv_resnet18.onnx"), "-o", str(out), *flags]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and not out.exists()


def test_remove_blocks_is_a_structured_option() -> None:
    with pytest.raises(ConfigError, match="remove_blocks"):
        PruneConfig(mode="unstructured", remove_blocks=1)


def test_analyze_lists_residual_blocks_lowest_norm_first(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", str(MODELS / "digits_transformer.onnx")]) == 0
    text = capsys.readouterr().out
    assert "residual blocks: 4 removable with --remove-blocks" in text
    lines = [line for line in text.splitlines() if " last /encoder" in line]
    assert [("self_attn" in line) for line in lines] == [True, True, False, False]


def test_dry_run_names_the_blocks_it_would_remove(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "x.onnx"
    assert main(["prune", str(MODELS / "tv_resnet18.onnx"), "-o", str(out), "--remove-blocks", "2",
                 "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "residual block /layer1/layer1.1/Add removed" in text and not out.exists()


def test_with_calibration_blocks_are_chosen_by_influence() -> None:
    result = prune(str(MODELS / "digits_transformer.onnx"),
                   PruneConfig(remove_blocks=1, ratio=0.0, calib=str(MODELS / "digits_transformer_calib.npz")))
    depth = result.report["depth"]
    assert depth["criterion"].startswith("block influence")
    assert [b["add"] for b in depth["removed_blocks"]] == ["/encoder/layers.0/Add_1"] and depth["exact"]["passed"]
