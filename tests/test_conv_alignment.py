"""Conv widths aligned to the provider's blocked layout: multiples of 16 on an AVX-512 CPU, of 8 elsewhere.

The CPU's flags are a parameter (``conv_alignment(flags=...)``) or our own cached reader patched with a
fixed set; the width chooser's timer is a deterministic cost model (widths proportional to time).
"""

from __future__ import annotations

import pytest
from builders import conv_relu_conv, mlp
from test_latency_widths import _macs_timer
from test_latency_widths import _model_and_group as _conv_group

import onnxprune.runtime.kernels as kernels
from onnxprune import PruneConfig
from onnxprune.runtime.kernels import conv_alignment
from onnxprune.runtime.latency import LatencyCache
from onnxprune.speed import AUTO_BENCH_MAX_BYTES, LatencyModel, default_widths
from onnxprune.structured.analysis import analyze


def test_alignment_follows_the_cpu_and_the_provider():
    assert conv_alignment("cpu", frozenset({"sse4_2", "avx2", "avx512f"})) == 16
    assert conv_alignment("cpu", frozenset({"sse4_2", "avx2"})) == 8
    assert conv_alignment("cpu", frozenset()) == 8
    assert conv_alignment("cuda", frozenset({"avx512f"})) == 8


def test_conv_groups_keep_multiples_of_the_alignment():
    model, dg, g = _conv_group()
    # 41 of 64: candidates 40, 41, 48. Timed alone, time is proportional to width: 40 is "fastest", but it
    # is no multiple of 16, and a layer timed alone does not see what that costs in the model.
    eight = LatencyModel(model, dg, batches=(1,), dims={}, timer=_macs_timer(None), cache=LatencyCache(None))
    assert eight.choose(g, 41) == 40
    sixteen = LatencyModel(model, dg, batches=(1,), dims={}, timer=_macs_timer(None), cache=LatencyCache(None),
                           conv_align=16)
    assert sixteen.choose(g, 41) == 48
    assert sixteen.choose(g, 35) == 48  # 40 is no multiple of 16: 48 is the only candidate left
    assert sixteen.choose(g, 33) == 32  # one channel under the ask, and a multiple of 16
    _, _, small = _conv_group(c_mid=12)
    assert sixteen.choose(small, 5) == 8  # no multiple of 16 below the group's width: multiples of 8


def test_matmul_groups_are_not_aligned_to_the_conv_block():
    model = mlp(d_in=16, hidden=64, d_out=10, batch=1)
    dg = analyze(model)
    g = next(g for g in dg.groups if g.prunable and g.size == 64)
    lm = LatencyModel(model, dg, batches=(1,), dims={}, timer=lambda ms: [1.0] * len(ms), cache=LatencyCache(None),
                      conv_align=16)
    assert lm.choose(g, 41) == 40  # a tie goes to the width nearest the ask, as without the alignment


@pytest.mark.parametrize(("flags", "with_conv", "expected"), [({"avx512f"}, True, 16), ({"avx2"}, True, 8),
                                                              ({"avx512f"}, False, 8)])
def test_large_models_default_to_the_alignment_of_their_convs(monkeypatch, flags, with_conv, expected):
    monkeypatch.setattr(kernels, "_cpu_flags", lambda: frozenset(flags))
    model = conv_relu_conv(c_mid=16) if with_conv else mlp()
    config = default_widths(PruneConfig(ratio=0.3), AUTO_BENCH_MAX_BYTES + 1, model)
    assert config.round_to == expected
    assert default_widths(PruneConfig(ratio=0.3), AUTO_BENCH_MAX_BYTES - 1, model).round_to == "auto"
    assert default_widths(PruneConfig(ratio=0.3, round_to="auto"), AUTO_BENCH_MAX_BYTES + 1, model).round_to == "auto"
