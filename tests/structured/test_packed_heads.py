"""timm's packed QKV: one Reshape splits the projection into ``(parts, heads, head_dim)``, then the parts are
taken apart (Split, Gather or Slice after the permute). A head is one root: the same ``head_dim`` channels in
each of q, k and v, and the output projection's rows; the head count in the reshape target is rewritten.

Every cut is proven against the oracle (pruned == original with the dropped heads' output-projection rows
zeroed) in onnxruntime and the reference evaluator, with the exact parameter drop (``check_prune``).
"""

from __future__ import annotations

import attention_builders as ab
import numpy as np
import pytest
from oracle_check import check_prune, run_ort, seeded_feeds

from onnxprune.structured.analysis import analyze
from onnxprune.structured.oracle import zeroed_reference
from onnxprune.structured.plan import PrunePlan
from onnxprune.structured.surgery import apply_plan

CASES = [
    pytest.param(dict(unbind="split"), id="split-runtime-target"),
    pytest.param(dict(unbind="gather"), id="gather-runtime-target"),
    pytest.param(dict(unbind="slice", runtime_target=False), id="slice-constant-target"),
    pytest.param(dict(unbind="gather", runtime_target=False), id="gather-constant-target"),
    pytest.param(dict(unbind="split", order="hpd"), id="megatron-order"),
    pytest.param(dict(unbind="split", heads=4, d=16), id="4-heads"),
]


def _heads(model):
    dg = analyze(model)
    groups = dg.prunable_groups  # the stream is the graph input and output: only the heads are prunable
    assert len(groups) == 1, dg.summary()
    return dg, groups[0]


@pytest.mark.parametrize("kw", CASES)
def test_a_head_is_the_same_channels_of_q_k_and_v(kw) -> None:
    kw = {"heads": 3, "d": 12, **kw}
    dg, g = _heads(ab.timm_attention(**kw))
    heads, d = kw["heads"], kw["d"]
    hd = d // heads
    assert g.size == heads
    (src,) = g.sources
    for h in range(heads):
        if kw.get("order", "phd") == "phd":  # channel = part*d + head*hd + j
            want = np.concatenate([p * d + h * hd + np.arange(hd) for p in range(3)])
        else:  # channel = head*3*hd + part*hd + j
            want = h * 3 * hd + np.arange(3 * hd)
        assert src.positions(np.array([h])).tolist() == sorted(want.tolist())
    (sink,) = g.sinks
    assert sink.positions(np.array([1])).tolist() == list(range(hd, 2 * hd))


@pytest.mark.parametrize("kw", CASES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_head_cuts_match_the_oracle(kw, seed: int) -> None:
    check_prune(ab.timm_attention(seed=seed, **kw), plan="random", seed=seed)


@pytest.mark.parametrize("runtime_target", [True, False])
def test_head_count_is_rewritten_and_the_pruned_model_runs_at_other_sizes(runtime_target: bool) -> None:
    model = ab.timm_attention(heads=3, d=12, t=5, runtime_target=runtime_target)
    dg, g = _heads(model)
    plan = PrunePlan(fingerprint=dg.fingerprint, keep={g.id: np.array([0, 2], np.int64)}, sizes={g.id: 3})
    pruned = apply_plan(model, plan, dg=dg)
    reference = zeroed_reference(model, dg, plan)
    seq = 7 if runtime_target else 5  # the dynamo-style target fixes the sequence length
    for batch in (1, 3):
        x = np.random.default_rng(batch).standard_normal((batch, seq, 12)).astype(np.float32)
        (got,), (want,) = run_ort(pruned, {"x": x}), run_ort(reference, {"x": x})
        assert got.shape == (batch, seq, 12)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_parts_that_are_not_selected_stay_blocked() -> None:
    """A 5-D split whose leading axis is summed instead of taken apart is no packed projection: its parts are
    combined, so it reads as split attention (the same channels cut in every part, :mod:`~onnxprune.structured.
    radix`), and those channels meet ``q @ kᵀ`` of two activations: blocked, with the reason."""
    dg = analyze(ab.timm_attention(parts="sum"))
    assert not dg.prunable_groups
    reasons = " ".join(b for grp in dg.groups for b in grp.blockers)
    assert "contracts two activations over the cut axis" in reasons


@pytest.mark.parametrize("bias_table", ["gather", "folded"])
def test_window_attention_bias_is_cut_with_its_heads(bias_table: str) -> None:
    """Swin: a relative position bias per head (a constant table gathered at constant indices, or folded)
    and a shifted-window mask reshaped around the head axis; the bias loses the dropped heads."""
    model = ab.timm_attention(heads=3, d=12, t=4, bias_table=bias_table, window_mask=2, batch=4)
    dg, g = _heads(model)
    params = [c for c in g.cuts if c.role == "param" and c.tensor.startswith("rel_")]
    assert len(params) == 1 and params[0].axis == 1  # the heads axis of [L, H] and of [1, H, T, T]
    for seed in range(3):
        check_prune(model, plan="random", seed=seed)


def test_a_pruned_window_attention_keeps_the_bias_of_the_kept_heads() -> None:
    model = ab.timm_attention(heads=3, d=12, t=4, bias_table="gather", window_mask=2, batch=4)
    dg, g = _heads(model)
    plan = PrunePlan(fingerprint=dg.fingerprint, keep={g.id: np.array([1], np.int64)}, sizes={g.id: 3})
    pruned = apply_plan(model, plan, dg=dg)
    table = {t.name: t for t in pruned.graph.initializer}
    (name,) = [n for n in table if n.startswith("rel_table")]
    original = {t.name: t for t in model.graph.initializer}[name]
    from onnx import numpy_helper

    np.testing.assert_array_equal(numpy_helper.to_array(table[name]), numpy_helper.to_array(original)[:, [1]])
    feeds = seeded_feeds(model)
    assert run_ort(pruned, feeds)[0].shape == run_ort(model, feeds)[0].shape
