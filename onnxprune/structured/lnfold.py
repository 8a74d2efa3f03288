"""Exact rewrite: fold a LayerNormalization's scale and shift into the linear layers that read it.

Why: ``LN(x) = n(x) * γ + β`` with ``n`` the plain normalisation. A linear reader computes
``(n(x) γ + β) W + b = n(x) (diag(γ) W) + (β W + b)``, so γ and β can move into every reader, leaving a
LayerNorm with unit scale and zero shift. That is the first step of the stream rewrites (a plain norm
commutes with a rotation of the stream; a scaled one does not), and it is exact up to float rounding.

Where it is impossible, the LayerNorm is left alone and the reason is recorded: its output is a graph
output, or is read by anything but a linear layer with constant weights (post-norm models add it to the
residual stream; a padded convolution would see the shift at its borders as zeros). Ops that move the
channel without mixing it (Transpose, a mean over other axes, Gather on another axis, Identity, a Flatten
of unit axes, a Reshape that keeps the channel axis last and whole) are followed to the readers behind them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from onnx import ModelProto, NodeProto, TensorProto, helper, numpy_helper

from onnxprune.core.io import release_memory
from onnxprune.core.ir import GraphIndex, attr, attr_ints, drop_unused_initializers, node_label
from onnxprune.core.shapefold import infer_shapes

log = logging.getLogger(__name__)


class NotFoldable(Exception):
    """A LayerNorm whose output reaches something that is not a linear reader."""


@dataclass(frozen=True)
class LayerNormFold:
    """The rewritten model, the LayerNorms folded, and why each other one was left alone."""

    model: ModelProto
    folded: tuple[str, ...]
    skipped: dict[str, str] = field(default_factory=dict)


def _moved_axis(node: NodeProto, axis: int, idx: GraphIndex, shapes: dict[str, tuple]) -> int:
    """Where the channel axis is in ``node``'s output, for ops that move it without mixing it."""
    op, opset = node.op_type, idx.opset
    rank = len(shapes.get(node.input[0]) or ())
    if op in ("Identity", "Dropout"):
        return axis
    if op == "Transpose":
        perm = attr_ints(node, "perm", opset) or list(range(rank))[::-1]
        return perm.index(axis)
    if op == "ReduceMean":
        axes = attr_ints(node, "axes", opset) if opset < 18 else (
            [int(a) for a in idx.const_value(node.input[1]).reshape(-1)]  # type: ignore[union-attr]
            if len(node.input) > 1 and idx.const_value(node.input[1]) is not None else [])
        axes = [a + rank if a < 0 else a for a in axes]
        if not axes or axis in axes:
            raise NotFoldable(f"{node_label(node)} averages over the channel axis")
        return axis if attr(node, "keepdims", opset, 1) else axis - sum(a < axis for a in axes)
    if op == "Gather":
        g = int(attr(node, "axis", opset, 0))  # type: ignore[call-overload]
        g = g + rank if g < 0 else g
        ind = idx.const_value(node.input[1])
        if g == axis or ind is None:
            raise NotFoldable(f"{node_label(node)} gathers along the channel axis or at run time")
        return axis if g > axis else axis - 1 + ind.ndim
    if op == "Flatten":
        a = int(attr(node, "axis", opset, 1))  # type: ignore[call-overload]
        shape = shapes.get(node.input[0]) or ()
        a = a + rank if a < 0 else a
        side = range(a, rank) if axis >= a else range(0, a)
        if all(shape[i] == 1 for i in side if i != axis):
            return 1 if axis >= a else 0
    if op == "Reshape":
        sx, sy = shapes.get(node.input[0]) or (), shapes.get(node.output[0]) or ()
        # row-major: a reshape whose last axis has the input's last size keeps each channel index in place
        # (GPT-2's Conv1D flattens [B, S, D] to [B*S, D] before its Gemm)
        if sx and sy and axis == len(sx) - 1 and isinstance(sx[-1], int) and sx[-1] == sy[-1]:
            return len(sy) - 1
        raise NotFoldable(f"its output reaches {node_label(node)}, which does not keep the channel axis last and "
                          f"whole (shape {_dims(sx)} to {_dims(sy)})")
    raise NotFoldable(f"its output reaches {node_label(node)}, which is not a linear reader")


def _dims(shape: tuple) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def linear_readers(idx: GraphIndex, start: str, shapes: dict[str, tuple]) -> list[tuple[NodeProto, int]]:
    """Every linear reader of ``start`` (a norm's output, channels last) with the channel axis of its input;
    raises ``NotFoldable``."""
    rank = len(shapes.get(start) or ())
    found: list[tuple[NodeProto, int]] = []
    todo = [(start, rank - 1)]
    while todo:
        tensor, axis = todo.pop()
        if tensor in idx.graph_outputs:
            raise NotFoldable(f"'{tensor}' is a graph output")
        for user in idx.consumers.get(tensor, []):
            if user.op_type in ("Shape", "Size"):
                continue  # reads the shape only, which the fold does not change
            if user.input[0] != tensor or tensor in user.input[1:]:
                raise NotFoldable(f"{node_label(user)} reads it other than as its data input")
            if _is_linear_reader(user, axis, idx, shapes):
                found.append((user, axis))
            else:
                todo.append((user.output[0], _moved_axis(user, axis, idx, shapes)))
    return found


def _is_linear_reader(node: NodeProto, axis: int, idx: GraphIndex, shapes: dict[str, tuple]) -> bool:
    opset = idx.opset
    if node.op_type not in ("MatMul", "Gemm", "Conv") or len(node.input) < 2:
        return False
    w = idx.const_value(node.input[1])
    if w is None:
        raise NotFoldable(f"{node_label(node)} has a weight computed at run time")
    rank = len(shapes.get(node.input[0]) or ())
    if node.op_type == "MatMul" and w.ndim == 2 and axis == rank - 1:
        return True
    if node.op_type == "Gemm" and axis == 1 and not attr(node, "transA", opset, 0):
        return True
    if node.op_type == "Conv" and int(attr(node, "group", opset, 1)) != 1:  # type: ignore[call-overload]
        raise NotFoldable(f"{node_label(node)} is a grouped convolution (its shift would need padding care)")
    if node.op_type == "Conv" and axis == 1:
        pads = attr_ints(node, "pads", opset) or [0]
        if any(pads) or attr(node, "auto_pad", opset, "NOTSET") not in ("NOTSET", "VALID", b"NOTSET", b"VALID"):
            raise NotFoldable(f"{node_label(node)} pads its input: the shift would be zero at the borders")
        return True
    raise NotFoldable(f"{node_label(node)} reads it along another axis than its input channels")


def _add_init(idx: GraphIndex, base: str, value: np.ndarray) -> str:
    name = idx.unique_name(base)
    idx.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
    return name


def fold_into(idx: GraphIndex, node: NodeProto, gamma: np.ndarray, beta: np.ndarray | None) -> None:
    """Scale the reader's input channels by ``gamma`` and add ``beta``'s contribution to its bias (``None``:
    no shift, as an RMSNorm has; the reader's bias is left alone)."""
    opset = idx.opset
    w = idx.const_value(node.input[1])
    assert w is not None
    dtype = w.dtype
    w64 = w.astype(np.float64)
    label = node.name or node.output[0]
    b64 = np.zeros_like(gamma) if beta is None else beta
    if node.op_type == "Conv":
        new_w = w64 * gamma.reshape(1, -1, *([1] * (w.ndim - 2)))
        shift = w64.reshape(w.shape[0], w.shape[1], -1).sum(axis=2) @ b64
    elif node.op_type == "Gemm" and attr(node, "transB", opset, 0):
        new_w, shift = w64 * gamma[None, :], w64 @ b64
    else:
        new_w, shift = w64 * gamma[:, None], b64 @ w64
    node.input[1] = _add_init(idx, f"{label}_lnfold_weight", new_w.astype(dtype))
    if beta is None:
        return
    if node.op_type == "Gemm":
        alpha, b_attr = float(attr(node, "alpha", opset, 1.0)), float(attr(node, "beta", opset, 1.0))  # type: ignore[arg-type]
        has_c = len(node.input) > 2 and node.input[2]
        if has_c and b_attr != 0.0:
            c = idx.const_value(node.input[2])
            assert c is not None
            node.input[2] = _add_init(idx, f"{label}_lnfold_bias", (c + alpha / b_attr * shift).astype(dtype))
            return
        # no C (or beta 0): C becomes the shift, with beta 1
        name = _add_init(idx, f"{label}_lnfold_bias", (alpha * shift).astype(dtype))
        while len(node.input) < 3:
            node.input.append("")
        node.input[2] = name
        for a in node.attribute:
            if a.name == "beta":
                a.f = 1.0
        return
    if node.op_type == "Conv":
        b = idx.const_value(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros(w.shape[0])
        assert b is not None
        name = _add_init(idx, f"{label}_lnfold_bias", (b + shift).astype(dtype))
        while len(node.input) < 3:
            node.input.append("")
        node.input[2] = name
        return
    users = idx.consumers.get(node.output[0], [])
    n = shift.shape[0]
    if len(users) == 1 and users[0].op_type == "Add" and node.output[0] not in idx.graph_outputs:
        add = users[0]
        slot = 1 if add.input[0] == node.output[0] else 0
        b = idx.const_value(add.input[slot])
        if b is not None and b.size == n and b.shape[-1] == n:
            add.input[slot] = _add_init(idx, f"{label}_lnfold_bias", (b + shift.reshape(b.shape)).astype(dtype))
            return
    out = node.output[0]
    inner = idx.unique_name(f"{out}_lnfold")
    node.output[0] = inner
    bias = _add_init(idx, f"{label}_lnfold_bias", shift.astype(dtype))
    add_node = helper.make_node("Add", [inner, bias], [out], name=idx.unique_name(f"{label}_lnfold_add"))
    pos = next(i for i, n_ in enumerate(idx.graph.node) if n_ is node)
    idx.graph.node.insert(pos + 1, add_node)


def fold_layernorm_affine(model: ModelProto, *, copy: bool = True,
                          source: Mapping[str, TensorProto] | None = None) -> LayerNormFold:
    """Fold every foldable LayerNorm's scale and shift into its linear readers (exact); see the module doc.

    The input is not modified, unless ``copy=False`` (then it is edited and returned: a caller that owns a
    fresh model saves a copy of it). ``source``: the values of initializers ``model`` holds without data
    (by name); the fold reads them there and never writes into an existing initializer (each folded weight
    is a new one). LayerNorms already plain (unit scale, zero shift) are neither folded nor reported as
    skipped.
    """
    if copy:
        out = ModelProto()
        out.CopyFrom(model)
    else:
        out = model
    shapes = infer_shapes(out)
    folded: list[str] = []
    skipped: dict[str, str] = {}
    for ln in [n for n in out.graph.node if n.op_type == "LayerNormalization"]:
        idx = GraphIndex(out)
        if source:  # reads of data-less initializers go to their source (read-only)
            idx.initializers.update({n: t for n, t in source.items() if n in idx.initializers})
        label = node_label(ln)
        rank = len(shapes.get(ln.input[0]) or ())
        axis = int(attr(ln, "axis", idx.opset, -1))  # type: ignore[call-overload]
        gamma = idx.const_value(ln.input[1])
        beta = idx.const_value(ln.input[2]) if len(ln.input) > 2 and ln.input[2] else None
        if not rank or (axis + rank if axis < 0 else axis) != rank - 1 or gamma is None or gamma.ndim != 1 \
                or (len(ln.input) > 2 and ln.input[2] and beta is None) or any(o for o in ln.output[1:]):
            skipped[label] = "not a LayerNorm over the last axis with constant per-channel scale and shift"
            continue
        g64 = gamma.astype(np.float64)
        b64 = beta.astype(np.float64).reshape(-1) if beta is not None else np.zeros_like(g64)
        if np.all(g64 == 1) and np.all(b64 == 0):
            continue
        try:
            readers = linear_readers(idx, ln.output[0], shapes)
        except NotFoldable as why:
            skipped[label] = str(why)
            continue
        for node, _axis in readers:
            fold_into(idx, node, g64, b64)
            release_memory()  # the reader's float64 temporaries, before the next reader's
        ln.input[1] = _add_init(idx, f"{label}_unit_scale", np.ones_like(gamma))
        if beta is not None:
            ln.input[2] = _add_init(idx, f"{label}_zero_shift", np.zeros_like(beta))
        folded.append(label)
    drop_unused_initializers(out.graph)
    for label, reason in skipped.items():
        log.info("LayerNorm %s not folded: %s", label, reason)
    return LayerNormFold(out, tuple(folded), skipped)
