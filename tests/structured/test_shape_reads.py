"""Run-time shape reads that follow a cut (``onnxprune.structured.shape_reads``), on small graphs built like
the Hugging Face exports that needed them:

* GPT-2's Conv1D: ``x.view(-1, x.size(-1))`` (``Shape -> Slice[-1:] -> Squeeze -> Unsqueeze -> Concat``) before
  ``Gemm``, then ``view(x.size()[:-1] + (nf,))``;
* the dynamo exporter's ``Shape -> Slice`` pieces that flatten K to ``[-1, S, D]`` and back to ``[B, H, D, S]``;
* Llama's ``repeat_kv`` as the legacy exporter writes it: ``Expand`` to ``Where(Equal(t, -1), ones, t)`` with
  ``t`` read from ``hidden_states.shape``, then ``Reshape`` to ``num_kv_heads * n_rep``.

Every cut is proven against the oracle (pruned == original with the dropped channels' sink rows zeroed) in
onnxruntime at other batch and sequence sizes than the analysed ones, and in the reference evaluator; uses of
a read that cannot follow the cut stay blocked with their reason.
"""

from __future__ import annotations

import re

import numpy as np
import onnx
import pytest
from attention_builders import conv1d as _conv1d
from builders import GraphBuilder, vinfo
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from oracle_check import assert_close, random_plan, run_ort

from onnxprune.core.stats import count_params
from onnxprune.structured.analysis import analyze
from onnxprune.structured.attention import attention_heads
from onnxprune.structured.oracle import zeroed_reference
from onnxprune.structured.surgery import apply_plan

T = 5  # the sequence length the analysis sees
INT64_MAX = np.iinfo(np.int64).max


def _i64(*values: int) -> np.ndarray:
    return np.array(values, np.int64)


def _dim(g: GraphBuilder, x: str, i: int) -> str:
    """``[x.size(i)]`` as torch's legacy exporter writes it: Shape -> Gather -> Unsqueeze."""
    return g.op("Unsqueeze", [g.op("Gather", [g.op("Shape", [x]), g.const(np.array(i, np.int64))], axis=0),
                              g.const(_i64(0))])


def gpt2_mlp(seed: int = 0, d: int = 8, hidden: int = 16, *, read: str = "", how: str = "") -> onnx.ModelProto:
    """``x + c_proj(relu(c_fc(x)))`` with GPT-2's Conv1D layers; ``read="x"`` makes c_proj's flatten read the
    stream's width instead of its own input's (the same size when ``d == hidden``)."""
    g = GraphBuilder(seed)
    h = g.op("Relu", [_conv1d(g, "x", d, hidden)])
    out = _conv1d(g, h, hidden, d, read=read, how=how)
    g.nodes.append(helper.make_node("Add", ["x", out], ["out"], name="residual"))
    return g.build([vinfo("x", ["B", "T", d])], [vinfo("out", ["B", "T", d])])


def attention(seed: int = 0, d: int = 16, heads: int = 4, kv_heads: int | None = None, *, key: str = "transpose",
              repeat: str = "where-expand", n_rep_entry: str = "const", merge: str = "mul",
              out_proj: str = "matmul") -> onnx.ModelProto:
    """Self-attention over ``x [B, T, d]`` with a residual.

    ``key="dynamo"`` turns K ``[B, H, S, D]`` into Kᵀ as the dynamo exporter decomposes attention: ``Shape`` ->
    ``Slice`` pieces, ``Reshape(K, [-1, S, D])`` -> ``Transpose`` -> ``Reshape(., Concat(Shape[:-2], [D], [S]))``.
    ``kv_heads`` < ``heads`` repeats each K/V head as Llama's ``repeat_kv`` exports it (legacy exporter):
    ``Expand`` to ``Where(Equal(t, -1), ones, t)``, ``t = (b, kv, n_rep, slen, hd)`` read from the shape, then
    ``Reshape`` to ``(b, kv * n_rep, slen, hd)``. ``n_rep_entry="kv"`` reads ``n_rep`` from the KV count instead of
    a constant (equal when ``n_rep == kv``; wrong after a cut), ``merge="div"`` writes ``kv * n_rep`` as
    ``(kv * 2 * n_rep) / 2`` (an exact division onnxprune follows), ``merge="sub"`` as ``2 * kv * n_rep - kv *
    n_rep`` (arithmetic it does not follow). ``out_proj="conv1d"`` is GPT-2's output
    projection: a Conv1D whose flatten reads the merged heads' width at run time.
    """
    g = GraphBuilder(seed)
    hd = d // heads
    kv = kv_heads or heads
    n_rep = heads // kv

    def split(width: int, n: int) -> str:  # x W + b -> [B, T, n, hd] -> [B, n, T, hd]
        y = g.op("Add", [g.op("MatMul", ["x", g.weight((d, width))]), g.weight((width,), "b")])
        target = g.op("Concat", [_dim(g, y, 0), _dim(g, y, 1), g.const(_i64(n, hd))], axis=0)
        return g.op("Transpose", [g.op("Reshape", [y, target])], perm=[0, 2, 1, 3])

    def repeat_kv(y: str) -> str:
        if n_rep == 1:
            return y
        b, n, s, e = (g.op("Gather", [g.op("Shape", [y]), g.const(np.array(i, np.int64))], axis=0) for i in range(4))
        unsq = [g.op("Unsqueeze", [v, g.const(_i64(0))]) for v in (b, n, s, e)]
        rep = unsq[1] if n_rep_entry == "kv" else g.const(_i64(n_rep))
        t = g.op("Reshape", [g.op("Concat", [unsq[0], unsq[1], rep, unsq[2], unsq[3]], axis=0), g.const(_i64(-1))])
        ones = g.op("ConstantOfShape", [g.op("Shape", [t])], value=numpy_helper.from_array(_i64(1)))
        target = g.op("Where", [g.op("Equal", [t, g.op("Mul", [ones, g.const(np.array(-1, np.int64))])]), ones, t])
        r = g.op("Expand", [g.op("Unsqueeze", [y, g.const(_i64(2))]), target])
        heads_now = g.op("Mul", [n, g.const(np.array(n_rep, np.int64))])
        if merge == "div":
            heads_now = g.op("Div", [g.op("Mul", [heads_now, g.const(np.array(2, np.int64))]),
                                     g.const(np.array(2, np.int64))])
        elif merge == "sub":
            heads_now = g.op("Sub", [g.op("Mul", [heads_now, g.const(np.array(2, np.int64))]), heads_now])
        merged = g.op("Concat", [unsq[0], g.op("Unsqueeze", [heads_now, g.const(_i64(0))]), unsq[2], unsq[3]], axis=0)
        return g.op("Reshape", [r, merged])

    def transposed(k: str) -> str:  # [B, H, S, D] -> [B, H, D, S]
        if key != "dynamo":
            return g.op("Transpose", [k], perm=[0, 1, 3, 2])
        shape = g.op("Shape", [k], start=0)
        last = g.op("Slice", [shape, g.const(_i64(-1)), g.const(_i64(INT64_MAX))])
        seq = g.op("Slice", [shape, g.const(_i64(-2)), g.const(_i64(-1))])
        lead = g.op("Slice", [shape, g.const(_i64(-INT64_MAX - 1)), g.const(_i64(-2))])
        flat = g.op("Reshape", [k, g.op("Concat", [g.const(_i64(-1)), seq, last], axis=0)])
        flat_t = g.op("Transpose", [flat], perm=[0, 2, 1])
        return g.op("Reshape", [flat_t, g.op("Concat", [lead, last, seq], axis=0)])

    q = split(d, heads)
    k = transposed(repeat_kv(split(kv * hd, kv)))
    v = repeat_kv(split(kv * hd, kv))
    s = g.op("Mul", [g.op("MatMul", [q, k]), g.const(np.array(1.0 / np.sqrt(hd), np.float32))])
    c = g.op("Transpose", [g.op("MatMul", [g.op("Softmax", [s], axis=-1), v])], perm=[0, 2, 1, 3])
    merged = g.op("Reshape", [c, g.op("Concat", [_dim(g, c, 0), _dim(g, c, 1), g.const(_i64(d))], axis=0)])
    if out_proj == "conv1d":
        out = _conv1d(g, merged, d, d)
    else:
        out = g.op("Add", [g.op("MatMul", [merged, g.weight((d, d))]), g.weight((d,), "b")])
    g.nodes.append(helper.make_node("Add", ["x", out], ["out"], name="residual"))
    return g.build([vinfo("x", ["B", "T", d])], [vinfo("out", ["B", "T", d])])


def _analyze(model: onnx.ModelProto):
    return analyze(model, dims={"B": 1, "T": T})


def prove(model: onnx.ModelProto, cuts: int = 3) -> None:
    """``cuts`` random cuts of the prunable groups equal the zeroed original at the analysed sizes and at other
    batch and sequence sizes (dynamic axes kept), in onnxruntime; the reference evaluator at one size; the
    parameter count drops by exactly the predicted amount."""
    dg = _analyze(model)
    d = model.graph.input[0].type.tensor_type.shape.dim[2].dim_value
    proven = 0
    for seed in range(4 * cuts):
        plan = random_plan(model, dg, seed)
        if proven == cuts or all(len(k) == dg.groups[gid].size for gid, k in plan.keep.items()):
            continue  # enough, or this plan cuts nothing
        proven += 1
        pruned = apply_plan(model, plan, dg=dg)
        onnx.checker.check_model(pruned, full_check=True)
        reference = zeroed_reference(model, dg, plan)
        assert count_params(model) - count_params(pruned) == dg.params_removed(plan.keep)
        r = np.random.default_rng(seed)
        for batch, seq in ((1, T), (3, 7), (2, 2)):
            feeds = {"x": r.standard_normal((batch, seq, d)).astype(np.float32)}
            got, want = run_ort(pruned, feeds), run_ort(reference, feeds)
            assert got[0].shape == (batch, seq, d)
            assert_close(got, want, 1e-4, f"batch {batch}, sequence {seq}")
        feeds = {"x": r.standard_normal((2, 3, d)).astype(np.float32)}
        assert_close(ReferenceEvaluator(pruned).run(None, feeds), run_ort(reference, feeds), 1e-3, "evaluator")
    assert proven == cuts, f"only {proven} random plans cut anything"


def _group(dg, node_prefix: str):
    found = [g for g in dg.groups if g.sources and any(c.node.startswith(node_prefix) for c in g.sources)]
    assert found, dg.summary()
    return found[0]


# -- GPT-2 Conv1D ---------------------------------------------------------------------------------------------
def test_gpt2_conv1d_flatten_reads_the_new_width() -> None:
    """c_proj's ``x.view(-1, x.size(-1))`` reads the FFN width at run time: it follows the cut, so the FFN
    neurons are prunable (c_fc's ``(nf,)`` constant is rewritten) and exact at any batch and length."""
    model = gpt2_mlp()
    dg = _analyze(model)
    ffn = [g for g in dg.groups if g.size == 16]
    assert len(ffn) == 1 and ffn[0].prunable, dg.summary()
    prove(model)


def test_gpt2_conv1d_flatten_through_unfollowed_arithmetic_is_blocked() -> None:
    """The same read through ``2 * size - size``: equal in value, but a Sub of sizes is arithmetic onnxprune
    does not follow, so the FFN stays blocked and the reason names the Sub."""
    dg = _analyze(gpt2_mlp(how="sub"))
    (ffn,) = [g for g in dg.groups if g.size == 16]
    assert not ffn.prunable
    assert any(re.search(r"reports the size of cut axis 2 of 'relu_\d+' .*computed from it by 'Sub_\d+' \(Sub\)", b)
               for b in ffn.blockers), ffn.blockers


def test_gpt2_conv1d_flatten_through_an_exact_division_follows() -> None:
    """The same read through ``(2 * size) / 2``: a Div by a positive constant that divides the read in every
    cut is the size itself, so the FFN is prunable and exact at any batch and length."""
    model = gpt2_mlp(how="div")
    (ffn,) = [g for g in _analyze(model).groups if g.size == 16]
    assert ffn.prunable, ffn.blockers
    prove(model)


def test_a_read_of_another_tensor_of_the_same_width_does_not_follow() -> None:
    """c_proj flattens its input with the *stream's* width (8 == the FFN width here): after a cut the stream
    stays 8 wide, so the entry would be wrong; the FFN group is blocked with the reason."""
    dg = _analyze(gpt2_mlp(d=8, hidden=8, read="x"))
    ffn = [g for g in dg.groups if g.sources and "Gemm" in g.sources[0].op_type and g.sources[0].tensor.startswith("w")]
    hidden = [g for g in ffn if not any("residual" in n for n in g.nodes)]
    assert hidden and not hidden[0].prunable, dg.summary()
    assert any(re.search(r"at run time to the size of axis 2 of 'x', which the cut does not change in step", b)
               for b in hidden[0].blockers), hidden[0].blockers


def test_gpt2_conv1d_output_projection_reads_the_remaining_heads() -> None:
    """GPT-2's c_proj flattens the merged heads with ``view(-1, x.size(-1))``: after a head cut it reads the
    remaining heads' width; heads (with Q, K, V and c_proj's rows) are one prunable group, exact."""
    model = attention(out_proj="conv1d")
    dg = _analyze(model)
    heads = [g for g in dg.prunable_groups if g.size == 4]
    assert len(heads) == 1 and [c.op_type for c in heads[0].sinks] == ["Gemm"], dg.summary()
    prove(model)


# -- dynamo Shape -> Slice --------------------------------------------------------------------------------------
def test_dynamo_key_transpose_through_shape_slices_keeps_heads_prunable() -> None:
    """Kᵀ built from ``Shape -> Slice`` pieces of the head-split key: the ``[B, H]`` piece reads the head axis
    and lands on the head axis again; heads are one group with Q, K, V and the output rows, exact."""
    model = attention(key="dynamo")
    dg = _analyze(model)
    heads = [g for g in dg.prunable_groups if g.size == 4]
    assert len(heads) == 1 and len(heads[0].sources) == 3, dg.summary()
    prove(model)


# -- Llama repeat_kv (Where-Expand) -----------------------------------------------------------------------------
@pytest.mark.parametrize(("heads", "kv_heads", "d"), [(4, 2, 16), (8, 2, 32), (6, 3, 24)])
@pytest.mark.parametrize("key", ["transpose", "dynamo"])
def test_where_expand_repeat_kv_cuts_whole_kv_groups(heads: int, kv_heads: int, d: int, key: str) -> None:
    """K/V heads repeated by ``Expand`` to a ``Where``-wrapped target read from the shape: a root is a KV head
    with all its query heads (K/V lose ``hd`` columns, Q ``n_rep * hd``), so ``n_rep`` still divides after
    any cut; exact at any batch and length."""
    model = attention(d=d, heads=heads, kv_heads=kv_heads, key=key)
    dg = _analyze(model)
    hd, n_rep = d // heads, heads // kv_heads
    (g,) = [g for g in dg.prunable_groups if g.size == kv_heads]
    assert sorted(c.positions(np.array([0])).size for c in g.sources) == [hd, hd, n_rep * hd]
    assert [c.positions(np.array([0])).size for c in g.sinks] == [n_rep * hd]
    assert attention_heads(g) == {"heads": kv_heads, "head_channels": n_rep * hd, "query_heads_per_kv": n_rep}
    prove(model)


def test_analyze_says_kv_groups_are_cut_whole(tmp_path, capsys) -> None:
    from onnxprune.cli.main import main

    path = tmp_path / "gqa.onnx"
    onnx.save(attention(heads=4, kv_heads=2), path)
    assert main(["analyze", str(path), "--dim", "T=5"]) == 0
    assert "(attention: 2 KV heads with 2 query heads each, 8 channels; cut as whole KV groups)" in \
        capsys.readouterr().out


def test_a_kv_count_read_as_the_repeat_factor_is_blocked() -> None:
    """``n_rep`` read from the KV head count (2 == 2 before the cut): after removing a KV group the expand would
    repeat each head once, so the read lands on an axis that does not shrink with it and the heads stay
    blocked, the reason naming the Expand."""
    dg = _analyze(attention(heads=4, kv_heads=2, n_rep_entry="kv"))
    q = _group(dg, "MatMul")
    assert not q.prunable
    assert any(re.search(r"'Expand_\d+' \(Expand\) sets axis 2 of 'expand_\d+' at run time to the size of axis 1", b)
               for b in q.blockers), q.blockers


def test_a_kv_count_through_unfollowed_arithmetic_is_blocked() -> None:
    """``kv * n_rep`` written as ``2 * kv * n_rep - kv * n_rep``: the Sub is not followed, so the heads stay
    blocked."""
    dg = _analyze(attention(heads=4, kv_heads=2, merge="sub"))
    q = _group(dg, "MatMul")
    assert not q.prunable
    assert any("(Sub)" in b for b in q.blockers), q.blockers


def test_a_kv_count_through_an_exact_division_follows() -> None:
    """``kv * n_rep`` written as ``(kv * 2 * n_rep) / 2``: an exact division of the read, so whole KV groups
    stay prunable and exact."""
    model = attention(heads=4, kv_heads=2, merge="div")
    assert _group(_analyze(model), "MatMul").prunable
    prove(model)


# -- the symbolic evaluation, one op at a time ----------------------------------------------------------------------
def _evaluated(build) -> object:
    """Entries of ``build(g, size)``'s result, where ``size`` is ``[x.size(2)]`` of ``x [B, T, 8]``."""
    from onnxprune.core.ir import GraphIndex
    from onnxprune.core.shapefold import infer_shapes
    from onnxprune.structured.rules.base import RuleContext
    from onnxprune.structured.shape_reads import evaluate

    g = GraphBuilder(0)
    shape = g.op("Shape", ["x"])
    out = build(g, shape)  # left dangling: only its value is read
    g.nodes.append(helper.make_node("Identity", ["x"], ["y"], name="y"))
    model = g.build([vinfo("x", ["B", "T", 8])], [vinfo("y", ["B", "T", 8])])
    return evaluate(out, RuleContext(GraphIndex(model), infer_shapes(model, {"B": 1, "T": T})))


def _c(g: GraphBuilder, *values: int) -> str:
    return g.const(_i64(*values))


@pytest.mark.parametrize(("build", "want"), [
    pytest.param(lambda g, s: g.op("Gather", [s, g.const(np.array(-1, np.int64))], axis=0), "S2", id="gather-negative"),
    pytest.param(lambda g, s: g.op("Slice", [s, _c(g, -1), _c(g, -4), _c(g, 0), _c(g, -1)]), "S2 S1 S0",
                 id="slice-reversed"),
    pytest.param(lambda g, s: g.op("Mul", [s, _c(g, 3)]), "S0*3 S1*3 S2*3", id="mul-positive"),
    pytest.param(lambda g, s: g.op("Mul", [s, _c(g, -1)]), "M M M", id="mul-negative"),
    pytest.param(lambda g, s: g.op("Mul", [s, s]), "M M M", id="mul-of-sizes"),
    pytest.param(lambda g, s: g.op("Add", [s, _c(g, 0)]), "M M M", id="add"),
    pytest.param(lambda g, s: g.op("Div", [s, _c(g, 2)]), "S0/2 S1/2 S2/2", id="div-positive"),
    pytest.param(lambda g, s: g.op("Div", [g.op("Mul", [s, _c(g, 3)]), _c(g, 2)]), "S0*3/2 S1*3/2 S2*3/2",
                 id="mul-then-div"),
    pytest.param(lambda g, s: g.op("Div", [g.op("Div", [s, _c(g, 2)]), _c(g, 3)]), "S0/6 S1/6 S2/6", id="div-twice"),
    pytest.param(lambda g, s: g.op("Mul", [g.op("Div", [s, _c(g, 4)]), _c(g, 2)]), "M M M", id="div-then-mul"),
    pytest.param(lambda g, s: g.op("Div", [s, _c(g, -2)]), "M M M", id="div-negative"),
    pytest.param(lambda g, s: g.op("Div", [s, s]), "M M M", id="div-by-sizes"),
    pytest.param(lambda g, s: g.op("Div", [_c(g, 7), _c(g, -2)]), "-3", id="div-constants"),
    pytest.param(lambda g, s: g.op("Cast", [s], to=onnx.TensorProto.INT8), "M M M", id="cast-int8"),
    pytest.param(lambda g, s: g.op("Cast", [g.op("Cast", [s], to=onnx.TensorProto.FLOAT)],
                                   to=onnx.TensorProto.INT64), "S0 S1 S2", id="cast-float-and-back"),
    pytest.param(lambda g, s: g.op("Equal", [s, _c(g, -1)]), "0 0 0", id="equal-negative"),
    pytest.param(lambda g, s: g.op("Equal", [s, _c(g, 8)]), "M M M", id="equal-nonnegative"),
    pytest.param(lambda g, s: g.op("Where", [g.op("Equal", [s, _c(g, 8)]), _c(g, 1), s]), "M M M",
                 id="where-unknown-condition"),
    pytest.param(lambda g, s: g.op("Where", [g.op("Equal", [s, _c(g, -1)]), _c(g, 1), s]), "S0 S1 S2",
                 id="where-known-condition"),
    pytest.param(lambda g, s: g.op("Concat", [_c(g, -1), g.op("Slice", [s, _c(g, 2), _c(g, 3)])], axis=0), "-1 S2",
                 id="concat"),
])
def test_symbolic_shape_values(build, want: str) -> None:
    """``S<a>[*k][/d]``: k times the size of axis a of x (divided by d); ``M``: arithmetic onnxprune does not
    follow."""
    from onnxprune.structured.shape_reads import Mixed, Size

    def text(e) -> str:
        if isinstance(e, Size):
            return f"S{e.axis}" + (f"*{e.scale}" if e.scale != 1 else "") + (f"/{e.divisor}" if e.divisor != 1 else "")
        return "M" if isinstance(e, Mixed) else str(e)

    value = _evaluated(build)
    assert value is not None and " ".join(text(e) for e in value) == want
