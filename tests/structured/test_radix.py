"""ResNeSt split attention (``onnxprune.structured.radix``): the same in-part channels are cut in every radix
part and every cardinal group, ``RC // radix`` read at run time follows the cut, and the radix axis (what the
softmax and the sum over parts run across) is never cut.

Every cut is proven against the oracle (pruned == original with the dropped channels' sink weights zeroed) in
onnxruntime and the reference evaluator, with the exact parameter drop; the pruned block runs at other batch
sizes. Faults stay blocked with their reason: ``RC // radix`` divided by a run-time value, ``RC // radix``
landing in a split of channels the cut does not touch, a softmax over the per-part channels.
"""

from __future__ import annotations

import numpy as np
import pytest
import split_attention_builders as sab
from oracle_check import check_prune, run_ort

from onnxprune.structured.analysis import analyze
from onnxprune.structured.axes import ChannelAxis
from onnxprune.structured.oracle import zeroed_reference
from onnxprune.structured.plan import PrunePlan
from onnxprune.structured.surgery import apply_plan

CASES = [
    pytest.param(dict(), id="legacy-radix2"),
    pytest.param(dict(runtime_target=False), id="dynamo-radix2"),
    pytest.param(dict(radix=3, cardinality=2, c=6, c_in=12), id="legacy-radix3-cardinality2"),
    pytest.param(dict(radix=3, cardinality=2, c=6, c_in=12, runtime_target=False), id="dynamo-radix3-cardinality2"),
    pytest.param(dict(radix=2, cardinality=3, c=12, c_in=12, attn=6), id="legacy-radix2-cardinality3"),
]


def _conv_group(model, dg):
    """The group of the block's first Conv (the split-attention channels)."""
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    (gid,) = dg.group_of(ChannelAxis(conv.output[0], 1))
    return dg.groups[gid]


def _conv_width(model) -> int:
    """Output channels of the block's first Conv."""
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    return next(int(t.dims[0]) for t in model.graph.initializer if t.name == conv.input[1])


@pytest.mark.parametrize("kw", CASES)
def test_a_channel_is_the_same_position_of_every_radix_part_and_cardinal_group(kw) -> None:
    kw = {"radix": 2, "cardinality": 1, "c": 6, **kw}
    model = sab.split_attention(**kw)
    dg = analyze(model)
    g = _conv_group(model, dg)
    radix, cardinality, c = kw["radix"], kw["cardinality"], kw["c"]
    d = c // cardinality
    assert g.prunable, g.blockers
    assert g.size == d  # channel i of the block is position i of every part and cardinal group
    conv = next(s for s in g.sources if s.op_type == "Conv" and s.tensor.startswith("conv_w"))
    for i in range(d):
        want = sorted(r * c + k * d + i for r in range(radix) for k in range(cardinality))
        assert conv.positions(np.array([i])).tolist() == want


@pytest.mark.parametrize("kw", CASES)
@pytest.mark.parametrize("grouped_conv", ["within", "whole"])
def test_split_attention_pruned_at_0_3_matches_the_oracle(kw, grouped_conv: str) -> None:
    """``whole`` (grouped convs cut by whole groups) ties the radix parts together: nothing of the block is cut
    then, and whatever is cut stays exact."""
    model = sab.split_attention(**kw)
    dg, plan, _ = check_prune(model, ratio=0.3, grouped_conv=grouped_conv, min_prunable=0)
    if grouped_conv == "within":
        g = _conv_group(model, dg)
        assert len(plan.keep[g.id]) < g.size, "the split-attention channels were not cut"


@pytest.mark.parametrize("kw", CASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_random_split_attention_cuts_match_the_oracle(kw, seed: int) -> None:
    check_prune(sab.split_attention(seed=seed, **kw), plan="random", seed=seed)


@pytest.mark.parametrize("kw", CASES)
def test_the_pruned_block_runs_at_other_batch_sizes(kw) -> None:
    """``RC // radix`` is read again at run time (legacy) or rewritten (dynamo): both follow any batch."""
    model = sab.split_attention(**kw)
    dg = analyze(model)
    g = _conv_group(model, dg)
    keep = np.array([0, g.size - 1], np.int64)
    plan = PrunePlan(fingerprint=dg.fingerprint, keep={g.id: keep}, sizes={g.id: g.size})
    pruned, reference = apply_plan(model, plan, dg=dg), zeroed_reference(model, dg, plan)
    c_in = model.graph.input[0].type.tensor_type.shape.dim[1].dim_value
    width = _conv_width(model)
    assert _conv_width(pruned) == len(keep) * (width // g.size)
    for batch in (1, 3):
        x = np.random.default_rng(batch).standard_normal((batch, c_in, 5, 5)).astype(np.float32)
        (got,), (want,) = run_ort(pruned, {"x": x}), run_ort(reference, {"x": x})
        assert got.shape == (batch, 4, 5, 5)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_a_division_by_a_run_time_value_stays_blocked() -> None:
    model = sab.split_attention(div="runtime")
    g = _conv_group(model, analyze(model))
    assert not g.prunable
    assert any("computed from it by" in b and "(Div)" in b for b in g.blockers), g.blockers


def test_rc_over_radix_read_into_channels_the_cut_does_not_touch_stays_blocked() -> None:
    """A second Conv's channels are split with ``RC // radix`` read from the block's conv: cutting the block
    would change that split, so the block is blocked; the second Conv's own channels stay prunable, exactly."""
    model = sab.split_attention(div="other")
    dg = analyze(model)
    g = _conv_group(model, dg)
    assert not g.prunable
    assert any("the size // 2 of axis 1" in b and "does not change in step with it" in b for b in g.blockers)
    check_prune(model, ratio=0.3)


@pytest.mark.parametrize("runtime_target", [True, False])
def test_a_softmax_over_the_per_part_channels_is_never_cut(runtime_target: bool) -> None:
    """Normalizing over the channels themselves has no exact cut: the dynamo-style block is blocked by the
    Softmax, the legacy-style one merges all its channels into one (nothing to cut); pruning stays exact."""
    model = sab.split_attention(softmax_axis=3, runtime_target=runtime_target)
    dg = analyze(model)
    g = _conv_group(model, dg)
    if runtime_target:
        assert g.size == 1
    else:
        assert not g.prunable
        assert any("Softmax" in b and "normalizes over axis 3" in b for b in g.blockers), g.blockers
        parts = [b for grp in dg.groups for b in grp.blockers if "is a part axis of a split attention" in b]
        assert parts, dg.summary()  # the logits' group reaches the radix axis: refused, never cut
    _, _, pruned = check_prune(model, ratio=0.3)
    assert _conv_width(pruned) == _conv_width(model)
