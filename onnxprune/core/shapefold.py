"""Static shapes through runtime shape arithmetic.

Why: exporters (torch.onnx in particular) compute reshape targets at runtime (``Shape -> Gather -> Div ->
Concat -> Reshape``). onnx's own data propagation covers ``Shape``/``Gather``/``Concat``/``Add``/``Mul`` but
not ``Div``, ``Mod`` or ``Cast``, so every tensor after such a reshape gets symbolic dims, and nothing
downstream can be analysed (ShuffleNet's channel shuffle, attention head splits). At fixed input dims those
values are plain numbers; this module evaluates the small integer computations whose inputs are known,
substitutes them as constants in the weightless shape skeleton and infers again, until nothing new folds.

The folded values are used only to *know shapes* of the original model at the given input dims; they
never replace a runtime computation in a model that is saved, and op rules still refuse runtime-computed
parameters (a reshape target computed from a pruned tensor's shape is the rule's business, not ours).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import onnx
from onnx import ModelProto, NodeProto, helper, numpy_helper

from onnxprune.core.ir import (
    Shape,
    attr,
    attr_ints,
    collect_shapes,
    constant_node_value,
    empty_like,
    infer_static_shapes,
)

log = logging.getLogger(__name__)

#: Largest value (in elements) that is evaluated or substituted: shape arithmetic is tiny.
MAX_ELEMENTS = 4096
#: Upper bound on inference rounds (each round unlocks at least one more runtime reshape).
MAX_ROUNDS = 256

Fold = Callable[[NodeProto, list[np.ndarray], int], list[np.ndarray]]


def _ints(node: NodeProto, name: str, opset: int) -> list[int] | None:
    return attr_ints(node, name, opset) if attr(node, name, opset) is not None else None


def _int(node: NodeProto, name: str, opset: int, default: int) -> int:
    value = attr(node, name, opset, default)
    return int(value) if isinstance(value, int) else default


def _axes(node: NodeProto, xs: list[np.ndarray], opset: int, since: int) -> list[int] | None:
    if opset >= since:
        return [int(a) for a in xs[1].reshape(-1)] if len(xs) > 1 and xs[1] is not None else None
    return _ints(node, "axes", opset)


def _shape(node: NodeProto, xs: list[np.ndarray], opset: int) -> list[np.ndarray]:
    dims = np.asarray(xs[0], dtype=np.int64)  # the caller passes the input's static shape
    rank = len(dims)
    start = _int(node, "start", opset, 0)
    end = _int(node, "end", opset, rank)
    start, end = (s + rank if s < 0 else s for s in (start, end))
    return [dims[max(0, min(start, rank)):max(0, min(end, rank))]]


def _gather(node: NodeProto, xs: list[np.ndarray], opset: int) -> list[np.ndarray]:
    axis = _int(node, "axis", opset, 0)
    idx = np.asarray(xs[1], dtype=np.int64)
    n = xs[0].shape[axis]
    if np.any((idx < -n) | (idx >= n)):
        raise ValueError("index out of range")
    return [np.take(xs[0], np.where(idx < 0, idx + n, idx), axis=axis)]


def _slice(node: NodeProto, xs: list[np.ndarray], opset: int) -> list[np.ndarray]:
    x = xs[0]
    if opset < 10:
        starts, ends = _ints(node, "starts", opset) or [], _ints(node, "ends", opset) or []
        axes = _ints(node, "axes", opset) or list(range(len(starts)))
        steps = [1] * len(starts)
    else:
        starts, ends = [int(v) for v in xs[1].reshape(-1)], [int(v) for v in xs[2].reshape(-1)]
        axes = [int(v) for v in xs[3].reshape(-1)] if len(xs) > 3 and xs[3] is not None else list(range(len(starts)))
        steps = [int(v) for v in xs[4].reshape(-1)] if len(xs) > 4 and xs[4] is not None else [1] * len(starts)
    index: list[slice] = [slice(None)] * x.ndim
    for s, e, a, st in zip(starts, ends, axes, steps, strict=True):
        index[a] = slice(s, e, st)  # python slicing clamps exactly as ONNX Slice does
    return [x[tuple(index)]]


def _reshape(node: NodeProto, xs: list[np.ndarray], opset: int) -> list[np.ndarray]:
    target = [int(v) for v in xs[1].reshape(-1)]
    if not _int(node, "allowzero", opset, 0):
        target = [xs[0].shape[i] if v == 0 else v for i, v in enumerate(target)]
    return [xs[0].reshape(target)]


def _unsqueeze(node: NodeProto, xs: list[np.ndarray], opset: int) -> list[np.ndarray]:
    axes = _axes(node, xs, opset, 13) or []
    rank = xs[0].ndim + len(axes)
    return [np.expand_dims(xs[0], tuple(sorted(a + rank if a < 0 else a for a in axes)))]


def _squeeze(node: NodeProto, xs: list[np.ndarray], opset: int) -> list[np.ndarray]:
    axes = _axes(node, xs, opset, 13)
    return [np.squeeze(xs[0], axis=None if axes is None else tuple(axes))]


def _cast(node: NodeProto, xs: list[np.ndarray], opset: int) -> list[np.ndarray]:
    to = _int(node, "to", opset, 0)
    return [xs[0].astype(helper.tensor_dtype_to_np_dtype(to))]


def _div(node: NodeProto, xs: list[np.ndarray], opset: int) -> list[np.ndarray]:
    a, b = xs
    if a.dtype.kind in "iu" and b.dtype.kind in "iu":
        if np.any(b == 0):
            raise ValueError("integer division by zero")
        q = np.abs(a) // np.abs(b)  # ONNX integer Div truncates toward zero
        return [(np.sign(a) * np.sign(b) * q).astype(np.result_type(a, b))]
    return [np.divide(a, b)]


def _mod(node: NodeProto, xs: list[np.ndarray], opset: int) -> list[np.ndarray]:
    if np.any(xs[1] == 0):
        raise ValueError("modulo by zero")
    fmod = _int(node, "fmod", opset, 0)
    return [np.fmod(xs[0], xs[1]) if fmod else np.mod(xs[0], xs[1])]


def _range(node: NodeProto, xs: list[np.ndarray], opset: int) -> list[np.ndarray]:
    start, limit, delta = (x.reshape(()).item() for x in xs)
    if delta == 0:
        raise ValueError("zero step")
    return [np.arange(start, limit, delta, dtype=xs[0].dtype)]


def _constant_of_shape(node: NodeProto, xs: list[np.ndarray], opset: int) -> list[np.ndarray]:
    value = np.zeros(1, dtype=np.float32)
    for a in node.attribute:
        if a.name == "value":
            value = numpy_helper.to_array(a.t).reshape(-1)
    return [np.full([int(v) for v in xs[0].reshape(-1)], value[0], dtype=value.dtype)]


def _reduce(fn: Callable[..., np.ndarray]) -> Fold:
    def run(node: NodeProto, xs: list[np.ndarray], opset: int) -> list[np.ndarray]:
        since = 13 if node.op_type == "ReduceSum" else 18
        axes = _axes(node, xs, opset, since)
        keep = bool(_int(node, "keepdims", opset, 1))
        return [np.asarray(fn(xs[0], axis=None if not axes else tuple(axes), keepdims=keep), dtype=xs[0].dtype)]

    return run


def _elementwise(fn: Callable[..., np.ndarray]) -> Fold:
    def run(node: NodeProto, xs: list[np.ndarray], opset: int) -> list[np.ndarray]:
        out = fn(*xs)
        return [np.asarray(out, dtype=np.result_type(*xs)) if out.dtype.kind != "b" else out]

    return run


def _variadic(fn: Callable[..., np.ndarray]) -> Fold:
    def run(node: NodeProto, xs: list[np.ndarray], opset: int) -> list[np.ndarray]:
        out = xs[0]
        for x in xs[1:]:
            out = fn(out, x)
        return [out]

    return run


#: The ops evaluated, with numpy implementations that follow the ONNX semantics for the cases that occur
#: in shape arithmetic. ``Shape`` and ``Size`` read only the (static) shape of their input.
FOLDERS: dict[str, Fold] = {
    "Shape": _shape,
    "Gather": _gather,
    "Slice": _slice,
    "Reshape": _reshape,
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Cast": _cast,
    "Concat": lambda node, xs, opset: [np.concatenate(xs, axis=_int(node, "axis", opset, 0))],
    "Identity": lambda node, xs, opset: [xs[0]],
    "Transpose": lambda node, xs, opset: [np.transpose(xs[0], _ints(node, "perm", opset) or None)],
    "Add": _elementwise(np.add),
    "Sub": _elementwise(np.subtract),
    "Mul": _elementwise(np.multiply),
    "Div": _div,
    "Mod": _mod,
    "Neg": lambda node, xs, opset: [np.negative(xs[0])],
    "Abs": lambda node, xs, opset: [np.abs(xs[0])],
    "Floor": lambda node, xs, opset: [np.floor(xs[0])],
    "Ceil": lambda node, xs, opset: [np.ceil(xs[0])],
    "Sqrt": lambda node, xs, opset: [np.sqrt(xs[0])],
    "Max": _variadic(np.maximum),
    "Min": _variadic(np.minimum),
    "Equal": lambda node, xs, opset: [np.equal(xs[0], xs[1])],
    "Less": lambda node, xs, opset: [np.less(xs[0], xs[1])],
    "Greater": lambda node, xs, opset: [np.greater(xs[0], xs[1])],
    "Not": lambda node, xs, opset: [np.logical_not(xs[0])],
    "Where": lambda node, xs, opset: [np.where(xs[0], xs[1], xs[2])],
    "Expand": lambda node, xs, opset: [xs[0] * np.ones([int(v) for v in xs[1].reshape(-1)], dtype=xs[0].dtype)],
    "Range": _range,
    "ConstantOfShape": _constant_of_shape,
    "ReduceProd": _reduce(np.prod),
    "ReduceSum": _reduce(np.sum),
    "ReduceMin": _reduce(np.min),
    "ReduceMax": _reduce(np.max),
}


def _static(shape: Shape | None) -> bool:
    return shape is not None and all(isinstance(d, int) and d >= 0 for d in shape)


def fold_values(model: ModelProto, shapes: dict[str, Shape],
                known: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Values of the small tensors computable at the given shapes (shape arithmetic), by tensor name.

    Args:
        model: the model (or its weightless skeleton); nodes are visited in graph order.
        shapes: static shapes already known (``Shape`` of a tensor with a static shape is folded).
        known: values found by an earlier call (extended, not modified).

    Returns:
        Every folded tensor (``known`` included), each at most :data:`MAX_ELEMENTS` elements.
    """
    opset = next((int(i.version) for i in model.opset_import if i.domain in ("", "ai.onnx")), 0) or \
        onnx.defs.onnx_opset_version()
    values: dict[str, np.ndarray] = dict(known or {})
    for t in model.graph.initializer:
        if t.name not in values and int(np.prod(t.dims)) <= MAX_ELEMENTS:
            values[t.name] = numpy_helper.to_array(t)
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx") or all(o in values for o in node.output if o):
            continue
        if node.op_type == "Constant":
            value = constant_node_value(node)
            if value is not None and value.size <= MAX_ELEMENTS:
                values[node.output[0]] = value
            continue
        fold = FOLDERS.get(node.op_type)
        if fold is None:
            continue
        if node.op_type in ("Shape", "Size"):
            shape = shapes.get(node.input[0])
            if not _static(shape):
                continue
            dims = np.array(shape, dtype=np.int64)
            outs = [np.array(int(np.prod(dims)), dtype=np.int64)] if node.op_type == "Size" else \
                _shape(node, [dims], opset)
        else:
            if not all((not i) or i in values for i in node.input):
                continue
            xs = [values[i] if i else None for i in node.input]
            try:
                outs = fold(node, xs, opset)  # type: ignore[arg-type]
            except (ValueError, IndexError, TypeError, OverflowError) as exc:
                log.debug("not folding %s (%s): %s", node.name, node.op_type, exc)
                continue
        for name, value in zip(node.output, outs, strict=False):
            value = np.asarray(value)
            if name and value.size <= MAX_ELEMENTS:
                values[name] = value
    return values


def _substitute(skel: ModelProto, values: dict[str, np.ndarray]) -> ModelProto:
    """A copy of ``skel`` in which every node whose outputs are all folded is replaced by initializers."""
    out = empty_like(skel)
    g = out.graph
    g.input.extend(skel.graph.input)
    g.output.extend(skel.graph.output)
    # declared shapes (the outputs of onnxruntime's fused ops, which onnx cannot infer) carry inference past them
    g.value_info.extend(vi for vi in skel.graph.value_info if vi.name not in values)
    kept = [n for n in skel.graph.node if not all(o in values for o in n.output if o)]
    g.node.extend(kept)
    needed = {i for n in kept for i in n.input} | {o.name for o in skel.graph.output}
    produced = {o for n in kept for o in n.output}
    inputs = {i.name for i in skel.graph.input}
    g.initializer.extend(t for t in skel.graph.initializer if t.name not in values or t.name in needed)
    have = {t.name for t in g.initializer}
    for name in sorted(needed):
        if name in values and name not in produced and name not in have and name not in inputs:
            g.initializer.append(numpy_helper.from_array(np.array(values[name], order="C"), name))  # keeps 0-d
    return out


def fold_shapes(skel: ModelProto, shapes: dict[str, Shape]) -> dict[str, Shape]:
    """Shapes of ``skel`` with runtime shape arithmetic evaluated: a superset of ``shapes``, more static.

    Args:
        skel: a weightless skeleton (:func:`onnxprune.core.ir.shape_skeleton`), all input dims fixed.
        shapes: the shapes one onnx inference pass gave.

    Returns:
        ``shapes`` updated: each tensor gets the most static shape any round found.

    Example:
        >>> shapes = fold_shapes(skel, shapes)  # doctest: +SKIP
    """
    merged = dict(shapes)
    values = fold_values(skel, merged)
    substituted: set[str] = set()
    for _ in range(MAX_ROUNDS):
        new = {k for k in values if k not in substituted}
        if not new:
            break
        substituted |= new
        for name, value in values.items():
            merged.setdefault(name, tuple(value.shape))
        try:
            inferred = onnx.shape_inference.infer_shapes(_substitute(skel, values), data_prop=True)
        except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as exc:
            log.debug("shape folding stopped: %s", str(exc).splitlines()[0])
            break
        grew = False
        for name, shape in collect_shapes(inferred).items():
            if _static(shape) and not _static(merged.get(name)):
                merged[name] = shape
                grew = True
        if not grew:
            break
        values = fold_values(skel, merged, values)
    return merged


def infer_shapes(model: ModelProto, dims: dict[str, int] | None = None, default_dim: int = 1,
                 strict: bool = False, fold: bool = True) -> dict[str, Shape]:
    """Shapes of every tensor after shape inference, with runtime shape arithmetic folded at fixed dims.

    The entry point every analysis uses: :func:`onnxprune.core.ir.infer_static_shapes` with
    :func:`fold_shapes` as its folder (``fold=False`` gives onnx's inference alone).

    Raises:
        UnsupportedModelError: with ``strict=True``, when inference fails.

    Example:
        >>> shapes = infer_shapes(model, {"input": 1})  # doctest: +SKIP
    """
    return infer_static_shapes(model, dims, default_dim, strict, folder=fold_shapes if fold else None)
