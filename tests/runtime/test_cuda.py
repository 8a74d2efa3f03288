"""CUDA paths (need onnxruntime-gpu and an NVIDIA GPU; skipped elsewhere): CUDA graph replay, device-resident
layer timing and the benchmark's CUDA options. The one check that needs no GPU runs everywhere."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from builders import conv_relu_conv

from onnxprune.core.errors import ConfigError
from onnxprune.runtime.bench import benchmark
from onnxprune.runtime.feeds import random_feeds
from onnxprune.runtime.latency import AsServed, onnxruntime_round_timer
from onnxprune.runtime.session import DeviceRunner, create_session, cuda_available, run_session

#: CUDA runs convolutions and matrix products in TF32 by default (10-bit mantissa): relative errors near 1e-3.
TF32 = 1e-2
needs_cuda = pytest.mark.skipif(not cuda_available(),
                                reason="needs onnxruntime-gpu and an NVIDIA GPU (CUDAExecutionProvider)")


def test_cuda_graphs_are_refused_off_cuda_with_the_fix():
    with pytest.raises(ConfigError, match="CUDA graphs need the CUDA provider.*--providers cuda"):
        create_session(conv_relu_conv(), provider="cpu", cuda_graph=True)


@needs_cuda
def test_a_cuda_graph_replay_reads_new_input_values_at_the_bound_address():
    """A replay re-runs captured kernels on fixed addresses: writing new values into the bound input must
    change the output (a graph replaying stale buffers, or outputs bound to a fresh buffer, would not)."""
    model = conv_relu_conv(c_in=4, c_mid=8, c_out=6, batch=2)
    session = create_session(model, provider="cuda", cuda_graph=True)
    assert session.get_providers()[0] == "CUDAExecutionProvider"
    cpu = create_session(model)
    first = random_feeds(model, seed=1, batch=2)
    runner = DeviceRunner(session, first, outputs=list(run_session(cpu, first).values()))
    for _ in range(3):  # onnxruntime runs the first ones plainly, then captures, then replays
        runner.run()
    np.testing.assert_allclose(runner.binding.get_outputs()[0].numpy(), run_session(cpu, first)["out"],
                               rtol=TF32, atol=TF32 * 10)
    second = random_feeds(model, seed=2, batch=2)
    (name,) = second
    runner._inputs[name].update_inplace(np.ascontiguousarray(second[name]))
    runner.run()
    np.testing.assert_allclose(runner.binding.get_outputs()[0].numpy(), run_session(cpu, second)["out"],
                               rtol=TF32, atol=TF32 * 10)


@needs_cuda
def test_layer_timing_on_cuda_runs_on_the_device():
    model = conv_relu_conv(c_in=8, c_mid=16, c_out=8, hw=16, batch=4)
    rounds = onnxruntime_round_timer(provider="cuda", rounds=5, set_seconds=0.1)([model, AsServed(model, 2, {})])
    assert len(rounds) == 2 and all(len(r) >= 5 and min(r) > 0 for r in rounds)


@needs_cuda
def test_benchmark_replays_cuda_graphs_and_says_so():
    small = conv_relu_conv(c_in=4, c_mid=6, c_out=5)
    wide = conv_relu_conv(c_in=4, c_mid=32, c_out=5)
    report = benchmark([wide, small], names=["wide", "small"], providers=("cuda",), batches=(1, 4), runs=10,
                       memory=False, cuda_graph=True)
    assert report.settings["cuda_graph"] is True
    assert any("CUDA graph" in n for n in report.notes)
    for batch in (1, 4):
        assert report.result("small", "cuda", batch).p50_ms > 0
    assert ort.get_device() == "GPU"
