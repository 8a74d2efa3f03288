"""PruneConfig: every option is checked in one place, with a message naming the option and the range."""

from __future__ import annotations

import pytest

from onnxprune.config import PruneConfig, matches_any, parse_assignments, parse_dims
from onnxprune.core.errors import ConfigError


def test_defaults_are_valid_and_recovery_follows_calibration() -> None:
    cfg = PruneConfig().validate_options()
    assert cfg.mode == "structured" and cfg.ratio == 0.3 and cfg.recovery == "none"
    assert PruneConfig(calib="c.npz").recovery == "bias"
    assert PruneConfig(calib="c.npz", recover="lstsq").recovery == "lstsq"


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"sparsity": 1.0}, r"^sparsity must be in \[0, 1\)"),
        ({"sparsity": -0.1}, r"^sparsity"),
        ({"sparsity": float("nan")}, r"^sparsity"),
        ({"ratio": 1.5}, r"^ratio must be in \[0, 1\)"),
        ({"mode": "magic"}, r"^mode must be one of"),
        ({"scope": "world"}, r"^scope"),
        ({"mode": "nm", "nm": "4:2"}, r"N:M pattern needs 0 < n < m"),
        ({"round_to": 0}, r"^round_to must be auto or an integer >= 1"),
        ({"min_channels": 0}, r"^min_channels must be >= 1"),
        ({"mode": "unstructured", "min_size": -1}, r"^min_size"),
        ({"target_macs": 0.0}, r"^target_macs must be in \(0, 1\]"),
        ({"target_params": 1.2}, r"^target_params"),
        ({"max_error": -1.0}, r"^max_error"),
        ({"recover": "lstsq"}, r"needs calibration data; pass calib"),
        ({"recover": "magic"}, r"^recover must be one of"),
        ({"mode": "unstructured", "target_macs": 0.5}, r"^target_macs does not apply to mode='unstructured'"),
        ({"layer_sparsity": {"conv*": 1.0}}, r"^layer_sparsity 'conv\*'"),
        ({"dims": {"N": 0}}, r"^dims N=0"),
        ({"bench_batches": (0,)}, r"^bench_batches must be >= 1"),
        ({"bench_runs": 0}, r"^bench_runs"),
        ({"threads": 0}, r"^threads"),
        ({"exclude": ("",)}, r"^exclude"),
        ({"atol": -1.0}, r"^atol"),
    ],
)
def test_out_of_range_options_are_refused_when_made(changes: dict, match: str) -> None:
    """API messages name the parameter (``ratio``), not the CLI flag, and come from the constructor."""
    with pytest.raises(ConfigError, match=match):
        PruneConfig(**changes)


def test_config_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        PruneConfig(ratio=2.0).validate_options()


def test_parse_assignments() -> None:
    assert parse_assignments(["conv1*=0.3", "fc=0"], option="--layer-sparsity") == {"conv1*": 0.3, "fc": 0.0}
    assert parse_assignments(["N=8"], option="--dim", kind=int) == {"N": 8}
    with pytest.raises(ConfigError, match="NAME=VALUE"):
        parse_assignments(["conv1"], option="--layer-sparsity")
    with pytest.raises(ConfigError, match="not a valid int"):
        parse_assignments(["N=x"], option="--dim", kind=int)


def test_matches_any_is_shell_style_and_case_sensitive() -> None:
    assert matches_any("conv1.weight", ("conv1*",))
    assert not matches_any("Conv1.weight", ("conv1*",))
    assert matches_any("layer3.0.conv2", ("layer[23].*",))


def test_parse_dims():
    assert parse_dims(["seq=128", "N=2"]) == {"seq": 128, "N": 2}
    assert parse_dims(None) == {}
    with pytest.raises(ConfigError, match="NAME=VALUE"):
        parse_dims(["seq"])
    with pytest.raises(ConfigError, match="not a valid int"):
        parse_dims(["seq=abc"])
    with pytest.raises(ConfigError, match="positive integer"):
        parse_dims(["seq=0"])
