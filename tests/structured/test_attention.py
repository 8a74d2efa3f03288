"""Attention heads: a head is one root channel; cutting heads slices Q/K/V columns by head blocks, the output
projection's input rows, and rewrites the head count in static and runtime reshape targets.

Every cut is proven against the oracle (pruned == original with the dropped heads' output-projection rows
zeroed) in onnxruntime and the reference evaluator, with the exact parameter drop (``check_prune``).
"""

from __future__ import annotations

from pathlib import Path

import builders
import numpy as np
import pytest
from oracle_check import check_prune

from onnxprune.core.errors import PlanError
from onnxprune.structured.analysis import analyze
from onnxprune.structured.axes import Block
from onnxprune.structured.plan import PrunePlan
from onnxprune.structured.surgery import apply_plan

CASES = [
    pytest.param(dict(heads=2), id="static-2-heads"),
    pytest.param(dict(heads=4, d=16), id="static-4-heads"),
    pytest.param(dict(heads=2, bias=False), id="static-no-bias"),
    pytest.param(dict(heads=2, runtime_target=True), id="runtime-2-heads"),
    pytest.param(dict(heads=4, d=16, runtime_target=True), id="runtime-4-heads"),
    pytest.param(dict(heads=4, d=16, runtime_target=True, bias=False, mask=False), id="runtime-no-bias"),
    pytest.param(dict(heads=4, d=16, gemm_out=True), id="gemm-output-projection"),
    pytest.param(dict(heads=2, fused="split"), id="fused-qkv-split"),
    pytest.param(dict(heads=4, d=16, fused="slice", runtime_target=True), id="fused-qkv-slice-runtime"),
]


def _head_group(model):
    dg = analyze(model)
    heads = dg.prunable_groups  # the output projection feeds the graph output: only the heads are prunable
    assert len(heads) == 1, dg.summary()
    return dg, heads[0]


@pytest.mark.parametrize("kw", CASES)
def test_head_group_is_whole_heads_of_q_k_v_and_the_output_rows(kw) -> None:
    model = builders.attention_block(**kw)
    dg, g = _head_group(model)
    hd = kw.get("d", 8) // kw["heads"]
    assert g.size == kw["heads"]
    assert len(g.sinks) == 1 and g.sinks[0].map == Block(hd)
    if kw.get("fused"):  # one packed weight: head h owns columns [h*hd, (h+1)*hd) of each of Q, K and V
        (src,) = g.sources
        d = kw.get("d", 8)
        want = np.concatenate([np.arange(hd) + k * d for k in range(3)])
        assert src.positions(np.array([0])).tolist() == want.tolist()
        assert src.positions(np.array([1])).tolist() == (want + hd).tolist()
    else:
        assert all(c.map == Block(hd) for c in g.sources) and len(g.sources) == 3
        assert len([c for c in g.cuts if c.role == "param"]) == (3 if kw.get("bias", True) else 0)


@pytest.mark.parametrize("kw", CASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_random_head_cuts_match_the_oracle(kw, seed: int) -> None:
    check_prune(builders.attention_block(seed=seed, **kw), plan="random", seed=seed)


@pytest.mark.parametrize("runtime", [False, True])
def test_head_count_is_rewritten_and_the_pruned_model_keeps_dynamic_batch(runtime: bool) -> None:
    from oracle_check import run_ort

    model = builders.attention_block(heads=4, d=16, runtime_target=runtime)
    dg, g = _head_group(model)
    plan = PrunePlan(fingerprint=dg.fingerprint, keep={g.id: np.array([0, 2], np.int64)}, sizes={g.id: 4})
    pruned = apply_plan(model, plan, dg=dg)
    consts = [np.asarray(v) for v in _int_consts(pruned)]
    assert any(c.tolist() in ([0, 4, 2, 4], [2]) for c in consts)  # the head count became 2
    assert not any(c.tolist() in ([0, 4, 4, 4], [4]) and c.size > 1 for c in consts if c.tolist() != [16])
    x = np.random.default_rng(0).standard_normal((3, 4, 16)).astype(np.float32)
    assert run_ort(pruned, {"x": x})[0].shape == (3, 4, 16)


def _int_consts(model):
    from onnx import numpy_helper

    for t in model.graph.initializer:
        if t.data_type == 7:
            yield numpy_helper.to_array(t)


def test_a_partial_head_plan_is_refused() -> None:
    """A plan counting channels instead of heads (keeping half a head) does not fit the group."""
    model = builders.attention_block(heads=2)
    dg, g = _head_group(model)
    plan = PrunePlan(fingerprint=dg.fingerprint, keep={g.id: np.array([0, 1, 2, 3, 4, 5], np.int64)},
                     sizes={g.id: 8})
    with pytest.raises(PlanError, match="has 8 channels, the model has 2"):
        apply_plan(model, plan, dg=dg)


def test_unknown_shape_arithmetic_stays_blocked_with_its_reason() -> None:
    model = builders.attention_block(heads=2, runtime_target=True, shape_op="Max")
    dg = analyze(model)
    q = [g for g in dg.groups if g.sources and g.sources[0].node == "MatMul_3"]
    assert q and not q[0].prunable
    assert any("computed at runtime by 'Max_" in b and "(Max)" in b for b in q[0].blockers)


def test_the_per_head_dim_is_never_cut() -> None:
    """The head_dim axis of the split is no channel axis: only whole heads are roots."""
    model = builders.attention_block(heads=2)
    dg, g = _head_group(model)
    split_out = [s for s in g.members if s.tensor.startswith("reshape_") and s.axis == 2]
    assert split_out and all(dg.group_of(type(s)(s.tensor, 3)) == () for s in split_out)


GQA = [
    pytest.param(dict(repeat="expand"), id="expand"),
    pytest.param(dict(repeat="tile"), id="tile"),
    pytest.param(dict(repeat="expand-runtime", runtime_target=True), id="expand-runtime-targets"),
    pytest.param(dict(repeat="expand", bias=False, kv_heads=4, heads=8, d=32), id="8q-4kv"),
]


@pytest.mark.parametrize("kw", GQA)
def test_grouped_query_attention_removes_whole_kv_groups(kw) -> None:
    """A root is a KV head with all its query heads: K/V lose ``head_dim`` columns, Q loses
    ``n_rep * head_dim``; the repeat factor is untouched, so it still divides."""
    kw = {"heads": 4, "kv_heads": 2, "d": 16, **kw}
    model = builders.attention_block(**kw)
    dg, g = _head_group(model)
    hd, n_rep = kw["d"] // kw["heads"], kw["heads"] // kw["kv_heads"]
    assert g.size == kw["kv_heads"]
    assert sorted(c.map.size for c in g.sources) == [hd, hd, n_rep * hd]  # type: ignore[attr-defined]
    for seed in range(3):
        check_prune(model, plan="random", seed=seed)


def test_multi_query_attention_stays_blocked_with_its_reason() -> None:
    """One KV head for every query head: removing KV groups would remove the attention; pruning query
    heads inside the group is not done, and the reason says so."""
    dg = analyze(builders.attention_block(heads=4, kv_heads=1, d=16))
    q = [g for g in dg.groups if g.sources and g.sources[0].node == "MatMul_3"][0]
    assert not q.prunable and any("copies, not channels" in b for b in q.blockers)


# -- torch's nn.MultiheadAttention exports (committed models) ---------------------------------------------
MODELS = Path(__file__).resolve().parents[2] / "models"


@pytest.mark.parametrize("name", ["digits_transformer", "tv_vit_b_16"])
def test_torch_multihead_attention_heads_are_prunable_and_exact(name: str) -> None:
    """torch packs Q, K, V in one ``[E, 3E]`` weight, reshapes its output to ``[.., 3, E]``, picks the parts
    with Gather, splits heads with a runtime target ``Concat(S, B*num_heads, head_dim)`` and merges them with
    ``Concat(S*B, E)`` read from the stream's shape. Every layer's 4 heads of 16 channels are one group:
    head ``h`` owns 16 columns in each of Q, K and V of the packed weight and 16 input rows of out_proj."""
    from onnxprune.core.io import load_model

    model = load_model(MODELS / f"{name}.onnx")
    dg = analyze(model)
    heads = [g for g in dg.prunable_groups if any("self_att" in c.node for c in g.sinks)]
    assert len(heads) == (2 if name == "digits_transformer" else 4), dg.summary()
    for g in heads:
        (src,) = g.sources
        assert g.size == 4 and g.sinks[0].map == Block(16)
        assert src.positions(np.array([1])).tolist() == [p + k * 64 for k in range(3) for p in range(16, 32)]
    for seed in range(2):
        check_prune(model, plan="random", seed=seed, evaluator=False)
    check_prune(model, ratio=0.5, evaluator=False)


@pytest.mark.parametrize("name", ["digits_transformer", "tv_vit_b_16"])
def test_pruned_torch_attention_keeps_dynamic_batch(name: str) -> None:
    """The replaced runtime entries (``-1``) and rewritten head counts hold at any batch size."""
    from oracle_check import assert_close, run_ort, seeded_feeds

    from onnxprune.core.io import load_model
    from onnxprune.structured.oracle import zeroed_reference
    from onnxprune.structured.plan import make_plan

    model = load_model(MODELS / f"{name}.onnx")
    dg = analyze(model)
    plan = make_plan(model, dg, ratio=0.5)
    cut_heads = [gid for gid, keep in plan.keep.items()
                 if len(keep) < dg.groups[gid].size and any("self_att" in c.node for c in dg.groups[gid].sinks)]
    assert len(cut_heads) == (2 if name == "digits_transformer" else 4)
    pruned = apply_plan(model, plan, dg=dg)
    reference = zeroed_reference(model, dg, plan)
    for batch in (1, 5):
        feeds = {k: np.repeat(v[:1], batch, axis=0) + np.float32(0.1) * batch
                 for k, v in seeded_feeds(model, 0).items()}
        assert_close(run_ort(pruned, feeds), run_ort(reference, feeds), 1e-4, f"batch {batch}")


def test_analyze_describes_attention_groups() -> None:
    from onnxprune.core.io import load_model
    from onnxprune.structured.prune import describe_groups

    groups = describe_groups(load_model(MODELS / "digits_transformer.onnx"))["groups"]
    described = [g["attention"] for g in groups if g["attention"]]
    assert described == [{"heads": 4, "head_channels": 16}] * 2
    assert all(g["attention"] is None for g in groups if "linear1" in g["name"])  # an FFN is no attention
    gqa = describe_groups(builders.attention_block(heads=4, kv_heads=2, d=16))["groups"]
    assert [g["attention"] for g in gqa if g["attention"]] == [{"heads": 2, "head_channels": 8,  # KV groups
                                                                "query_heads_per_kv": 2}]


@pytest.mark.parametrize("allowzero", [0, 1])
def test_a_runtime_head_count_becomes_minus_one_unless_allowzero(allowzero: int) -> None:
    """The changing entry computed at run time (by ``Max``) is replaced by -1 when every other entry is a
    known dim; with ``allowzero=1`` a runtime 0 would be a literal empty dim, so it stays blocked."""
    from onnx import helper, numpy_helper

    model = builders.attention_block(heads=2, runtime_target=True, shape_op="Max")
    producers = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.op_type == "Concat" and len(node.input) == 4:  # (B, T, heads, head_dim) of a split
            name = f"{node.name}_head_dim"
            model.graph.initializer.append(numpy_helper.from_array(np.array([4], np.int64), name))
            assert producers[node.input[3]].op_type == "Max"
            node.input[3] = name
        if node.op_type == "Reshape":
            node.attribute.append(helper.make_attribute("allowzero", allowzero))
    dg = analyze(model)
    heads = [g for g in dg.groups if len(g.sources) == 3]
    if allowzero:
        assert not heads and any("computed at runtime by 'Max_" in " ".join(g.blockers) for g in dg.groups)
    else:
        assert len(heads) == 1 and heads[0].prunable
        for seed in range(2):
            check_prune(model, plan="random", seed=seed)
