"""Output shapes of onnxruntime's fused transformer ops, which onnx's shape inference does not know.

Why: onnxruntime's transformer optimizer rewrites plain exports into ``com.microsoft`` ops (``Attention``,
``SkipLayerNormalization``, ``BiasGelu``, ...). onnx leaves their outputs untyped, and with them every
tensor after them, so nothing past the first fused op could be sized (no MACs, no channel groups). These
are the shape functions onnxruntime documents for each op, written only for the outputs the data flows
through; an output not listed here (a KV cache ``present``) stays unknown unless the model declares it.

:func:`onnxprune.core.ir.infer_static_shapes` asks :func:`contrib_outputs` for every node whose inputs are
known and whose outputs are not, declares the answers in the skeleton and infers again, as it does with
shapes the model declares itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from onnx import ModelProto, NodeProto, helper

Shape = tuple  # tuple[int | str | None, ...], as core.ir.Shape (not imported: ir imports this module)
#: (elem_type, shape) of each output this module sizes, by output index.
Typed = dict[int, tuple[int, Shape]]

MS = "com.microsoft"


def _attr_int(node: NodeProto, name: str, default: int) -> int:
    for a in node.attribute:
        if a.name == name:
            return int(helper.get_attribute_value(a))
    return default


def _attr_ints(node: NodeProto, name: str) -> list[int]:
    for a in node.attribute:
        if a.name == name:
            return [int(v) for v in helper.get_attribute_value(a)]
    return []


def _int(d: object) -> int | None:
    return d if isinstance(d, int) and d >= 0 else None


def _same(node: NodeProto, shapes: Mapping[str, Shape], types: Mapping[str, int]) -> Typed | None:
    """Output 0 has the shape and type of input 0 (elementwise ops, normalizations)."""
    x = node.input[0] if node.input else ""
    if x not in shapes or x not in types:
        return None
    return {0: (types[x], shapes[x])}


def _skip_norm(node: NodeProto, shapes: Mapping[str, Shape], types: Mapping[str, int]) -> Typed | None:
    """Skip(Simplified)LayerNormalization: output and the ``input + skip + bias`` sum have the input's shape;
    mean and inverse std keep the leading axes with a trailing 1."""
    out = _same(node, shapes, types)
    if out is None:
        return None
    elem, shape = out[0]
    stats = (*shape[:-1], 1)
    return {0: (elem, shape), 1: (1, stats), 2: (1, stats), 3: (elem, shape)}


def _embed_norm(node: NodeProto, shapes: Mapping[str, Shape], types: Mapping[str, int]) -> Typed | None:
    """EmbedLayerNormalization: ``input_ids [B, S]`` and ``word_embedding [V, H]`` give ``[B, S, H]``,
    ``mask_index [B]`` (int32) and the embedding sum ``[B, S, H]``."""
    ids, word = node.input[0], node.input[2] if len(node.input) > 2 else ""
    if ids not in shapes or word not in shapes or word not in types or len(shapes[ids]) != 2:
        return None
    b, s = shapes[ids]
    out = (b, s, shapes[word][1])
    return {0: (types[word], out), 1: (6, (b,)), 2: (types[word], out)}


def _attention(node: NodeProto, shapes: Mapping[str, Shape], types: Mapping[str, int]) -> Typed | None:
    """Attention: ``input [B, S, hidden]`` and packed ``weights [hidden, q + k + v]`` give ``[B, S, v]``
    (``v`` from ``qkv_hidden_sizes``, else a third of the packed width)."""
    x, w = node.input[0], node.input[1]
    if x not in shapes or w not in shapes or x not in types or len(shapes[x]) != 3:
        return None
    sizes = _attr_ints(node, "qkv_hidden_sizes")
    width = _int(shapes[w][1])
    if sizes:
        v: int | None = sizes[2]
    else:
        v = width // 3 if width is not None else None
    return {0: (types[x], (*shapes[x][:2], v))}


def _mha(node: NodeProto, shapes: Mapping[str, Shape], types: Mapping[str, int]) -> Typed | None:
    """MultiHeadAttention: ``query [B, S, q]`` with ``value [B, L, v]`` gives ``[B, S, v]``; a 4-D value
    ``[B, N, L, H]`` or packed QKV query ``[B, S, N, 3, H]`` gives ``[B, S, N*H]``."""
    q = node.input[0]
    v = node.input[2] if len(node.input) > 2 else ""
    if q not in shapes or q not in types:
        return None
    qs = shapes[q]
    if len(qs) == 5:  # packed QKV: [B, S, N, 3, H]
        n, h = _int(qs[2]), _int(qs[4])
        return {0: (types[q], (qs[0], qs[1], n * h if n is not None and h is not None else None))}
    if len(qs) != 3:
        return None
    if not v:  # packed KV in key, or key/value absent: output width is the query's
        return {0: (types[q], qs)}
    if v not in shapes:
        return None
    vs = shapes[v]
    if len(vs) == 3:
        return {0: (types[q], (qs[0], qs[1], vs[2]))}
    if len(vs) == 4:
        n, h = _int(vs[1]), _int(vs[3])
        return {0: (types[q], (qs[0], qs[1], n * h if n is not None and h is not None else None))}
    return None


def _gqa(node: NodeProto, shapes: Mapping[str, Shape], types: Mapping[str, int]) -> Typed | None:
    """GroupQueryAttention: ``query [B, S, N*H]`` (or packed ``[B, S, (N + 2*KV)*H]`` without key) gives
    ``[B, S, N*H]`` and the KV cache ``present_key``/``present_value`` ``[B, KV, ?, H]``."""
    q = node.input[0]
    if q not in shapes or q not in types or len(shapes[q]) != 3:
        return None
    qs = shapes[q]
    width = _int(qs[2])
    n, kv = _attr_int(node, "num_heads", 0), _attr_int(node, "kv_num_heads", 0)
    packed = len(node.input) < 2 or not node.input[1]
    if width is None or n <= 0:
        return {0: (types[q], (qs[0], qs[1], None))}
    head = width // (n + 2 * kv) if packed else width // n
    cache = (qs[0], kv, None, head)  # the KV cache's length depends on the run's total sequence length
    return {0: (types[q], (qs[0], qs[1], n * head)), 1: (types[q], cache), 2: (types[q], cache)}


_MS_SHAPES: dict[str, Callable[[NodeProto, Mapping[str, Shape], Mapping[str, int]], Typed | None]] = {
    "Attention": _attention,
    "MultiHeadAttention": _mha,
    "GroupQueryAttention": _gqa,
    "SkipLayerNormalization": _skip_norm,
    "SkipSimplifiedLayerNormalization": _skip_norm,
    "EmbedLayerNormalization": _embed_norm,
    "LayerNormalization": _same,
    "SimplifiedLayerNormalization": _same,
    "BiasGelu": _same,
    "FastGelu": _same,
    "Gelu": _same,
    "QuickGelu": _same,
    "BiasAdd": _same,
    "RotaryEmbedding": _same,
}
#: onnxruntime registers this one in the default domain, where onnx has no schema for it.
CONTRIB_DEFAULT_DOMAIN = {"SimplifiedLayerNormalization": _same}


def contrib_outputs(node: NodeProto, shapes: Mapping[str, Shape],
                    types: Mapping[str, int]) -> dict[str, tuple[int, Shape]]:
    """``{output name: (elem_type, shape)}`` for the outputs of a fused onnxruntime op this module sizes.

    Empty for any other op, or when the inputs it needs are not known yet.

    Example:
        >>> contrib_outputs(node, {"x": (1, 8, 64)}, {"x": 1})  # doctest: +SKIP
        {'y': (1, (1, 8, 64))}
    """
    if node.domain == MS:
        fn = _MS_SHAPES.get(node.op_type)
    elif node.domain in ("", "ai.onnx"):
        fn = CONTRIB_DEFAULT_DOMAIN.get(node.op_type)
    else:
        fn = None
    typed = fn(node, shapes, types) if fn is not None else None
    if not typed:
        return {}
    return {node.output[i]: value for i, value in typed.items() if i < len(node.output) and node.output[i]}


def retag_default_domain(model: ModelProto) -> None:
    """Move onnxruntime's default-domain fused norm of a *copy* made for onnx's checker or inference into
    ``com.microsoft`` (in place).

    Why: onnxruntime registers ``SimplifiedLayerNormalization`` (RMSNorm) in the default domain (its
    transformer optimizer writes it there for Llama-like models), where onnx has no such op, so
    ``onnx.checker`` and strict inference refuse the whole model although onnxruntime runs it. In
    ``com.microsoft`` onnx skips it like any custom op. Never call this on a model that is saved.
    """
    moved = False
    for node in model.graph.node:
        if node.domain in ("", "ai.onnx") and node.op_type in CONTRIB_DEFAULT_DOMAIN:
            node.domain = MS
            moved = True
    if moved and not any(o.domain == MS for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS, 1))
