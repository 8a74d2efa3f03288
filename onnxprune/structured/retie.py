"""Tie an untied LM head back to its embedding table after a width cut, so the pruned model stays small.

Why: width mode unties a tied head (:mod:`onnxprune.structured.untie`) to cut the stream, which stores the
``vocab × width`` table twice (GPT-2: about 31% more parameters). Both copies are cut by the same stream
channels, and a rotation multiplies both by the same ``Q``, so the head's weight ``C`` (``k × vocab``) is
still ``Eᵀ`` of the cut table ``E`` (``vocab × k``) unless something changed one of them on its own: a
LayerNorm scale folded into the head, the rotation's centring of the table (each row's mean over the stream
removed, as every stream writer's), or a re-fit of the head. Then ``C`` is replaced by ``A [E | v]ᵀ``: a
``k × (k+1)`` adapter ``A`` (a MatMul in front of the head) and one extra column ``v`` (``vocab`` values)
beside the table, chosen to minimize ``‖A [E | v]ᵀ − C‖_F``: ``v`` is the leading right singular vector of
what ``E`` alone leaves (``C − A₀ Eᵀ``), then ``A`` is the least-squares fit on ``[E | v]``.

Why this is exact before slicing: with the scale ``γ`` folded and the table centred, the rotated head is
``Qᵀ diag(γ) (E_c + μ 1ᵀ)ᵀ``, ``μ`` the rows' means: ``Qᵀ diag(γ) Q`` times the rotated centred table, plus
the rank-one ``Qᵀγ μᵀ``, which ``v`` and ``A``'s last column carry. So the exact rotated model stays tied and
is proven against the input like every rewrite. After slicing it is the weight-only least-squares tied head
(for any head input ``Z`` of full-rank second moment, ``min_A ‖Z (A B − C)‖`` has the same minimizer
``A = C Bᵀ (B Bᵀ)⁻¹`` whatever ``Z`` is). A head equal to ``Eᵀ`` (plain cut, head not re-fitted) needs
neither: it reads ``Transpose(E)`` again, exactly as the input did.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from onnx import ModelProto, NodeProto, helper, numpy_helper

from onnxprune.core.ir import GraphIndex, drop_unused_initializers

log = logging.getLogger(__name__)

#: a head within this share of its largest value of ``Eᵀ`` is ``Eᵀ`` (float32 rounding of a rotation)
SAME_RTOL = 1e-6


@dataclass(frozen=True)
class Retied:
    """One head tied back: its MatMul, the table it reads transposed again, the weight it no longer stores,
    the adapter (if any) and the relative Frobenius error ``‖A Eᵀ − C‖ / ‖C‖`` of the head's weight."""

    head: str
    table: str
    weight: str
    adapter: str | None
    adapter_params: int
    weight_error: float


@dataclass(frozen=True)
class Untied:
    """One head left with its own weight, and why (not cut like the table, or ``E`` is rank-deficient)."""

    head: str
    table: str
    weight: str
    why: str


def retie_heads(model: ModelProto, heads: tuple[tuple[str, str], ...]) -> tuple[list[Retied], list[Untied]]:
    """For each ``(head, table)`` (a MatMul node's name, the embedding table it read transposed before
    :func:`~onnxprune.structured.untie.untie_transposed_weights`), make the head read ``Transpose(table)``
    again, through an adapter when needed; in place (the caller owns ``model``). A head that cannot be tied
    back keeps its weight and is returned as :class:`Untied`."""
    idx = GraphIndex(model)
    by_name = {n.name: n for n in model.graph.node if n.name}
    retied: list[Retied] = []
    kept: list[Untied] = []
    before: dict[str, list[NodeProto]] = {}  # new nodes, keyed by the head's output they run before
    transposed: dict[str, str] = {}  # table -> its Transpose's output (heads without a column share it)
    for name, table in heads:
        head = by_name.get(name)
        weight = head.input[1] if head is not None and len(head.input) > 1 else ""
        c, e = idx.const_value(weight) if weight else None, idx.const_value(table)
        why = _why_not(head, c, e, table)
        if why:
            kept.append(Untied(name, table, weight, why))
            log.warning("LM head %s keeps its own weight (%s): the table %s is stored twice", name, why, table)
            continue
        assert head is not None and c is not None and e is not None
        adapter, column, error = _adapter(c.astype(np.float64), e.astype(np.float64))
        added = before.setdefault(head.output[0], [])
        weight_of_head = _tied_weight(idx, table, column, c.dtype, name, added, transposed)
        a_name = None
        if adapter is not None:
            a_name = idx.unique_name(f"{name}_adapter_weight")
            model.graph.initializer.append(numpy_helper.from_array(adapter.astype(c.dtype), a_name))
            adapted = idx.unique_name(f"{name}_adapted")
            added.append(helper.make_node("MatMul", [head.input[0], a_name], [adapted],
                                          name=idx.unique_name(f"{name}_adapter")))
            head.input[0] = adapted
        head.input[1] = weight_of_head
        params = (0 if adapter is None else int(adapter.size)) + (0 if column is None else int(column.size))
        retied.append(Retied(name, table, weight, a_name, params, error))
    if retied:
        _insert_before(model, before)
        drop_unused_initializers(model.graph)
    return retied, kept


def _why_not(head: NodeProto | None, c: np.ndarray | None, e: np.ndarray | None, table: str) -> str:
    if head is None or head.op_type != "MatMul":
        return "the head's MatMul is gone"
    if c is None or e is None:
        return f"its weight or the table '{table}' is no longer a constant"
    if c.ndim != 2 or e.ndim != 2 or c.shape != e.T.shape:
        return f"its weight {c.shape} and the table {e.shape} were not cut alike"
    if e.shape[0] < e.shape[1]:
        return f"the table has fewer rows ({e.shape[0]}) than the stream's width ({e.shape[1]})"
    return ""


def _tied_weight(idx: GraphIndex, table: str, column: np.ndarray | None, dtype: np.dtype, head: str,
                 added: list[NodeProto], transposed: dict[str, str]) -> str:
    """The head's weight read from the table: ``Transpose(table)``, or ``Transpose(Concat(table, v))``."""
    if column is None and table in transposed:
        return transposed[table]
    source = table
    if column is not None:
        v = idx.unique_name(f"{head}_table_column")
        idx.graph.initializer.append(numpy_helper.from_array(column.reshape(-1, 1).astype(dtype), v))
        source = idx.unique_name(f"{table}_extended")
        added.append(helper.make_node("Concat", [table, v], [source], axis=1, name=idx.unique_name(f"{head}_extend")))
    out = idx.unique_name(f"{source}_transposed")
    added.append(helper.make_node("Transpose", [source], [out], perm=[1, 0], name=idx.unique_name(f"{head}_tie")))
    if column is None:
        transposed[table] = out
    return out


def _adapter(c: np.ndarray, e: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None, float]:
    """``A`` (``k × (k+1)``) and ``v`` minimizing ``‖A [E | v]ᵀ − C‖_F`` (None, None when ``C`` is ``Eᵀ``) and
    the relative error left."""
    norm = max(float(np.linalg.norm(c)), 1e-30)
    if float(np.abs(c - e.T).max()) <= SAME_RTOL * float(np.abs(c).max() or 1.0):
        return None, None, float(np.linalg.norm(c - e.T)) / norm
    a0_t, *_ = np.linalg.lstsq(e, c.T, rcond=None)  # E A₀ᵀ ≈ Cᵀ
    rest = c - a0_t.T @ e.T  # k × vocab: what the table alone cannot give
    _, vecs = np.linalg.eigh(rest @ rest.T)
    v = rest.T @ vecs[:, -1]  # the leading right singular direction (vocab values)
    v /= max(float(np.linalg.norm(v)), 1e-30)
    ext = np.concatenate([e, v[:, None]], axis=1)
    a_t, *_ = np.linalg.lstsq(ext, c.T, rcond=None)
    return a_t.T, v, float(np.linalg.norm(a_t.T @ ext.T - c)) / norm


def _insert_before(model: ModelProto, before: dict[str, list[NodeProto]]) -> None:
    """Put each list of new nodes just before the node it feeds (keyed by its first output), keeping the
    graph's order topological."""
    nodes = list(model.graph.node)
    del model.graph.node[:]
    for node in nodes:
        model.graph.node.extend(before.get(node.output[0], []))
        model.graph.node.append(node)
