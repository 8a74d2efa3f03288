"""Sharded calibration: the sum of shards equals one pass to float64 round-off (local, processes; Ray in
test_ray_executor.py)."""

from __future__ import annotations

import numpy as np
import pytest

from onnxprune.core.errors import ConfigError
from onnxprune.recovery.calibrate import collect_stats
from onnxprune.recovery.shards import collect_stats_sharded

CNN = "models/digits_cnn.onnx"
CNN_CALIB = "models/digits_cnn_calib.npz"


def _same(a, b):
    assert a.samples == b.samples and set(a.channels) == set(b.channels) and set(a.grams) == set(b.grams)
    for name, c in a.channels.items():
        d = b.channels[name]
        assert c.count == d.count
        for f in ("mean", "mean_sq", "mean_abs", "zero_frac"):
            np.testing.assert_allclose(getattr(c, f), getattr(d, f), rtol=1e-12, atol=1e-15)
    for name, g in a.grams.items():
        h = b.grams[name]
        assert g.rows == h.rows
        np.testing.assert_allclose(g.gram, h.gram, rtol=1e-12, atol=1e-9)
        np.testing.assert_allclose(g.col_sum, h.col_sum, rtol=1e-12, atol=1e-9)


def _layers():
    import onnx

    names = [n.name for n in onnx.load(CNN).graph.node if n.op_type in ("Conv", "Gemm")]
    return [names[2], names[-1]]


@pytest.mark.parametrize("executor", ["local", "processes"])
def test_shards_sum_to_one_pass(executor):
    layers = _layers()
    one = collect_stats(CNN, CNN_CALIB, gram_for=layers, tensors=[])
    _same(collect_stats_sharded(CNN, CNN_CALIB, shards=3, gram_for=layers, executor=executor), one)
    with pytest.raises(ConfigError, match="shards must be >= 1"):
        collect_stats_sharded(CNN, CNN_CALIB, shards=0)


def test_channel_stats_merge(tmp_path):
    import onnx

    node = next(n for n in onnx.load(CNN).graph.node if n.op_type == "Relu")
    one = collect_stats(CNN, CNN_CALIB, tensors={node.output[0]: 1})
    _same(collect_stats_sharded(CNN, CNN_CALIB, shards=4, tensors={node.output[0]: 1}, executor="local"), one)
