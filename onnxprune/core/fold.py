"""Constant folding of weights that a model computes at run time instead of storing.

Why: some exporters store a weight as a recipe (``ConstantOfShape`` for a zero bias, ``Constant`` →
``Reshape``/``Transpose`` chains, weight normalization ``g * v / ||v||``) rather than as an initializer.
Pruning only knows how to slice *stored* tensors, so such layers would look unprunable. When the recipe
reads nothing but constants it always yields the same tensor; :func:`fold_constants` evaluates it once, on
the constant subgraph only, with the very runtime that would compute it later (onnxruntime, CPU), and
stores the result as an initializer. The folded model is therefore the original model, bit for bit in its
outputs. Recipes that cannot be folded (random ops, custom-domain ops, control flow, a kernel error) are
reported, so the layers they feed are listed as not prunable instead of being pruned wrongly.

Folding never changes a model's precision: ``QuantizeLinear``/``DequantizeLinear`` are never evaluated (a
quantized weight stays an int8 tensor behind its DequantizeLinear, which the pruners handle in place), and
a value is not stored when it would be wider than a same-sized constant it is computed from (a ``Cast`` of
int8 or float16 weights to float32 is a dequantization by hand).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import ModelProto, NodeProto, TensorProto, helper, numpy_helper

from onnxprune.core.errors import OnnxPruneError
from onnxprune.core.ir import (
    GraphIndex,
    collect_types,
    copy_fields,
    has_subgraph,
    node_label,
    shape_skeleton,
    subgraphs,
)
from onnxprune.core.quant import QDQ_OPS, dequantized
from onnxprune.core.weights import WEIGHT_SLOT

log = logging.getLogger(__name__)

#: Ops whose output changes from run to run even with constant inputs: never folded.
NONDETERMINISTIC = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                              "Multinomial", "Bernoulli", "Dropout"})
#: A folded tensor may be at most this many times the bytes of the constants it is computed from (or
#: under :data:`GROWTH_FLOOR` bytes) unless a layer reads it as its weight: folding an ``Expand`` of a scalar
#: into a big activation-sized tensor would only grow the file.
GROWTH_LIMIT = 4
GROWTH_FLOOR = 1 << 20

_CONST = "const"
_DYNAMIC = "dynamic"


@dataclass(frozen=True)
class Unfolded:
    """A weight input computed at run time that could not be made a stored tensor.

    Attributes:
        tensor: the tensor the layer reads as its weight.
        node: the layer, as ``'name' (OpType)``.
        reason: why it stays computed (names the node that blocks folding).
    """

    tensor: str
    node: str
    reason: str


@dataclass(frozen=True)
class FoldResult:
    """What :func:`fold_constants` did.

    Attributes:
        model: the new model (the input is never modified; it is returned as is when nothing folds).
        folded: tensors now stored as initializers, in graph order.
        removed_nodes: nodes that only computed constants and are gone, as ``'name' (OpType)``.
        unfolded: weight inputs that stay computed at run time; their layers are not prunable.
    """

    model: ModelProto
    folded: tuple[str, ...]
    removed_nodes: tuple[str, ...]
    unfolded: tuple[Unfolded, ...]


def _blocker(node: NodeProto) -> str:
    """Why ``node`` cannot be evaluated ahead of time even with constant inputs ('' if it can)."""
    if node.domain not in ("", "ai.onnx"):
        return f"{node_label(node)} is a custom-domain op ({node.domain}) onnxprune cannot evaluate"
    if node.op_type in NONDETERMINISTIC:
        return f"{node_label(node)} draws random numbers at run time"
    if node.op_type in QDQ_OPS:
        return f"{node_label(node)} is quantization; folding it would store the weight in another precision"
    if has_subgraph(node):
        return f"{node_label(node)} has a subgraph (control flow)"
    return ""


def _statuses(model: ModelProto, idx: GraphIndex) -> dict[str, str]:
    """Tensor name → ``const``, ``dynamic`` (depends on a graph input) or the reason it is opaque.

    The graph is topologically sorted (the checker enforces it), so one pass in node order suffices.
    """
    status: dict[str, str] = {name: _CONST for name in idx.initializers}
    for name in idx.graph_inputs:
        status[name] = _DYNAMIC
    for node in model.graph.node:
        inputs = [status.get(i, _DYNAMIC) for i in node.input if i]
        if any(s == _DYNAMIC for s in inputs):
            result = _DYNAMIC
        else:
            opaque = [s for s in inputs if s != _CONST]
            blocker = _blocker(node)
            if opaque:
                result = opaque[0]
            elif blocker:
                result = blocker
            elif not node.input and node.op_type != "Constant":
                result = _DYNAMIC  # an input-less op that is not Constant: nothing to fold safely
            else:
                result = _CONST
        for out in node.output:
            if out:
                status[out] = result
    return status


def _trivial(node: NodeProto, idx: GraphIndex) -> bool:
    """A Constant node, or an Identity of a stored constant: onnxprune reads through them already."""
    if node.domain not in ("", "ai.onnx"):
        return False
    return node.op_type == "Constant" or (node.op_type == "Identity" and idx.is_constant(node.output[0]))


def _cone(idx: GraphIndex, targets: list[str]) -> tuple[list[NodeProto], set[str]]:
    """The nodes (in graph order) and initializers needed to compute ``targets``."""
    needed_nodes: set[int] = set()
    inits: set[str] = set()
    stack = list(targets)
    seen: set[str] = set()
    while stack:
        name = stack.pop()
        if name in seen or not name:
            continue
        seen.add(name)
        if name in idx.initializers:
            inits.add(name)
            continue
        node = idx.producer.get(name)
        if node is None or id(node) in needed_nodes:
            continue
        needed_nodes.add(id(node))
        stack.extend(node.input)
    nodes = [n for n in idx.graph.node if id(n) in needed_nodes]
    return nodes, inits


#: Runs an input-free model and returns the named outputs; raises ``OnnxPruneError`` when it cannot.
#: onnxruntime's is :func:`onnxprune.runtime.session.run_constant_graph`; it is passed in so that ``core``
#: never imports ``runtime``.
GraphRunner = Callable[[ModelProto, list[str]], dict[str, np.ndarray]]


def _evaluate(model: ModelProto, idx: GraphIndex, targets: list[str], run: GraphRunner,
              source: Mapping[str, TensorProto]) -> dict[str, np.ndarray]:
    """Run the constant subgraph computing ``targets`` with ``run`` and return their values.

    Raises:
        OnnxPruneError: the runner refuses or fails to run the subgraph (the caller reports it).
    """
    nodes, inits = _cone(idx, targets)
    graph = helper.make_graph(nodes, "onnxprune_fold", [], [helper.make_value_info(t, onnx.TypeProto())
                                                           for t in targets],
                              [source.get(n, idx.initializers[n]) for n in sorted(inits)])
    sub = helper.make_model(graph, opset_imports=list(model.opset_import))
    sub.ir_version = model.ir_version
    try:
        inferred = onnx.shape_inference.infer_shapes(sub, strict_mode=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as exc:
        raise OnnxPruneError(f"shape inference failed on the constant subgraph: {str(exc).splitlines()[0]}") \
            from exc
    types = {vi.name: vi.type for vi in inferred.graph.value_info}
    types.update({vi.name: vi.type for vi in inferred.graph.output if vi.type.HasField("tensor_type")})
    del sub.graph.output[:]
    for t in targets:
        out = sub.graph.output.add()
        out.name = t
        if t in types:
            out.type.CopyFrom(types[t])
    return run(sub, targets)


def _not_integers(model: ModelProto, names: list[str]) -> set[str]:
    """Those of ``names`` whose element type, inferred on the weightless skeleton, is known and not an integer.

    Why before evaluating: a float value found after running its cone has cost the run (and a copy of every
    weight the cone reads); an unknown type is left to the check on the value.
    """
    try:
        types = collect_types(onnx.shape_inference.infer_shapes(shape_skeleton(model), strict_mode=False))
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError):
        return set()
    out: set[str] = set()
    for name in names:
        elem = types.get(name, TensorProto.UNDEFINED)
        if elem == TensorProto.UNDEFINED:
            continue
        try:
            kind = helper.tensor_dtype_to_np_dtype(elem).kind
        except (KeyError, ValueError, TypeError):  # a type numpy has no dtype for: not shape arithmetic
            kind = "O"
        if kind not in "iu":
            out.add(name)
    return out


def fold_constants(model: ModelProto, run: GraphRunner, *, integers_only: bool = False,
                   source: Mapping[str, TensorProto] | None = None) -> FoldResult:
    """Store every run-time-computed constant that a non-constant node reads as an initializer.

    A tensor is folded when it is computed only from initializers and ``Constant`` nodes through
    default-domain, deterministic ops without subgraphs, and a node that depends on a graph input (or a
    graph output) reads it. Values come from onnxruntime running that constant subgraph alone, so the
    folded model computes exactly what the original computed. Nodes left without readers are removed.

    Args:
        model: the model (not modified).
        run: evaluates the constant subgraph (``onnxprune.runtime.session.run_constant_graph``).
        integers_only: fold shape arithmetic only (integer values), never a float tensor: a tensor whose
            inferred type is not an integer is not evaluated at all.
        source: tensors to read instead of the model's initializers of the same name (a copy of the model
            made without its weights' data, :func:`~onnxprune.core.weights.copy_model_without_weights`,
            folds with the data of the model it was made from; the result still holds no such data).

    Returns:
        A :class:`FoldResult`; ``result.model is model`` when there was nothing to fold.

    Example:
        >>> result = fold_constants(load_model("model.onnx"), run_constant_graph)  # doctest: +SKIP
        >>> result.folded
        ('conv1_weight_reshaped',)
    """
    idx = GraphIndex(model)
    status = _statuses(model, idx)
    outputs = set(idx.graph_outputs)
    weight_inputs = {node.input[WEIGHT_SLOT[node.op_type]] for node in model.graph.node
                     if node.domain in ("", "ai.onnx") and node.op_type in WEIGHT_SLOT
                     and len(node.input) > WEIGHT_SLOT[node.op_type]}
    frontier: list[str] = []
    for node in model.graph.node:
        if _trivial(node, idx) or status.get(node.output[0] if node.output else "", "") != _CONST:
            continue
        for out in node.output:
            readers = idx.consumers.get(out, [])
            if out not in outputs and any(status.get(r.output[0] if r.output else "", _DYNAMIC) != _CONST
                                          for r in readers):
                frontier.append(out)
    if integers_only and frontier:
        floats = _not_integers(model, frontier)
        frontier = [name for name in frontier if name not in floats]
    source = source or {}
    unfolded: list[Unfolded] = []
    values: dict[str, np.ndarray] = {}
    if frontier:
        try:
            values = _evaluate(model, idx, frontier, run, source)
        except OnnxPruneError as exc:
            log.warning("constant folding skipped: %s", exc)
            for name in frontier:
                status[name] = f"evaluating its constant subgraph failed ({exc})"
    for name in list(values):
        if values[name].dtype.kind not in ("iu" if integers_only else "fiu"):  # bool masks, strings: never
            log.debug("not folding %s: a %s tensor cannot be a weight or a shape", name, values[name].dtype)
            del values[name]
            continue
        cone, inits = _cone(idx, [name])
        wider = _widened(idx, inits, values[name]) or _duplicated(idx, cone, inits, values[name])
        if wider:
            log.info("not folding %s: %s", name, wider)
            status[name] = wider
            del values[name]
            continue
        if name in weight_inputs:
            continue
        source_bytes = sum(source.get(i, idx.initializers[i]).ByteSize() for i in inits)
        if values[name].nbytes > max(GROWTH_FLOOR, GROWTH_LIMIT * source_bytes):
            log.debug("not folding %s: %d bytes from %d bytes of constants", name, values[name].nbytes,
                      source_bytes)
            del values[name]
    for node in model.graph.node:
        slot = WEIGHT_SLOT.get(node.op_type)
        if slot is None or node.domain not in ("", "ai.onnx") or len(node.input) <= slot:
            continue
        name = node.input[slot]
        state = status.get(name, _DYNAMIC)
        quant = dequantized(idx, idx.resolve_identity(name))
        if quant is not None and not quant.reason:
            continue  # a quantized weight: pruned in place through its DequantizeLinear
        if state not in (_CONST, _DYNAMIC) and name not in values:
            unfolded.append(Unfolded(name, node_label(node), state))
    if not values:
        return FoldResult(model, (), (), tuple(unfolded))
    new, removed = _rebuild(model, idx, values)
    folded = tuple(name for name in frontier if name in values)
    log.info("folded %d run-time constants into initializers: %s", len(folded), ", ".join(folded))
    return FoldResult(new, folded, removed, tuple(unfolded))


#: A folded value at least this big is not stored next to a constant it is computed from that other nodes
#: still read (a tied LM head ``MatMul(x, Transpose(embedding))``): that would store the table twice.
DUPLICATE_FLOOR = 1 << 16


def _duplicated(idx: GraphIndex, cone: list[NodeProto], inits: set[str], value: np.ndarray) -> str:
    """Why storing ``value`` would store a big constant twice ('' if it would not): a source constant of
    the same size stays read outside the recipe, so folding keeps both (tied weights)."""
    if value.nbytes < DUPLICATE_FLOOR:
        return ""
    inside = {id(n) for n in cone}
    for name in sorted(inits):
        tensor = idx.initializers[name]
        if int(np.prod(tensor.dims, dtype=np.int64)) != value.size:
            continue
        if any(id(r) not in inside for r in idx.consumers.get(name, [])):
            return (f"it is computed from '{name}', which other nodes also read (tied weights); storing it "
                    "would keep a second copy")
    return ""


def _widened(idx: GraphIndex, inits: set[str], value: np.ndarray) -> str:
    """Why storing ``value`` would change precision ('' if it would not): a source constant with as many
    elements is stored in a narrower type (int8 or float16 weights cast up to float32)."""
    if value.dtype.kind != "f":
        return ""  # shape arithmetic (int32 -> int64) is not a weight's precision
    for name in sorted(inits):
        tensor = idx.initializers[name]
        numel = int(np.prod(tensor.dims, dtype=np.int64))
        if numel != value.size or numel <= 1:
            continue
        itemsize = helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
        if itemsize < value.dtype.itemsize:
            return (f"it would store '{name}' ({onnx.TensorProto.DataType.Name(tensor.data_type)}) as "
                    f"{value.dtype}, changing the model's precision")
    return ""


def _rebuild(model: ModelProto, idx: GraphIndex, values: dict[str, np.ndarray]) -> tuple[ModelProto, tuple[str, ...]]:
    """A copy of ``model`` with ``values`` as initializers and the nodes nothing reads any more dropped."""
    live: set[str] = set(idx.graph_outputs)
    keep: list[NodeProto] = []
    for node in reversed(model.graph.node):  # reverse topological order: readers before producers
        produces = [o for o in node.output if o]
        if all(o in values for o in produces) or not any(o in live for o in produces):
            continue
        keep.append(node)
        live.update(i for i in node.input if i)
        for g in subgraphs(node):  # names read inside subgraphs keep their producers alive
            live.update(i for n in g.node for i in n.input if i)
    keep.reverse()
    kept_ids = {id(n) for n in keep}
    removed = tuple(node_label(n) for n in model.graph.node if id(n) not in kept_ids)
    declared = {i.name for i in model.graph.input}
    out = ModelProto()
    copy_fields(out, model, skip=("graph",))
    copy_fields(out.graph, model.graph, skip=("initializer", "node"))
    out.graph.node.extend(keep)
    for tensor in model.graph.initializer:
        if tensor.name in live or tensor.name in declared:
            out.graph.initializer.append(tensor)
    for name, value in values.items():
        if name in live:
            out.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
    return out, removed
