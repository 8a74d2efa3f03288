"""Small attention graphs in the shapes timm and the dynamo exporter write, built with onnx.helper.

Each mimics one pattern of a real export (see the tests that use them): a packed QKV projection split into
``(parts, heads, head_dim)`` by one Reshape and taken apart by Split, Gather or Slice; one reshape target
shared by the heads of several layers; a Swin window attention with a per-head relative position bias and a
shifted-window mask.
"""

from __future__ import annotations

import numpy as np
import onnx
from builders import GraphBuilder, vinfo


def _i64(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def _dim(g: GraphBuilder, x: str, i: int) -> str:
    """``Unsqueeze(Gather(Shape(x), i))``: a runtime dim as a 1-element target piece."""
    gathered = g.op("Gather", [g.op("Shape", [x]), g.const(np.array(i, np.int64))], axis=0)
    return g.op("Unsqueeze", [gathered, g.const(_i64(0))])


def _unbind(g: GraphBuilder, packed: str, how: str) -> list[str]:
    """q, k, v from axis 0 of ``packed`` (``[3, B, H, T, D]``), as torch's ``unbind(0)`` is exported."""
    if how == "gather":
        return [g.op("Gather", [packed, g.const(np.array(k, np.int64))], axis=0) for k in range(3)]
    if how == "split":
        parts = g.op("Split", [packed, g.const(_i64(1, 1, 1))], n_out=3, axis=0)
    elif how == "slice":
        parts = [g.op("Slice", [packed, g.const(_i64(k)), g.const(_i64(k + 1)), g.const(_i64(0))]) for k in range(3)]
    else:
        raise ValueError(how)
    return [g.op("Squeeze", [p, g.const(_i64(0))]) for p in parts]


def packed_attention(g: GraphBuilder, x: str, *, d: int, heads: int, t: int, unbind: str = "split",
                     order: str = "phd", runtime_target: bool = True, parts: str = "select",
                     bias_table: str = "", window_mask: int = 0) -> str:
    """One timm attention block on ``x [B, T, d]``; returns ``x + proj(attention)``.

    ``qkv(x).reshape(B, T, 3, H, D).permute(2, 0, 3, 1, 4)`` then ``unbind(0)`` (``order="hpd"``: Megatron's
    ``reshape(B, T, H, 3, D)`` permuted so the parts lead). ``runtime_target`` builds the split target as the
    legacy exporter does (``Concat(B, T, 3, H, D)`` from ``Shape``), else as the dynamo exporter does (a
    constant ``[-1, T, 3, H, D]``). ``parts="sum"`` adds the parts instead of selecting them (q = k = v = their
    sum): not a packed projection. ``bias_table="gather"`` adds Swin's relative position bias
    ``table[index].view(T, T, H).permute(2, 0, 1)`` (table ``[L, H]`` and index constant), ``"folded"`` the
    same as one constant ``[1, H, T, T]`` (what constant folding leaves). ``window_mask=nW`` adds the shifted
    window mask: ``attn.view(-1, nW, H, T, T) + mask[1, nW, 1, T, T]`` and back to ``[-1, H, T, T]``.
    """
    hd = d // heads
    qkv = g.op("Add", [g.op("MatMul", [x, g.weight((d, 3 * d))]), g.weight((3 * d,), "b")])
    split = [3, heads, hd] if order == "phd" else [heads, 3, hd]
    if runtime_target:
        target = g.op("Concat", [_dim(g, x, 0), _dim(g, x, 1), g.const(_i64(*split))], axis=0)
    else:
        target = g.const(_i64(-1, t, *split))
    perm = [2, 0, 3, 1, 4] if order == "phd" else [3, 0, 2, 1, 4]
    packed = g.op("Transpose", [g.op("Reshape", [qkv, target])], perm=perm)
    if parts == "sum":
        q = k = v = g.op("ReduceSum", [packed, g.const(_i64(0))], keepdims=0)
    else:
        q, k, v = _unbind(g, packed, unbind)
    q = g.op("Mul", [q, g.const(np.array(1.0 / np.sqrt(hd), np.float32))])
    s = g.op("MatMul", [q, g.op("Transpose", [k], perm=[0, 1, 3, 2])])
    if bias_table == "gather":
        table = g.weight((2 * t - 1, heads), "rel_table")
        index = g.const(g.r.integers(0, 2 * t - 1, t * t).astype(np.int64), "rel_index")
        bias = g.op("Reshape", [g.op("Gather", [table, index], axis=0), g.const(_i64(t, t, -1))])
        s = g.op("Add", [s, g.op("Unsqueeze", [g.op("Transpose", [bias], perm=[2, 0, 1]), g.const(_i64(0))])])
    elif bias_table == "folded":
        s = g.op("Add", [s, g.weight((1, heads, t, t), "rel_bias")])
    if window_mask:
        mask = np.where(g.r.random((1, window_mask, 1, t, t)) < 0.3, -100.0, 0.0).astype(np.float32)
        s = g.op("Reshape", [s, g.const(_i64(-1, window_mask, heads, t, t))])
        s = g.op("Reshape", [g.op("Add", [s, g.const(mask)]), g.const(_i64(-1, heads, t, t))])
    c = g.op("Transpose", [g.op("MatMul", [g.op("Softmax", [s], axis=-1), v])], perm=[0, 2, 1, 3])
    if runtime_target:
        merged = g.op("Reshape", [c, g.op("Concat", [_dim(g, x, 0), _dim(g, x, 1), g.const(_i64(d))], axis=0)])
    else:
        merged = g.op("Reshape", [c, g.const(_i64(-1, t, d))])
    out = g.op("Add", [g.op("MatMul", [merged, g.weight((d, d))]), g.weight((d,), "b")])
    return g.op("Add", [x, out])


def timm_attention(seed: int = 0, d: int = 12, heads: int = 3, t: int = 5, *, batch: object = "B",
                   **kw: object) -> onnx.ModelProto:
    """One :func:`packed_attention` block whose stream is the graph input and output (only heads prunable)."""
    g = GraphBuilder(seed)
    y = packed_attention(g, "x", d=d, heads=heads, t=t, **kw)  # type: ignore[arg-type]
    g.nodes.append(onnx.helper.make_node("Identity", [y], ["out"], name="out"))
    seq: object = t if kw.get("bias_table") or kw.get("window_mask") or not kw.get("runtime_target", True) else "T"
    return g.build([vinfo("x", [batch, seq, d])], [vinfo("out", [batch, seq, d])])


def shared_target_layers(seed: int = 0, d: int = 8, heads: int = 2, layers: int = 2,
                         head_count: str = "constant") -> onnx.ModelProto:
    """``layers`` BERT-style attention blocks over ``x [B, T, d]`` whose six head splits read one target and
    whose merges read another, as the dynamo exporter de-duplicates them: ``Concat(Shape(x)[0:1],
    Shape(x)[1:2], [heads], [head_dim])`` and ``Concat(.., .., [d])``. ``head_count="inferred"`` writes the
    head count as ``-1`` (what the dynamo BERT export does), so no reader needs a rewrite; ``"unsqueeze"`` as
    ``Unsqueeze(heads)`` of a scalar, so a version copies that node too."""
    g = GraphBuilder(seed)
    hd = d // heads
    shape = g.op("Shape", ["x"])
    lead = [g.op("Slice", [shape, g.const(_i64(k)), g.const(_i64(k + 1))]) for k in (0, 1)]
    if head_count == "unsqueeze":
        count = g.op("Unsqueeze", [g.const(np.array(heads, np.int64)), g.const(_i64(0))])
    else:
        count = g.const(_i64(heads if head_count == "constant" else -1))
    split = g.op("Concat", [*lead, count, g.const(_i64(hd))], axis=0)
    merge = g.op("Concat", [*lead, g.const(_i64(d))], axis=0)
    x = "x"
    for _ in range(layers):
        def proj(src: str) -> str:
            return g.op("Add", [g.op("MatMul", [src, g.weight((d, d))]), g.weight((d,), "b")])

        q, k, v = (g.op("Transpose", [g.op("Reshape", [proj(x), split])], perm=perm)
                   for perm in ([0, 2, 1, 3], [0, 2, 3, 1], [0, 2, 1, 3]))
        s = g.op("Mul", [g.op("MatMul", [q, k]), g.const(np.array(1.0 / np.sqrt(hd), np.float32))])
        c = g.op("Transpose", [g.op("MatMul", [g.op("Softmax", [s], axis=-1), v])], perm=[0, 2, 1, 3])
        x = g.op("Add", [x, proj(g.op("Reshape", [c, merge]))])
    g.nodes.append(onnx.helper.make_node("Identity", [x], ["out"], name="out"))
    return g.build([vinfo("x", ["B", "T", d])], [vinfo("out", ["B", "T", d])])


def _last(g: GraphBuilder, x: str, how: str = "") -> str:
    """``[x.size(-1)]`` as GPT-2's Conv1D exports it: Shape -> Slice[-1:] -> Squeeze -> Unsqueeze; ``how``
    changes the arithmetic (``"div"``: ``(2 * size) / 2``, an exact division onnxprune follows; ``"sub"``:
    ``2 * size - size``, arithmetic it does not follow)."""
    size = g.op("Squeeze", [g.op("Slice", [g.op("Shape", [x]), g.const(_i64(-1)), g.const(_i64(np.iinfo(np.int64).max)),
                                           g.const(_i64(0))]), g.const(_i64(0))])
    if how == "div":
        size = g.op("Div", [g.op("Mul", [size, g.const(np.array(2, np.int64))]), g.const(np.array(2, np.int64))])
    elif how == "sub":
        size = g.op("Sub", [g.op("Mul", [size, g.const(np.array(2, np.int64))]), size])
    return g.op("Unsqueeze", [size, g.const(_i64(0))])


def conv1d(g: GraphBuilder, x: str, nx: int, nf: int, *, read: str = "", how: str = "") -> str:
    """Hugging Face's Conv1D: ``size_out = x.size()[:-1] + (nf,)``; ``x.view(-1, x.size(-1))`` -> Gemm (addmm)
    -> ``view(size_out)``. ``read`` names the tensor whose last size the flatten reads (default ``x``)."""
    size_out = g.op("Concat", [_dim(g, x, 0), _dim(g, x, 1), g.const(_i64(nf))], axis=0)
    flat = g.op("Reshape", [x, g.op("Concat", [g.const(_i64(-1)), _last(g, read or x, how)], axis=0)])
    y = g.op("Gemm", [flat, g.weight((nx, nf)), g.weight((nf,), "b")])
    return g.op("Reshape", [y, size_out])


def dynamo_key_transpose(seed: int = 0, d: int = 8, heads: int = 2, t: int = 5) -> onnx.ModelProto:
    """One attention block over ``x [B, T, d]`` as the dynamo exporter writes HF ViT/Whisper: head splits by a
    constant ``[-1, T, H, D]`` and ``k.transpose(-2, -1)`` as ``Reshape [B, H, T, D] -> [-1, T, D]`` (the
    batch merged with the heads), ``Transpose``, and back to ``[B, H, D, T]`` through a target read at run
    time (``Shape(k)[:-2]`` then ``D`` and ``T``)."""
    g = GraphBuilder(seed)
    hd = d // heads

    def split(name: str) -> str:
        y = g.op("Add", [g.op("MatMul", ["x", g.weight((d, d), name)]), g.weight((d,), name + "_b")])
        return g.op("Transpose", [g.op("Reshape", [y, g.const(_i64(-1, t, heads, hd))])], perm=[0, 2, 1, 3])

    q, k, v = split("q"), split("k"), split("v")
    shape = g.op("Shape", [k])
    last = g.op("Slice", [shape, g.const(_i64(-1)), g.const(_i64(2**63 - 1))])
    seq = g.op("Slice", [shape, g.const(_i64(-2)), g.const(_i64(-1))])
    lead = g.op("Slice", [shape, g.const(_i64(0)), g.const(_i64(-2))])
    merged = g.op("Reshape", [k, g.op("Concat", [g.const(_i64(-1)), seq, last], axis=0)])
    kt = g.op("Reshape", [g.op("Transpose", [merged], perm=[0, 2, 1]), g.op("Concat", [lead, last, seq], axis=0)])
    q = g.op("Mul", [q, g.const(np.array(1.0 / np.sqrt(hd), np.float32))])
    c = g.op("MatMul", [g.op("Softmax", [g.op("MatMul", [q, kt])], axis=-1), v])
    c = g.op("Reshape", [g.op("Transpose", [c], perm=[0, 2, 1, 3]), g.const(_i64(-1, t, d))])
    out = g.op("Add", [g.op("MatMul", [c, g.weight((d, d), "o")]), g.weight((d,), "o_b")])
    g.nodes.append(onnx.helper.make_node("Identity", [out], ["out"], name="out"))
    return g.build([vinfo("x", ["batch", t, d])], [vinfo("out", ["batch", t, d])])
