"""A light, name-keyed index over an ONNX graph, and attribute/constant helpers.

Why not a full IR: onnxprune edits a handful of tensors in place and must stay fast on 100 MB models, so
it works on the ``ModelProto`` itself and keeps only dictionaries from names to protos (identity is by
name, as in the rest of the package). Rebuild the index after a structural edit.
"""

from __future__ import annotations

import fnmatch
import itertools
import os
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping

import numpy as np
import onnx
from google.protobuf.message import Message
from onnx import AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto, helper, numpy_helper

from onnxprune.core.contrib_shapes import CONTRIB_DEFAULT_DOMAIN, contrib_outputs, retag_default_domain
from onnxprune.core.errors import UnsupportedModelError

GENERATED_PREFIX = "onnxprune_"
#: Floating-point element types: what counts as a parameter (stats, analysis) and what sparsity can zero.
FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16)

Shape = tuple  # tuple[int | str | None, ...]; str for a symbolic dim, None for an unknown one


def opset_of(model: ModelProto, domain: str = "") -> int:
    """The opset version the model imports for ``domain`` (default domain: also ``ai.onnx``)."""
    for imp in model.opset_import:
        if imp.domain == domain or (domain == "" and imp.domain == "ai.onnx"):
            return int(imp.version)
    return onnx.defs.onnx_opset_version() if domain == "" else 1


def attr(node: NodeProto, name: str, opset: int | None = None, default: object = None) -> object:
    """Read an attribute, falling back to the op schema's default (then to ``default``).

    Reading defaults from the schema keeps one source of truth for values like ``Gemm.transB = 0``.
    """
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    if node.domain in ("", "ai.onnx"):
        try:
            schema = onnx.defs.get_schema(node.op_type, opset or onnx.defs.onnx_opset_version(), "")
        except onnx.defs.SchemaError:
            return default
        spec = schema.attributes.get(name)
        if spec is not None and spec.default_value.type != AttributeProto.UNDEFINED:
            return helper.get_attribute_value(spec.default_value)
    return default


def set_attr(node: NodeProto, name: str, value: object) -> None:
    """Set (or replace) an attribute of ``node``."""
    for i, a in enumerate(node.attribute):
        if a.name == name:
            del node.attribute[i]
            break
    node.attribute.append(helper.make_attribute(name, value))


def constant_node_value(node: NodeProto) -> np.ndarray | None:
    """The value of a ``Constant`` node, whatever attribute form the exporter used."""
    for a in node.attribute:
        if a.name == "value":
            return numpy_helper.to_array(a.t)
        if a.name == "value_float":
            return np.array(a.f, dtype=np.float32)
        if a.name == "value_floats":
            return np.array(list(a.floats), dtype=np.float32)
        if a.name == "value_int":
            return np.array(a.i, dtype=np.int64)
        if a.name == "value_ints":
            return np.array(list(a.ints), dtype=np.int64)
    return None


def tensor_like(tensor: TensorProto, value: np.ndarray) -> TensorProto:
    """A new tensor with ``tensor``'s name and element type holding ``value`` (cast to that type).

    Why: a rewritten weight must keep its dtype even when numpy promoted the computed value.
    """
    dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type)
    return numpy_helper.from_array(np.ascontiguousarray(value).astype(dtype, copy=False), tensor.name)


def node_key(node: NodeProto, index: int) -> str:
    """The name a node is known by in reports and :attr:`GraphIndex.nodes_by_name`: its own name, or
    ``<op_type>_<index>`` (its position in the graph) when it has none."""
    return node.name or f"{node.op_type}_{index}"


class GraphIndex:
    """Producer/consumer maps and constant lookup for one graph, keyed by tensor name.

    Attributes:
        graph: the indexed ``GraphProto`` (not copied: edits through the index edit the model).
        data_dir: the folder of the model's external data, for a model loaded without it: constants are
            then read from there, one at a time, and never stored in the model.
        opset: default-domain opset of the model.
        producer: tensor name → node that writes it.
        consumers: tensor name → nodes that read it, in graph order (a node reading twice appears once).
        initializers: name → initializer ``TensorProto``.
        constant_nodes: output name → ``Constant`` node.
        nodes_by_name: :func:`node_key` → node (the first node, when two share a name).
        graph_inputs / graph_outputs: names of the graph's real inputs (initializers excluded) / outputs.
    """

    def __init__(self, model: ModelProto, *, data_dir: str | os.PathLike[str] | None = None) -> None:
        self.model = model
        self.data_dir = data_dir
        self.graph: GraphProto = model.graph
        self.opset = opset_of(model)
        self.producer: dict[str, NodeProto] = {}
        self.consumers: dict[str, list[NodeProto]] = defaultdict(list)
        self.initializers: dict[str, TensorProto] = {t.name: t for t in self.graph.initializer}
        self.constant_nodes: dict[str, NodeProto] = {}
        self.nodes_by_name: dict[str, NodeProto] = {}
        for i, node in enumerate(self.graph.node):
            self.nodes_by_name.setdefault(node_key(node, i), node)
            for out in node.output:
                if out:
                    self.producer[out] = node
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                self.constant_nodes[node.output[0]] = node
            seen: set[str] = set()
            for inp in itertools.chain(node.input, subgraph_inputs(node)):
                if inp and inp not in seen:
                    seen.add(inp)
                    self.consumers[inp].append(node)
        self.graph_inputs = [i.name for i in self.graph.input if i.name not in self.initializers]
        self.graph_outputs = [o.name for o in self.graph.output]
        self._names: set[str] | None = None

    # -- constants ---------------------------------------------------------------------------------
    def resolve_identity(self, name: str) -> str:
        """Follow ``Identity`` nodes back to the tensor that really holds the value."""
        seen = 0
        while name in self.producer and self.producer[name].op_type == "Identity" and seen < 10_000:
            name = self.producer[name].input[0]
            seen += 1
        return name

    def is_constant(self, name: str) -> bool:
        """True when ``name`` is an initializer or a Constant node output (through Identity)."""
        src = self.resolve_identity(name)
        return src in self.initializers or src in self.constant_nodes

    def const_value(self, name: str) -> np.ndarray | None:
        """The value of a constant tensor (initializer or Constant node, through Identity), else None."""
        src = self.resolve_identity(name)
        if src in self.initializers:
            tensor = self.initializers[src]
            if self.data_dir is not None and tensor.data_location == TensorProto.EXTERNAL:
                return _external_value(tensor, self.data_dir)
            return numpy_helper.to_array(tensor)
        if src in self.constant_nodes:
            return constant_node_value(self.constant_nodes[src])
        return None

    def const_shape(self, name: str) -> tuple[int, ...] | None:
        """Shape of a constant without materializing it."""
        src = self.resolve_identity(name)
        if src in self.initializers:
            return tuple(int(d) for d in self.initializers[src].dims)
        if src in self.constant_nodes:
            value = constant_node_value(self.constant_nodes[src])
            return None if value is None else tuple(value.shape)
        return None

    def const_readers(self, name: str) -> list[NodeProto]:
        """Every non-Identity node that reads the constant behind ``name`` (directly or via Identity)."""
        src = self.resolve_identity(name)
        readers: list[NodeProto] = []
        stack = [src]
        while stack:
            t = stack.pop()
            for node in self.consumers.get(t, []):
                if node.op_type == "Identity":
                    stack.append(node.output[0])
                else:
                    readers.append(node)
        return readers

    def ancestors(self, tensors: Iterable[str], *, through_shape: bool = True) -> set[str]:
        """``tensors`` and every tensor they are computed from. ``through_shape=False`` stops at a ``Shape``
        read: the tensors a value is computed from by value (a shape is metadata, not the value)."""
        seen: set[str] = set()
        todo = list(tensors)
        while todo:
            t = todo.pop()
            if t in seen:
                continue
            seen.add(t)
            node = self.producer.get(t)
            if node is not None and (through_shape or node.op_type != "Shape"):
                todo.extend(i for i in node.input if i)
        return seen

    # -- names -------------------------------------------------------------------------------------
    def unique_name(self, base: str) -> str:
        """A tensor/node name not yet used in the graph, starting with ``onnxprune_``."""
        if self._names is None:
            self._names = set(self.producer) | set(self.initializers) | set(self.graph_inputs)
            self._names |= {n.name for n in self.graph.node}
        stem = base if base.startswith(GENERATED_PREFIX) else GENERATED_PREFIX + base
        name, k = stem, 0
        while name in self._names:
            k += 1
            name = f"{stem}_{k}"
        self._names.add(name)
        return name


def _external_value(tensor: TensorProto, data_dir: str | os.PathLike[str]) -> np.ndarray:
    """The value of a tensor stored in external data under ``data_dir``, read without loading it into the
    model (onnx's reader fills the tensor it is given: it gets a copy of the stub)."""
    stub = TensorProto()
    stub.CopyFrom(tensor)
    return numpy_helper.to_array(stub, base_dir=os.fspath(data_dir))


def subgraphs(node: NodeProto) -> list[GraphProto]:
    """The graphs a node holds as attributes (If branches, Loop and Scan bodies), in attribute order."""
    out: list[GraphProto] = []
    for a in node.attribute:
        if a.type == AttributeProto.GRAPH:
            out.append(a.g)
        elif a.type == AttributeProto.GRAPHS:
            out.extend(a.graphs)
    return out


def has_subgraph(node: NodeProto) -> bool:
    """Whether a node holds a graph attribute (control flow: If, Loop, Scan)."""
    return any(a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS) for a in node.attribute)


def subgraph_inputs(node: NodeProto) -> Iterable[str]:
    """Outer-scope names read inside a node's subgraphs (If/Loop/Scan bodies)."""
    for g in subgraphs(node):
        inner = {t.name for t in g.initializer} | {i.name for i in g.input}
        for n in g.node:
            inner.update(n.output)
        for n in g.node:
            for inp in itertools.chain(n.input, subgraph_inputs(n)):
                if inp and inp not in inner:
                    yield inp


def copy_fields(dst: Message, src: Message, *, skip: Collection[str] = ()) -> None:
    """Copy every set field of ``src`` into ``dst`` except those named in ``skip``.

    Why not ``CopyFrom`` then clear: python protobuf (upb) keeps a replaced or cleared bytes field alive in
    the message's arena until the whole message is freed, so skipping the weights while copying is the
    only way a weightless copy costs no weight memory. One helper for every such copy (weights, fold).
    """
    for fd, value in src.ListFields():
        if fd.name in skip:
            continue
        # protobuf >= 6 names it is_repeated; older releases only have label.
        repeated = getattr(fd, "is_repeated", None)
        if repeated is None:
            repeated = getattr(fd, "label", None) == fd.LABEL_REPEATED
        if repeated:
            getattr(dst, fd.name).extend(value)
        elif fd.type == fd.TYPE_MESSAGE:
            getattr(dst, fd.name).CopyFrom(value)
        else:
            setattr(dst, fd.name, value)


def node_label(node: NodeProto) -> str:
    """How messages name a node: ``'conv1' (Conv)``."""
    return f"'{node.name or node.output[0]}' ({node.op_type})"


# -- shapes ----------------------------------------------------------------------------------------
def is_fixed_dim(d: onnx.TensorShapeProto.Dimension) -> bool:
    """A declared dim with a real size. Paddle and some converters store "unknown" as ``dim_value: -1``: that
    is dynamic, never a size (taken as one, it gave negative MACs and an empty validation run)."""
    return d.HasField("dim_value") and d.dim_value >= 0


def shape_of_type(type_proto: onnx.TypeProto) -> Shape | None:
    """Dims of a tensor type (int, symbolic str or None per dim); None when it has no shape.

    A negative ``dim_value`` (``-1``, "unknown" in Paddle exports) is a dynamic dim without a name: None.
    """
    if not type_proto.HasField("tensor_type") or not type_proto.tensor_type.HasField("shape"):
        return None
    dims: list[int | str | None] = []
    for d in type_proto.tensor_type.shape.dim:
        if is_fixed_dim(d):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return tuple(dims)


def attr_ints(node: NodeProto, name: str, opset: int | None = None, default: list[int] | None = None) -> list[int]:
    """A list-of-integers attribute (``perm``, ``axes``, ``pads``...) as ``list[int]``, typed for callers.

    Returns ``default`` (or an empty list) when the attribute is absent and the schema has no default.
    """
    value = attr(node, name, opset)
    if value is None:
        return list(default or [])
    if isinstance(value, (int, np.integer)):
        return [int(value)]
    return [int(v) for v in value]  # type: ignore[attr-defined]


def input_shapes(model: ModelProto) -> dict[str, Shape | None]:
    """Declared shapes of the graph's real inputs (initializers excluded)."""
    inits = {t.name for t in model.graph.initializer}
    return {i.name: shape_of_type(i.type) for i in model.graph.input if i.name not in inits}


def empty_like(model: ModelProto) -> ModelProto:
    """A model with ``model``'s ir_version, opsets and graph name and nothing else: the start of a derived
    model used only for inference (its metadata does not matter there)."""
    out = ModelProto()
    out.ir_version = model.ir_version
    out.opset_import.extend(model.opset_import)
    out.graph.name = model.graph.name
    return out


def dim_key(input_name: str, axis: int) -> str:
    """The ``dims`` key of one axis of one input, ``"input_ids:1"`` (``--dim input_ids:1=16``)."""
    return f"{input_name}:{axis}"


def lookup_dim(dims: Mapping[str, int], input_name: str, axis: int, dim: int | str | None) -> int | None:
    """The value ``dims`` gives one dynamic axis of a graph input, or None.

    Keys, most specific first: ``INPUT:AXIS`` (axis index), ``INPUT:NAME`` (the axis' dim name), ``NAME``.
    The first two address dims a name cannot (unnamed, ``-1``, or one ``?`` used for several axes).
    """
    for key in (dim_key(input_name, axis), f"{input_name}:{dim}" if isinstance(dim, str) and dim else None,
                dim if isinstance(dim, str) and dim else None):
        if key is not None and key in dims:
            return int(dims[key])
    return None


def shape_skeleton(model: ModelProto, dims: Mapping[str, int] | None = None, default_dim: int = 1, *,
                   value_info: Iterable[str] = (), keep_symbolic: bool = False) -> ModelProto:
    """A weightless copy of ``model`` for cheap shape inference.

    Large float initializers become typed graph inputs (their values are never needed to infer shapes),
    so copying and inferring stays fast on 100 MB models. Dynamic input dims are fixed from ``dims``
    (see :func:`lookup_dim`) or ``default_dim``, unless ``keep_symbolic``.

    Args:
        model: the model (not modified).
        dims: values of dynamic input dims, by name or ``INPUT:AXIS`` (:func:`lookup_dim`).
        default_dim: value of the other dynamic input dims.
        keep_symbolic: leave dynamic dims as declared, so inferred shapes keep their symbolic names (what
            a saved model's ``value_info`` must say: a batch fixed to 1 there pins the output's shape).
        value_info: names of tensors whose declared ``value_info`` shape is copied in. Only name tensors
            that inference leaves unknown (:func:`infer_static_shapes` does): onnx lets a declared shape win
            over an inferred one, so copying all of them would let a stale export override the truth.
            Their symbolic dims named like an input dim get that input's fixed value.
    """
    dims = dims or {}
    skel = empty_like(model)
    g = skel.graph
    g.node.extend(model.graph.node)
    retag_default_domain(skel)  # onnxruntime's default-domain fused norms, which onnx does not know
    g.output.extend(model.graph.output)
    _clear_negative_dims(g.output)
    inits = {t.name for t in model.graph.initializer}
    fixed: dict[str, int] = {}
    clashing: set[str] = set()
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        new = g.input.add()
        new.CopyFrom(inp)
        _clear_negative_dims([new])
        if new.type.HasField("tensor_type") and not keep_symbolic:
            for axis, d in enumerate(new.type.tensor_type.shape.dim):
                if is_fixed_dim(d):
                    continue
                name = d.dim_param if d.HasField("dim_param") else None
                value = lookup_dim(dims, inp.name, axis, name)
                value = default_dim if value is None else value
                if name:
                    if fixed.setdefault(name, int(value)) != int(value):
                        clashing.add(name)  # one '?' for several axes: its value is no one value
                d.Clear()
                d.dim_value = int(value)
    for name in clashing:
        del fixed[name]
    wanted = set(value_info)
    for vi in model.graph.value_info:
        if vi.name in wanted:
            new = g.value_info.add()
            new.CopyFrom(vi)
            _clear_negative_dims([new])
            for d in new.type.tensor_type.shape.dim if new.type.HasField("tensor_type") else ():
                if d.HasField("dim_param") and d.dim_param in fixed and not keep_symbolic:
                    value = fixed[d.dim_param]
                    d.Clear()
                    d.dim_value = value
    for t in model.graph.initializer:
        numel = int(np.prod(t.dims)) if len(t.dims) else 1
        # an integer table stored externally (a vocabulary's id map) too: onnx would try to read its values
        # as shape data and fail ("Cannot parse data from external tensors")
        if (numel > 64 and t.data_type in FLOAT_TYPES) or t.data_location == TensorProto.EXTERNAL:
            g.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
        else:
            g.initializer.append(t)
    return skel


def _clear_negative_dims(values: Iterable[onnx.ValueInfoProto]) -> None:
    """Make declared ``-1`` dims unknown (in a skeleton only), so onnx never meets them as sizes."""
    for vi in values:
        if vi.type.HasField("tensor_type"):
            for d in vi.type.tensor_type.shape.dim:
                if d.HasField("dim_value") and d.dim_value < 0:
                    d.Clear()


#: Evaluates runtime shape arithmetic on an inferred skeleton: ``(skeleton, shapes) -> shapes``.
ShapeFolder = Callable[[ModelProto, dict[str, Shape]], dict[str, Shape]]


def infer_static_shapes(model: ModelProto, dims: Mapping[str, int] | None = None, default_dim: int = 1,
                        strict: bool = False, folder: ShapeFolder | None = None) -> dict[str, Shape]:
    """Shapes of every tensor (inputs, intermediates, outputs, initializers) after shape inference.

    ``folder`` evaluates runtime shape arithmetic (``Shape -> Gather -> Div -> Reshape``) at the fixed input
    dims, so tensors after such reshapes get static shapes too. It is passed in rather than imported because
    shape folding is a use of the IR, not part of it: :func:`onnxprune.core.shapefold.infer_shapes` is the
    entry point that passes it.

    Shapes the model declares in ``value_info`` are used where inference gives nothing (after an op onnx
    does not know, such as a custom-domain op), never over an inferred shape: each round copies in the
    declared shapes of the outputs of nodes whose inputs are all known but whose outputs are not, and
    infers again, so the declared shape of a custom op's output carries inference on past it.

    Raises:
        UnsupportedModelError: with ``strict=True``, when inference fails.
    """
    declared = {vi.name: d for vi in model.graph.value_info if (d := shape_of_type(vi.type)) is not None}
    used: set[str] = set()
    fused: dict[str, onnx.ValueInfoProto] = {}  # outputs of onnxruntime's fused ops, sized by contrib_shapes
    skel = shape_skeleton(model, dims, default_dim)
    inferred = _infer(skel, strict)
    shapes = collect_shapes(inferred)
    while True:
        while True:
            frontier = _declared_frontier(model, shapes, declared) if declared else set()
            grown = _fused_frontier(model, shapes, collect_types(inferred), fused)
            if not frontier and not grown:
                break
            used |= frontier
            for name in frontier:
                del declared[name]
            skel, inferred, shapes = _reinfer(model, dims, default_dim, strict, used, fused)
        if folder is not None:
            shapes = folder(skel, shapes)
        # folding can size the input of a fused op (a Reshape to a runtime target before it): size it, go on
        if folder is None or not _fused_frontier(model, shapes, collect_types(inferred), fused):
            break
        skel, inferred, shapes = _reinfer(model, dims, default_dim, strict, used, fused)
    for node in model.graph.node:
        if node.op_type == "Constant":
            value = constant_node_value(node)
            if value is not None:
                shapes[node.output[0]] = tuple(value.shape)
    return shapes


def _reinfer(model: ModelProto, dims: Mapping[str, int] | None, default_dim: int, strict: bool, used: set[str],
             fused: dict[str, onnx.ValueInfoProto]) -> tuple[ModelProto, ModelProto, dict[str, Shape]]:
    """A skeleton with the declared shapes in ``used`` and the fused ops' outputs, inferred."""
    skel = shape_skeleton(model, dims, default_dim, value_info=used - set(fused))
    skel.graph.value_info.extend(fused.values())
    inferred = _infer(skel, strict)
    return skel, inferred, collect_shapes(inferred)


def _infer(skel: ModelProto, strict: bool) -> ModelProto:
    """One onnx inference pass over a skeleton (the skeleton itself when inference fails, unless strict)."""
    try:
        return onnx.shape_inference.infer_shapes(skel, strict_mode=strict, data_prop=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as exc:
        if strict:
            raise UnsupportedModelError(f"shape inference failed: {str(exc).splitlines()[0]}") from exc
        return skel


def collect_types(inferred: ModelProto) -> dict[str, int]:
    """The element type of every tensor an inferred model types."""
    types = {t.name: int(t.data_type) for t in inferred.graph.initializer}
    for vi in itertools.chain(inferred.graph.input, inferred.graph.value_info, inferred.graph.output):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            types[vi.name] = int(vi.type.tensor_type.elem_type)
    return types


def _is_static(shape: Shape | None) -> bool:
    return shape is not None and all(isinstance(d, int) and d >= 0 for d in shape)


def _known_dims(shape: Shape | None) -> int:
    """How many dims of a shape are sizes (-1: no shape at all)."""
    return -1 if shape is None else sum(1 for d in shape if isinstance(d, int) and d >= 0)


def _fused_frontier(model: ModelProto, shapes: dict[str, Shape], types: dict[str, int],
                    fused: dict[str, onnx.ValueInfoProto]) -> bool:
    """Declare (in ``fused``) the outputs of onnxruntime's fused ops that inference left unknown and
    :func:`onnxprune.core.contrib_shapes.contrib_outputs` can size from known inputs; True when any was added."""
    grown = False
    for node in model.graph.node:
        if node.domain in ("", "ai.onnx") and node.op_type not in CONTRIB_DEFAULT_DOMAIN:
            continue
        if all(not o or _is_static(shapes.get(o)) for o in node.output):
            continue
        for name, (elem, shape) in contrib_outputs(node, shapes, types).items():
            # more sizes beat fewer: what the optimizer declared ('unk__4' batch dims), or an earlier round's
            # answer from inputs that folding has sized since
            had = shape_of_type(fused[name].type) if name in fused else shapes.get(name)
            if _known_dims(shape) > _known_dims(had):
                fused[name] = helper.make_tensor_value_info(name, elem, list(shape))
                grown = True
    return grown


def collect_shapes(inferred: ModelProto) -> dict[str, Shape]:
    """The shape of every tensor an inferred model types (inputs, value_info, outputs, initializers)."""
    shapes: dict[str, Shape] = {}
    for vi in itertools.chain(inferred.graph.input, inferred.graph.value_info, inferred.graph.output):
        d = shape_of_type(vi.type)
        if d is not None:
            shapes[vi.name] = d
    for t in inferred.graph.initializer:
        shapes[t.name] = tuple(int(x) for x in t.dims)
    return shapes


def _declared_frontier(model: ModelProto, shapes: dict[str, Shape], declared: dict[str, Shape]) -> set[str]:
    """Declared tensors that inference left unknown although every input of their producer is known.

    A partially inferred shape counts as unknown only when the declared one has the same rank and agrees
    on every inferred dim (so a declaration never contradicts inference).
    """
    frontier: set[str] = set()
    for node in model.graph.node:
        if not all(i in shapes for i in node.input if i):
            continue
        for out in node.output:
            if out not in declared:
                continue
            have, want = shapes.get(out), declared[out]
            if have is None or (len(have) == len(want) and not all(isinstance(h, int) for h in have)
                                and all(not isinstance(h, int) or h == w for h, w in zip(have, want, strict=True))):
                frontier.add(out)
    return frontier



def matches_any(names: str | Iterable[str], patterns: Iterable[str]) -> bool:
    """Shell-style, case-sensitive match of one name (or any of several) against ``--exclude``-style patterns.

    One matcher for every option that selects layers by name (exclude, layer sparsity), so they can never
    disagree on what a pattern means.
    """
    candidates = [names] if isinstance(names, str) else list(names)
    return any(fnmatch.fnmatchcase(n, p) for p in patterns for n in candidates)


def replace_input(graph: GraphProto, old: str, new: str) -> None:
    """Every node of ``graph`` that reads ``old`` reads ``new`` instead (subgraphs and graph outputs untouched)."""
    for node in graph.node:
        for k, name in enumerate(node.input):
            if name == old:
                node.input[k] = new


def drop_unused_initializers(graph: GraphProto) -> None:
    """Delete, in place, the initializers no node of ``graph`` reads (its own nodes, not subgraphs').

    Why not ``del graph.initializer[:]`` then ``extend(kept)``: that copies every kept tensor, weights
    included, into the same message, and python protobuf (upb) keeps the old copies until the whole model
    is freed; deleting by position copies nothing.
    """
    used = {i for n in graph.node for i in n.input}
    for i in reversed([i for i, t in enumerate(graph.initializer) if t.name not in used]):
        del graph.initializer[i]
