"""Two models timed in alternating pair order on real onnxruntime sessions (no timing asserts)."""

from __future__ import annotations

from builders import conv_relu_conv

from onnxprune.core.io import save_model
from onnxprune.runtime.paired_timing import time_pair


def test_time_pair_times_both_models_in_whole_blocks(tmp_path):
    big = conv_relu_conv(c_in=4, c_mid=32, c_out=8, hw=8, batch=1)
    small = conv_relu_conv(c_in=4, c_mid=8, c_out=8, hw=8, batch=1)
    path = save_model(big, tmp_path / "big.onnx")  # one from a file, one in memory, as the pipeline passes them
    base, pruned, seconds = time_pair(path, small, provider="cpu", batch=1, threads=1, rounds=9, min_rounds=4,
                                      set_seconds=60.0, warmup=1)
    assert len(base) == len(pruned) == 8  # rounds come in blocks of two: an odd count is rounded down
    assert all(t > 0 for t in base + pruned) and seconds > 0


def test_time_pair_stops_after_its_time_once_the_minimum_is_made(tmp_path):
    model = conv_relu_conv(c_in=4, c_mid=8, c_out=8, hw=8, batch=1)
    base, pruned, _ = time_pair(model, model, provider="cpu", batch=1, threads=1, rounds=60, min_rounds=4,
                                set_seconds=0.0, warmup=0)
    assert len(base) == len(pruned) == 4
