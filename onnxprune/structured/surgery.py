"""Structured surgery: physically remove the planned channels.

Every affected constant is sliced with ``np.take`` (initializers and Constant nodes alike; a weight read by
several layers was tied into one group by the analysis, so one slice serves all readers; a shared bias or
norm parameter whose readers lost different channels is stored once per version, each reader pointed at
its own, see :mod:`onnxprune.structured.sharing`), rules rewrite attributes and shape constants, stale
``value_info`` is replaced by re-inferred shapes, and the result is checked. Nothing is left behind that
would slow the pruned model down (no Gather or Slice over weights).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping

import numpy as np
import onnx
from onnx import ModelProto, NodeProto, TensorProto, helper, numpy_helper

from onnxprune.core.errors import OnnxPruneError, PlanError
from onnxprune.core.io import load_model
from onnxprune.core.ir import GraphIndex, shape_skeleton, tensor_like
from onnxprune.core.weights import copy_model_without_weights
from onnxprune.structured.analysis import DependencyGraph, analyze, model_fingerprint
from onnxprune.structured.plan import PrunePlan, check_plan
from onnxprune.structured.quant_sharing import dequantizer_for
from onnxprune.structured.rules.base import RewriteContext
from onnxprune.structured.rules.registry import RuleSet, RuleSpec
from onnxprune.structured.sharing import ConstVersion, reader_key

log = logging.getLogger(__name__)


def write_const(index: GraphIndex, name: str, value: np.ndarray, *, target: TensorProto | None = None) -> None:
    """Replace the value of constant ``name`` (initializer or Constant node) in place, keeping its dtype.

    ``target`` is the initializer to write into when ``index.initializers`` maps ``name`` to a read-only
    tensor of another model (see :func:`apply_plan`).
    """
    value = np.ascontiguousarray(value)
    if name in index.initializers:
        t = index.initializers[name] if target is None else target
        t.CopyFrom(tensor_like(t, value))
        for vi in index.graph.input:  # an initializer that is also an (overridable) graph input
            if vi.name == name and vi.type.HasField("tensor_type"):
                vi.type.tensor_type.shape.Clear()
                for d in value.shape:
                    vi.type.tensor_type.shape.dim.add().dim_value = int(d)
        return
    node = index.constant_nodes[name]
    for i in reversed(range(len(node.attribute))):
        if node.attribute[i].name.startswith("value"):
            del node.attribute[i]
    node.attribute.append(helper.make_attribute("value", numpy_helper.from_array(value, name)))


def slice_consts(index: GraphIndex, versions: Mapping[str, list[ConstVersion]], *,
                 targets: Mapping[str, TensorProto] | None = None) -> list[str]:
    """Slice every cut constant; returns the names changed (copies of shared constants not included).

    The first version of each constant keeps its name; every further version (a shared constant whose
    readers lost different channels) is a new constant of the same kind, read by its readers only.
    Values are read through ``index``; an initializer named in ``targets`` is written into that tensor
    instead of the one ``index`` reads (so the source can be another, untouched model).
    """
    targets = targets or {}
    readers = {reader_key(n): n for n in index.graph.node}
    made: dict[tuple[str, tuple[str, ...]], tuple[NodeProto, frozenset[str]]] = {}
    for name, name_versions in versions.items():
        value = index.const_value(name)
        if value is None:
            raise OnnxPruneError(f"constant '{name}' has no readable value; cannot slice it")
        for k, version in enumerate(name_versions):
            if k == 0:
                write_const(index, name, version.apply(value), target=targets.get(name))
                continue
            copy = _add_copy(index, name, version.apply(value), targets.get(name))
            for key in version.readers:
                node = readers[key]
                hit = False
                for i, inp in enumerate(node.input):
                    if inp and index.is_constant(inp) and index.resolve_identity(inp) == name:
                        node.input[i] = copy
                        hit = True
                if not hit:  # a shared quantized constant: the reader gets its own DequantizeLinear
                    dequantizer_for(index, node, name, copy, version.readers, made)
        del value
    return list(versions)


def _add_copy(index: GraphIndex, name: str, value: np.ndarray, target: TensorProto | None) -> str:
    """A new constant of the same kind and dtype as ``name`` holding ``value``; returns its name."""
    copy = index.unique_name(name)
    if name in index.initializers:
        tensor = tensor_like(index.initializers[name] if target is None else target, value)
        tensor.name = copy
        index.graph.initializer.append(tensor)
        return copy
    original = index.constant_nodes[name]
    position = next(i for i, n in enumerate(index.graph.node) if n is original)
    dtype = np.asarray(index.const_value(name)).dtype
    node = helper.make_node("Constant", [], [copy], name=copy,
                            value=numpy_helper.from_array(np.ascontiguousarray(value).astype(dtype), copy))
    index.graph.node.insert(position + 1, node)
    return copy


class _ConstSetter:
    """Gives a node a fresh constant input, leaving shared constants untouched for other readers."""

    def __init__(self, index: GraphIndex) -> None:
        self.index = index
        self.replaced: set[str] = set()

    def __call__(self, node: NodeProto, input_index: int, value: np.ndarray) -> None:
        old = node.input[input_index] if input_index < len(node.input) else ""
        base = f"{node.name or node.output[0]}_{old or 'input' + str(input_index)}"
        name = self.index.unique_name(base)
        # ascontiguousarray makes a 0-d value 1-d; a scalar piece of a shape (an Unsqueeze input) must stay 0-d
        tensor = numpy_helper.from_array(np.ascontiguousarray(value).reshape(np.shape(value)), name)
        self.index.graph.initializer.append(tensor)
        while len(node.input) <= input_index:
            node.input.append("")
        node.input[input_index] = name
        if old:
            self.replaced.add(old)


def _remove_unused(model: ModelProto, names: set[str]) -> None:
    used = {i for n in model.graph.node for i in n.input}
    keep = [t for t in model.graph.initializer if t.name not in names or t.name in used]
    if len(keep) != len(model.graph.initializer):
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)
    dead = [n for n in model.graph.node if n.op_type == "Constant" and n.output[0] in names and n.output[0] not in used]
    for n in dead:
        model.graph.node.remove(n)


def _strict_infer(model: ModelProto) -> ModelProto:
    inferred = onnx.shape_inference.infer_shapes(shape_skeleton(model), strict_mode=True, data_prop=True)
    onnx.checker.check_model(inferred, full_check=False)
    return inferred


def _refresh_value_info(model: ModelProto, original: ModelProto, original_vi: set[str]) -> None:
    """Drop every value_info and re-infer from a weightless skeleton.

    Inference is strict, so an invalid cut fails here, unless the original model already failed strict
    inference (some function ops are not inferred by onnx); then a lenient pass is the best available.
    """
    del model.graph.value_info[:]
    try:
        inferred = _strict_infer(model)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as exc:
        try:
            _strict_infer(original)
        except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError):
            log.info("strict shape inference fails on the original model too; checking leniently")
            inferred = onnx.shape_inference.infer_shapes(shape_skeleton(model), data_prop=True)
        else:
            raise OnnxPruneError(f"the pruned graph fails shape inference ({str(exc).splitlines()[0]}); this is "
                                 f"a bug in an op rule, please report it with the model") from exc
    if original_vi:
        # The check above fixes dynamic dims to 1; the shapes a saved model declares must keep them dynamic
        # (a value_info with batch 1 pins the output's shape in onnxruntime: "Expected shape {1,10}").
        inferred = onnx.shape_inference.infer_shapes(shape_skeleton(model, keep_symbolic=True), data_prop=True)
    model.graph.value_info.extend(vi for vi in inferred.graph.value_info if vi.name in original_vi)


def apply_plan(model: ModelProto | str | os.PathLike[str], plan: PrunePlan, *, dg: DependencyGraph | None = None,
               extra_rules: Iterable[RuleSpec] = (), infer_shapes: bool = True) -> ModelProto:
    """Cut a model according to a plan; the input is not modified.

    Args:
        model: the model the plan was made for (``ModelProto`` or path).
        plan: the :class:`PrunePlan`.
        dg: its dependency graph, to skip re-analysis (must come from the same model).
        extra_rules: the rules the analysis used, when ``dg`` is not given.
        infer_shapes: re-infer (and strictly check) the shapes; ``False`` drops every value_info instead, for
            a throwaway candidate whose nodes are run as they are (sensitivity anchors' sub-models).

    Returns:
        A new, pruned ``ModelProto`` with the same graph inputs and outputs.

    Raises:
        PlanError: ``plan`` is not a PrunePlan, was made for another model or does not fit its groups.

    Example:
        >>> pruned = apply_plan(model, make_plan(model, dg, ratio=0.5), dg=dg)  # doctest: +SKIP
    """
    # The source is only read. The output is a copy without the weights about to be sliced, so that memory
    # holds the source plus the (smaller) pruned model, never a second full copy (protobuf keeps replaced
    # bytes alive until the whole message is freed).
    if not isinstance(plan, PrunePlan):
        raise PlanError(f"plan must be a PrunePlan (from make_plan() or PrunePlan.load(path)), "
                        f"got {type(plan).__name__}")
    src = model if isinstance(model, ModelProto) else load_model(model, check=False)
    fingerprint = model_fingerprint(src)
    if fingerprint != plan.fingerprint:
        raise PlanError(f"the plan was made for another model (fingerprint {plan.fingerprint[:12]} != "
                        f"{fingerprint[:12]}); make a new plan for this model")
    if dg is None:  # the plan's groups are those of the analysis it was made with
        dg = analyze(src, extra_rules=extra_rules, grouped_conv=str(plan.meta.get("grouped_conv", "within")))
    elif dg.fingerprint != fingerprint:
        raise PlanError("the dependency graph passed as dg= belongs to another model; omit dg= to re-analyse")
    check_plan(plan, dg)
    kept = dg.kept_positions(plan.keep)
    source_inits = {t.name: t for t in src.graph.initializer}
    sliced = {s.tensor for s in kept if s.tensor in source_inits}
    m = copy_model_without_weights(src, sliced)
    if not kept:
        return m
    original_vi = {vi.name for vi in m.graph.value_info}
    out_shapes = {o.name: o.type.SerializeToString() for o in m.graph.output}
    index = GraphIndex(m)
    # Until the slicing, reads of the emptied weights go to the source's (read-only) tensors.
    targets = {name: index.initializers[name] for name in sliced}
    index.initializers.update({name: source_inits[name] for name in sliced})
    shapes = dict(dg.shapes)
    for name in list(index.initializers) + list(index.constant_nodes):
        shape = index.const_shape(name)
        if shape is not None:
            shapes.setdefault(name, shape)
    # Rules read shapes and constants of the original model, so rewrite before slicing.
    rules = RuleSet(extra_rules)
    setter = _ConstSetter(index)
    rctx = RewriteContext(index, shapes, kept, setter)
    changed = {s.tensor for s in kept}
    for node in list(m.graph.node):
        names = [index.resolve_identity(i) if index.is_constant(i) else i for i in node.input if i]
        if not any(n in changed for n in names) and not any(o in changed for o in node.output):
            continue
        rule = rules.lookup(node.domain, node.op_type, index.opset)
        if rule is not None:
            rule.rewrite(node, rctx)
    slice_consts(index, dg.const_versions(plan.keep), targets=targets)
    index.initializers.update(targets)
    _remove_unused(m, setter.replaced)
    if infer_shapes:
        _refresh_value_info(m, src, original_vi)
    else:
        del m.graph.value_info[:]
    for o in m.graph.output:
        if out_shapes[o.name] != o.type.SerializeToString():
            raise OnnxPruneError(f"graph output '{o.name}' changed type or shape; this is a bug, please report it")
    log.info("pruned %d channels in %d groups", plan.channels_removed, len(plan.keep))
    return m
