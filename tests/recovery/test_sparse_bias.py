"""``--recover bias`` in unstructured and N:M mode: each sparsified layer's output mean over the calibration
data is restored by its bias (it was a silent no-op there); after SparseGPT or --sequential it is skipped
with the reason logged and reported."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from builders import conv_relu_conv

import onnxprune as op
from onnxprune.recovery.calibrate import with_outputs


def _calib(tmp_path: Path) -> tuple[Path, np.ndarray]:
    x = (np.random.default_rng(3).standard_normal((24, 4, 9, 9)) + 1.0).astype(np.float32)  # mean 1: a shift
    path = tmp_path / "calib.npz"
    np.savez(path, x=x)
    return path, x


def _channel_means(model, x: np.ndarray, name: str) -> np.ndarray:
    sess = ort.InferenceSession(with_outputs(model, [name]).SerializeToString(), providers=["CPUExecutionProvider"])
    (y,) = sess.run([name], {"x": x})
    return y.astype(np.float64).mean(axis=(0, 2, 3))


@pytest.mark.parametrize("mode", ["unstructured", "nm"])
def test_bias_restores_each_sparsified_layer_output_mean(tmp_path: Path, mode: str) -> None:
    """conv1 (3x3, padded: the im2col means count the zero padding) reads the graph input, so its output mean
    over the calibration data must equal the dense layer's exactly; plain zeroing moves it."""
    model = conv_relu_conv(c_in=4, c_mid=8, pads=1)
    calib, x = _calib(tmp_path)
    kw = {"sparsity": 0.5} if mode == "unstructured" else {"nm": "2:4"}
    fixed = op.prune(model, op.PruneConfig(mode=mode, calib=str(calib), **kw))
    plain = op.prune(model, op.PruneConfig(mode=mode, calib=str(calib), recover="none", **kw))
    assert fixed.report["recovery"] == "bias"
    dense = _channel_means(model, x, "c1")
    np.testing.assert_allclose(_channel_means(fixed.model, x, "c1"), dense, atol=1e-4)
    assert np.abs(_channel_means(plain.model, x, "c1") - dense).max() > 0.05  # so the check above can fail
    assert fixed.report["sparsity"] == plain.report["sparsity"]  # only biases changed


def test_bias_is_skipped_after_sparsegpt_with_the_reason(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """SparseGPT already updates the survivors: bias is not applied, and the report and a warning say why."""
    model = conv_relu_conv(c_in=4, c_mid=8, pads=1)
    calib, _ = _calib(tmp_path)
    with caplog.at_level(logging.WARNING):
        result = op.prune(model, op.PruneConfig(mode="unstructured", sparsity=0.5, importance="sparsegpt",
                                                calib=str(calib), recover="bias"))
    assert result.report["recovery"] == "none"
    assert "SparseGPT already updates" in result.report["recovery_skipped"]
    assert any("--recover bias is not applied" in r.getMessage() for r in caplog.records)
