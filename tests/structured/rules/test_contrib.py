"""onnxruntime's fused transformer ops (``com.microsoft``): heads of Attention, MultiHeadAttention and
GroupQueryAttention, bias activations, and the residual-stream normalizations that block.

Every model here runs in onnxruntime's CPU build (which implements these ops), with dynamic batch and
sequence axes; each cut is proven against the zeroed original (``check_prune``; onnx's reference
evaluator does not know these ops, so it is onnxruntime alone).
"""

from __future__ import annotations

import builders
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from oracle_check import check_prune, run_ort

from onnxprune.core.io import checker_view
from onnxprune.structured.analysis import analyze
from onnxprune.structured.attention import attention_heads
from onnxprune.structured.oracle import zeroed_reference
from onnxprune.structured.plan import PrunePlan, make_plan
from onnxprune.structured.surgery import apply_plan

MS = "com.microsoft"
D = 16  # hidden width


def ms(g: builders.GraphBuilder, op: str, inputs, n_out: int = 1, **attrs):
    """Append a com.microsoft node; returns its first output (or all of them)."""
    outs = [g.name(op.lower()) for _ in range(n_out)]
    g.nodes.append(helper.make_node(op, list(inputs), outs, name=g.name(op), domain=MS, **attrs))
    return outs[0] if n_out == 1 else outs


def build(g: builders.GraphBuilder, last: str, inputs=None, width: int = D) -> onnx.ModelProto:
    """A model reading ``x [batch, seq, D]`` whose output is ``last`` projected back to ``D``."""
    g.nodes.append(helper.make_node("MatMul", [last, g.weight((width, D), "out_w")], ["out"], name="out_proj"))
    return g.build(inputs or [builders.vinfo("x", ["batch", "seq", D])], [builders.vinfo("out", ["batch", "seq", D])],
                   domains=(MS,))


def attention(qkv=None, mask: bool = False, heads: int = 4) -> onnx.ModelProto:
    """x → Attention(packed weight, bias, num_heads) → output projection."""
    g = builders.GraphBuilder(0)
    q, k, v = qkv or (D, D, D)
    ins = ["x", g.weight((D, q + k + v), "qkv_w"), g.weight((q + k + v,), "qkv_b")]
    inputs = [builders.vinfo("x", ["batch", "seq", D])]
    if mask:
        ins.append("mask")
        inputs.append(builders.vinfo("mask", ["batch", "seq"], TensorProto.INT32))
    attrs = {"qkv_hidden_sizes": list(qkv)} if qkv else {}
    y = ms(g, "Attention", ins, num_heads=heads, **attrs)
    return build(g, y, inputs, width=v)


def attr_of(model: onnx.ModelProto, op: str, name: str):
    node = next(n for n in model.graph.node if n.op_type == op)
    return next(helper.get_attribute_value(a) for a in node.attribute if a.name == name)


def init_shape(model: onnx.ModelProto, prefix: str) -> list[int]:
    return next(list(t.dims) for t in model.graph.initializer if t.name.startswith(prefix))


def keep_heads(model: onnx.ModelProto, heads: list[int]) -> tuple[object, PrunePlan]:
    dg = analyze(model)
    group = next(g for g in dg.prunable_groups if any(c.op_type in ("Attention", "MultiHeadAttention")
                                                       or c.node == "out_proj" for c in g.cuts))
    return dg, PrunePlan(fingerprint=dg.fingerprint, keep={group.id: np.array(heads, np.int64)},
                         sizes={group.id: group.size}, criterion="test")


def prove(model: onnx.ModelProto, dg, plan: PrunePlan, feeds: dict) -> onnx.ModelProto:
    """The oracle on given feeds (masks, lengths and token ids need valid values, not random ones)."""
    pruned = apply_plan(model, plan, dg=dg)
    onnx.checker.check_model(checker_view(pruned, "pruned"))  # onnxruntime's default-domain norms as custom ops
    np.testing.assert_allclose(run_ort(pruned, feeds)[0], run_ort(zeroed_reference(model, dg, plan), feeds)[0],
                               atol=1e-5)
    return pruned


def test_attention_heads_are_one_channel_each_and_cut_in_q_k_v_weight_and_bias() -> None:
    model = attention()
    dg = analyze(model)
    (group,) = dg.prunable_groups
    assert group.size == 4  # four heads, never channels inside one
    _, plan = keep_heads(model, [0, 2, 3])
    _, _, pruned = check_prune(model, plan=plan, evaluator=False)
    assert attr_of(pruned, "Attention", "num_heads") == 3
    assert init_shape(pruned, "qkv_w") == [D, 36] and init_shape(pruned, "qkv_b") == [36]
    assert init_shape(pruned, "out_w") == [12, D]
    w = next(onnx.numpy_helper.to_array(t) for t in model.graph.initializer if t.name.startswith("qkv_w"))
    w_cut = next(onnx.numpy_helper.to_array(t) for t in pruned.graph.initializer if t.name.startswith("qkv_w"))
    kept = np.r_[0:4, 8:16]  # heads 0, 2, 3 of 4 channels
    np.testing.assert_array_equal(w_cut, np.concatenate([w[:, kept], w[:, D + kept], w[:, 2 * D + kept]], axis=1))
    x = np.random.default_rng(1).standard_normal((3, 7, D)).astype(np.float32)  # other batch and sequence sizes
    assert run_ort(pruned, {"x": x})[0].shape == (3, 7, D)


def test_attention_with_qkv_hidden_sizes_and_a_mask_index() -> None:
    model = attention(qkv=(16, 16, 24), mask=True)
    dg, plan = keep_heads(model, [1, 3])
    x = np.random.default_rng(0).standard_normal((2, 5, D)).astype(np.float32)
    pruned = prove(model, dg, plan, {"x": x, "mask": np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], np.int32)})
    assert attr_of(pruned, "Attention", "qkv_hidden_sizes") == [8, 8, 12]


def test_attention_ratio_prune_passes_the_oracle() -> None:
    check_prune(attention(), ratio=0.5, evaluator=False)


def test_attention_input_hidden_axis_is_a_sink() -> None:
    g = builders.GraphBuilder(0)
    h = g.op("MatMul", ["x", g.weight((D, 24), "pre_w")])
    y = ms(g, "Attention", [h, g.weight((24, 3 * D), "qkv_w"), g.weight((3 * D,), "qkv_b")], num_heads=4)
    model = build(g, y)
    dg = analyze(model)
    assert len(dg.prunable_groups) == 2, dg.summary()  # the 24 channels before, the 4 heads after
    check_prune(model, ratio=0.5, evaluator=False, min_prunable=2)


def test_attention_with_a_kv_cache_blocks_with_the_reason() -> None:
    g = builders.GraphBuilder(0)
    past = builders.vinfo("past", [2, "batch", 4, "past", 4])
    y, _ = ms(g, "Attention", ["x", g.weight((D, 3 * D), "qkv_w"), g.weight((3 * D,), "qkv_b"), "", "past"], n_out=2,
              num_heads=4)
    model = build(g, y, [builders.vinfo("x", ["batch", "seq", D]), past])
    dg = analyze(model)
    assert not dg.prunable_groups
    assert any("KV cache 'past'" in b for g in dg.groups for b in g.blockers), dg.summary()


def test_multi_head_attention_cuts_heads_of_q_k_v_projections_and_packed_bias() -> None:
    g = builders.GraphBuilder(0)
    q, k, v = (g.op("MatMul", ["x", g.weight((D, D), f"{n}_w")]) for n in "qkv")
    y = ms(g, "MultiHeadAttention", [q, k, v, g.weight((3 * D,), "qkv_b")], num_heads=4)
    model = build(g, y)
    dg, plan = keep_heads(model, [1, 2])
    _, _, pruned = check_prune(model, plan=plan, evaluator=False)
    assert attr_of(pruned, "MultiHeadAttention", "num_heads") == 2
    assert [init_shape(pruned, f"{n}_w") for n in "qkv"] == [[D, 8]] * 3 and init_shape(pruned, "qkv_b") == [24]
    check_prune(model, ratio=0.3, evaluator=False)


def gqa(heads: int = 4, kv: int = 2, d: int = 8) -> onnx.ModelProto:
    """Separate Q/K/V projections into GroupQueryAttention (no KV cache; seqlens and total length as inputs)."""
    g = builders.GraphBuilder(0)
    q = g.op("MatMul", ["x", g.weight((D, heads * d), "q_w")])
    k = g.op("MatMul", ["x", g.weight((D, kv * d), "k_w")])
    v = g.op("MatMul", ["x", g.weight((D, kv * d), "v_w")])
    y, _, _ = ms(g, "GroupQueryAttention", [q, k, v, "", "", "seqlens_k", "total_len"], n_out=3, num_heads=heads,
                 kv_num_heads=kv)
    inputs = [builders.vinfo("x", ["batch", "seq", D]), builders.vinfo("seqlens_k", ["batch"], TensorProto.INT32),
              builders.vinfo("total_len", [], TensorProto.INT32)]
    return build(g, y, inputs, width=heads * d)


def test_group_query_attention_removes_whole_kv_groups_and_rewrites_both_head_counts() -> None:
    model = gqa()
    dg = analyze(model)
    (group,) = dg.prunable_groups
    assert group.size == 2  # two KV groups of one KV head and two query heads each
    assert attention_heads(group) == {"heads": 2, "head_channels": 16}
    plan = PrunePlan(fingerprint=dg.fingerprint, keep={group.id: np.array([1], np.int64)}, sizes={group.id: 2},
                     criterion="test")
    x = np.random.default_rng(0).standard_normal((2, 5, D)).astype(np.float32)
    pruned = prove(model, dg, plan, {"x": x, "seqlens_k": np.full(2, 4, np.int32), "total_len": np.array(5, np.int32)})
    assert attr_of(pruned, "GroupQueryAttention", "num_heads") == 2
    assert attr_of(pruned, "GroupQueryAttention", "kv_num_heads") == 1
    assert init_shape(pruned, "q_w") == [D, 16] and init_shape(pruned, "k_w") == [D, 8]
    w = next(onnx.numpy_helper.to_array(t) for t in model.graph.initializer if t.name.startswith("q_w"))
    w_cut = next(onnx.numpy_helper.to_array(t) for t in pruned.graph.initializer if t.name.startswith("q_w"))
    np.testing.assert_array_equal(w_cut, w[:, 16:])  # query heads 2 and 3 belong to KV head 1
    x = np.random.default_rng(1).standard_normal((3, 9, D)).astype(np.float32)  # other batch and sequence sizes
    prove(model, dg, plan, {"x": x, "seqlens_k": np.full(3, 8, np.int32), "total_len": np.array(9, np.int32)})


def ffn(*acts) -> onnx.ModelProto:
    """x → MatMul → the given contrib activations (each with its bias where it takes one) → MatMul."""
    g = builders.GraphBuilder(0)
    h = g.op("MatMul", ["x", g.weight((D, 24), "up_w")])
    for op, bias, attrs in acts:
        h = ms(g, op, [h, g.weight((24,), f"{op}_b")] if bias else [h], **attrs)
    return build(g, h, width=24)


@pytest.mark.parametrize("acts", [
    [("BiasGelu", True, {})],
    [("FastGelu", True, {})],
    [("FastGelu", False, {})],
    [("Gelu", False, {})],
    [("QuickGelu", False, {"alpha": 1.702})],
    [("BiasGelu", True, {}), ("QuickGelu", False, {}), ("FastGelu", True, {})],
], ids=["BiasGelu", "FastGelu-bias", "FastGelu", "Gelu", "QuickGelu", "chain"])
def test_fused_activations_pass_channels_and_slice_their_bias(acts) -> None:
    model = ffn(*acts)
    dg = analyze(model)
    (group,) = dg.prunable_groups
    biased = {op for op, bias, _ in acts if bias}
    assert {c.op_type for c in group.cuts if c.role == "param"} == biased
    check_prune(model, ratio=0.3, evaluator=False)
    check_prune(model, plan="random", evaluator=False)


def test_bias_add_couples_input_bias_and_skip() -> None:
    # onnxruntime's CPU build has no BiasAdd kernel: analysis only
    g = builders.GraphBuilder(0)
    h = g.op("MatMul", ["x", g.weight((D, 24), "up_w")])
    s = g.op("MatMul", ["x", g.weight((D, 24), "skip_w")])
    y = ms(g, "BiasAdd", [h, g.weight((24,), "bias"), s])
    model = build(g, y, width=24)
    dg = analyze(model)
    (group,) = dg.prunable_groups
    assert {c.tensor.split("_")[0] for c in group.sources} == {"up", "skip"}
    assert any(c.role == "param" and c.op_type == "BiasAdd" for c in group.cuts)


@pytest.mark.parametrize("op", ["SkipLayerNormalization", "SkipSimplifiedLayerNormalization"])
def test_skip_layer_norms_block_the_stream_with_the_reason(op: str) -> None:
    g = builders.GraphBuilder(0)
    h = g.op("MatMul", ["x", g.weight((D, D), "w")])
    ins = [h, "x", g.weight((D,), "gamma", 0.5)] + ([g.weight((D,), "beta")] if op == "SkipLayerNormalization" else [])
    y = ms(g, op, ins, epsilon=1e-5)
    model = build(g, y)
    dg = analyze(model)
    assert any(f"({op}) normalizes over the residual stream" in b for g in dg.groups for b in g.blockers), \
        dg.summary()
    assert run_ort(model, {"x": np.ones((2, 3, D), np.float32)})[0].shape == (2, 3, D)


@pytest.mark.parametrize("op", ["SimplifiedLayerNormalization", "LayerNormalization"])
def test_default_domain_and_contrib_layer_norms_block(op: str) -> None:
    g = builders.GraphBuilder(0)
    h = g.op("MatMul", ["x", g.weight((D, D), "w")])
    y = g.name("norm")
    g.nodes.append(helper.make_node(op, [h, g.weight((D,), "gamma", 0.5)], [y], name="norm", domain=MS))
    dg = analyze(build(g, y))
    assert any("normalizes over the residual stream" in b for g in dg.groups for b in g.blockers), dg.summary()


def test_embed_layer_normalization_blocks_and_sizes_its_output() -> None:
    g = builders.GraphBuilder(0)
    y, _ = ms(g, "EmbedLayerNormalization", ["ids", "", g.weight((50, D), "word"), g.weight((32, D), "pos"), "",
                                             g.weight((D,), "gamma", 0.5), g.weight((D,), "beta")], n_out=2,
              epsilon=1e-5)
    h = g.op("MatMul", [y, g.weight((D, 24), "up_w")])
    h = ms(g, "BiasGelu", [h, g.weight((24,), "b")])
    model = build(g, h, [builders.vinfo("ids", ["batch", "seq"], TensorProto.INT32)], width=24)
    dg = analyze(model)
    assert len(dg.prunable_groups) == 1, dg.summary()  # the FFN after it: shapes flow past the fused op
    assert dg.shapes[y][-1] == D
    plan = make_plan(model, dg, ratio=0.5)
    prove(model, dg, plan, {"ids": np.array([[1, 7, 49], [0, 3, 5]], np.int32)})


def test_default_domain_rms_norm_of_onnxruntime_loads_analyzes_and_blocks(tmp_path) -> None:
    # onnxruntime's optimizer writes it in the default domain, where onnx's checker knows no such op
    op = "SimplifiedLayerNormalization"
    from onnxprune.core.io import load_model

    g = builders.GraphBuilder(0)
    h = g.op("MatMul", ["x", g.weight((D, D), "w")])
    g.nodes.append(helper.make_node(op, [h, g.weight((D,), "gamma", 0.5)], ["norm"], name="norm", epsilon=1e-5))
    g.nodes.append(helper.make_node("MatMul", ["norm", g.weight((D, 24), "up_w")], ["up"], name="up"))
    g.nodes.append(helper.make_node("Relu", ["up"], ["act"], name="act"))
    g.nodes.append(helper.make_node("MatMul", ["act", g.weight((24, D), "down_w")], ["out"], name="down"))
    model = builders.make_model(g.nodes, [builders.vinfo("x", ["batch", "seq", D])],
                                [builders.vinfo("out", ["batch", "seq", D])], g.inits, check=False)
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    loaded = load_model(path)  # the checker sees them as custom ops
    dg = analyze(loaded)
    assert any(f"({op}) normalizes over the residual stream" in b for g in dg.groups for b in g.blockers), \
        dg.summary()
    assert len(dg.prunable_groups) == 1  # shapes flow past the norm: the 24 neurons after it
    x = np.random.default_rng(0).standard_normal((2, 3, D)).astype(np.float32)
    pruned = prove(loaded, dg, make_plan(loaded, dg, ratio=0.5), {"x": x})
    assert init_shape(pruned, "up_w") == [D, 12]
