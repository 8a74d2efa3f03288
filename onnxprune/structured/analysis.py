"""Dependency analysis: which channels must be pruned together.

Why it works at channel level: every slot (an axis of a tensor, weights included) gets one id per
position; op rules emit couplings between positions; connected positions form a *class*, one prunable
channel. That single mechanism handles what index-map juggling gets wrong: Concat offsets, Split and Slice
windows, Flatten blocks, GroupNormalization groups, grouped convolutions, residual merges and weights
shared by several layers (their positions join the classes of every reader, so they are cut consistently
or not at all).

A constant read by several layers and read as a weight by none (an exporter's de-duplicated zero bias or
unit norm scale) gets one slot per reader instead (:mod:`onnxprune.structured.sharing`), so it ties no
layers together; the cut gives readers whose copies differ their own tensor.

Classes that share a *source* (a weight's output axis, where channels are produced) form a
:class:`ChannelGroup`; its root channels are its classes. A blocked slot (graph input or output, an op
without a rule, an unprovable shape) makes every group touching it unprunable, with the reason recorded.

The walk is a worklist over slots (never recursion); unions are done in bulk with numpy, so analysis stays
linear in the graph size.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

import numpy as np
from onnx import ModelProto, NodeProto

from onnxprune.core.batch_axes import analysis_dims
from onnxprune.core.errors import ConfigError, OnnxPruneError, UnsupportedModelError
from onnxprune.core.io import load_model
from onnxprune.core.ir import FLOAT_TYPES, GraphIndex, node_label
from onnxprune.core.quant import QOPERATOR_OPS, quantized_data
from onnxprune.core.shapefold import infer_shapes
from onnxprune.structured.axes import ChannelAxis, Coupling, Identity, IndexMap, compress_map
from onnxprune.structured.quant_sharing import split_quantized
from onnxprune.structured.rules.base import GROUPED_CONV_MODES, Blocked, OpRule, RuleContext
from onnxprune.structured.rules.registry import RuleSet, RuleSpec
from onnxprune.structured.shape_reads import unfollowed
from onnxprune.structured.sharing import ConstVersion, const_versions, reader_key, split_constants

log = logging.getLogger(__name__)

MAX_BLOCKERS = 8


@dataclass(frozen=True)
class ParamCut:
    """A constant axis sliced when its group is cut.

    Attributes:
        tensor: the constant (initializer or Constant-node output; Identity resolved).
        axis: the axis that loses positions.
        role: ``"source"`` (output axis of a weight), ``"sink"`` (input axis of a weight: the layer that
            absorbs the cut) or ``"param"`` (bias, normalization parameters, broadcast constants).
        node: name (or first output) of the node that reads the constant.
        op_type: that node's op type.
        input_index: which input of the node the constant is.
        map: root channel → positions on ``axis``.
        activation: the node's activation slot the cut pairs with (a sink's input, a source's output).
    """

    tensor: str
    axis: int
    role: str
    node: str
    op_type: str
    input_index: int
    map: IndexMap
    activation: ChannelAxis | None = None

    def positions(self, roots: np.ndarray) -> np.ndarray:
        """Positions on :attr:`axis` of the given root channels (e.g. a plan's keep or drop)."""
        return self.map.forward(roots)


@dataclass(frozen=True)
class ChannelGroup:
    """Channels that must go together: ``size`` root channels and where each one lives.

    Attributes:
        id: stable id (order of discovery, producers in graph order).
        size: number of root channels.
        members: every slot holding some of the group's channels → map from roots to its positions.
        cuts: constants sliced with the group (sources, sinks, params).
        blockers: why the group cannot be pruned (empty: prunable).
        nodes: names of the nodes touching the group (for ``exclude`` patterns and reports).
    """

    id: int
    size: int
    members: Mapping[ChannelAxis, IndexMap]
    cuts: tuple[ParamCut, ...]
    blockers: tuple[str, ...]
    nodes: tuple[str, ...] = field(default=())

    @property
    def prunable(self) -> bool:
        return not self.blockers

    @property
    def sources(self) -> tuple[ParamCut, ...]:
        """Producer weight cuts on their output axis."""
        return tuple(c for c in self.cuts if c.role == "source")

    @property
    def sinks(self) -> tuple[ParamCut, ...]:
        """Consumer weight cuts on their input axis (the oracle zeroes these)."""
        return tuple(c for c in self.cuts if c.role == "sink")


class DependencyGraph:
    """The result of :func:`analyze`; read-only once built.

    Attributes:
        groups: every channel group, prunable or not, indexed by id.
        fingerprint: structural hash of the analysed model (plans carry it).
        slot_sizes: size of every slot the analysis reached.
        const_shapes: shape of every constant the analysis may slice.
        unanalysed: layers whose output channels could not even be sized (so they form no group), each
            with the reason; they are never pruned.
        split: shared constants each reader has its own slots of → their readers' keys
            (:mod:`onnxprune.structured.sharing`).
        grouped_conv: how grouped convolutions were analysed (``within`` or ``whole``); plans record it.
    """

    def __init__(self, *, groups: tuple[ChannelGroup, ...], fingerprint: str,
                 slot_sizes: dict[ChannelAxis, int], slot_base: dict[ChannelAxis, int],
                 pos_group: np.ndarray, pos_root: np.ndarray, const_shapes: dict[str, tuple[int, ...]],
                 const_counted: dict[str, bool | str], shapes: dict[str, tuple],
                 unanalysed: tuple[str, ...] = (), split: Mapping[str, tuple[str, ...]] | None = None,
                 grouped_conv: str = "within") -> None:
        self.groups = groups
        self.fingerprint = fingerprint
        self.slot_sizes = MappingProxyType(slot_sizes)
        self._base = slot_base
        pos_group.flags.writeable = False
        pos_root.flags.writeable = False
        self._pos_group = pos_group
        self._pos_root = pos_root
        self.const_shapes = MappingProxyType(const_shapes)
        self._const_counted = const_counted
        self.shapes = MappingProxyType(shapes)
        self.unanalysed = unanalysed
        self.split = MappingProxyType(dict(split or {}))
        self.grouped_conv = grouped_conv
        self._slots: tuple[list[ChannelAxis], np.ndarray, np.ndarray] | None = None
        self._groups_index: tuple[np.ndarray, list[np.ndarray]] | None = None

    # -- queries -----------------------------------------------------------------------------------
    @property
    def prunable_groups(self) -> tuple[ChannelGroup, ...]:
        return tuple(g for g in self.groups if g.prunable)

    def group_of(self, axis: ChannelAxis) -> tuple[int, ...]:
        """Ids of the groups holding positions of a slot (empty when the analysis never reached it)."""
        if axis not in self._base:
            return ()
        b = self._base[axis]
        return tuple(int(g) for g in np.unique(self._pos_group[b:b + self.slot_sizes[axis]]))

    def kept_positions(self, keep: Mapping[int, np.ndarray]) -> dict[ChannelAxis, np.ndarray]:
        """Kept positions of every slot that loses some, given kept roots per group id."""
        offsets, group_slots = self._group_index()
        root_kept = np.ones(int(offsets[-1]), dtype=bool)
        touched: list[np.ndarray] = []
        for gid, roots in keep.items():
            mask = np.zeros(self.groups[gid].size, dtype=bool)
            mask[np.asarray(roots, dtype=np.int64)] = True
            if not mask.all():
                root_kept[offsets[gid]:offsets[gid + 1]] = mask
                touched.append(group_slots[gid])
        result: dict[ChannelAxis, np.ndarray] = {}
        if not touched:
            return result
        # only slots holding positions of a cut group can lose some (budgets and sensitivity ask this for
        # hundreds of single-group cuts); ascending slot order, as the analysis made them
        slots, starts, ends = self._slot_table()
        for i in np.unique(np.concatenate(touched)):
            a, b = starts[i], ends[i]
            pos_kept = root_kept[offsets[self._pos_group[a:b]] + self._pos_root[a:b]]
            if not pos_kept.all():
                result[slots[i]] = np.flatnonzero(pos_kept).astype(np.int64)
        return result

    def _group_index(self) -> tuple[np.ndarray, list[np.ndarray]]:
        """Root offset of every group, and the slots (indices into :meth:`_slot_table`) holding each
        group's positions (built once)."""
        if self._groups_index is None:
            offsets = np.concatenate([[0], np.cumsum([g.size for g in self.groups])]).astype(np.int64)
            _, starts, ends = self._slot_table()
            per_group: list[list[int]] = [[] for _ in self.groups]
            for i, (a, b) in enumerate(zip(starts, ends, strict=True)):
                for gid in np.unique(self._pos_group[a:b]):
                    per_group[int(gid)].append(i)
            group_slots = [np.asarray(s, dtype=np.int64) for s in per_group]
            self._groups_index = (offsets, group_slots)
        return self._groups_index

    def const_versions(self, keep: Mapping[int, np.ndarray]) -> dict[str, list[ConstVersion]]:
        """The stored versions of every constant the cut changes (one, or one per distinct cut of a shared
        constant's readers; see :func:`onnxprune.structured.sharing.const_versions`)."""
        return const_versions(self.kept_positions(keep), self.const_shapes, self.split)

    def _slot_table(self) -> tuple[list[ChannelAxis], np.ndarray, np.ndarray]:
        """Slots in analysis order with their position ranges ``[start, end)`` (built once)."""
        if self._slots is None:
            slots = list(self._base)
            starts = np.array([self._base[s] for s in slots], dtype=np.int64)
            ends = starts + np.array([self.slot_sizes[s] for s in slots], dtype=np.int64)
            self._slots = (slots, starts, ends)
        return self._slots

    def params_removed(self, keep: Mapping[int, np.ndarray]) -> int:
        """Exactly how many parameters (as ``stats.count_params`` counts them) the cut removes.

        A shared constant whose readers need different cuts is stored once per version, so its count can
        grow: that is counted too.
        """
        removed = 0
        for name, versions in self.const_versions(keep).items():
            shape = self.const_shapes[name]
            sizes = [int(np.prod(v.shape(shape), dtype=np.int64)) for v in versions]
            before = int(np.prod(shape, dtype=np.int64))
            counted = self._const_counted.get(name, False)
            if counted == "constant":  # Constant nodes count only when larger than a scalar
                removed += (before if before > 1 else 0) - sum(n for n in sizes if n > 1)
            elif counted:
                removed += before - sum(sizes)
        return removed

    # -- reports -----------------------------------------------------------------------------------
    def explain(self, group_id: int) -> str:
        """A readable description of one group: size, status, sources, sinks, members, blockers."""
        if not 0 <= group_id < len(self.groups):
            raise OnnxPruneError(f"no group {group_id}; the model has groups 0..{len(self.groups) - 1}")
        g = self.groups[group_id]
        lines = [f"group {g.id}: {g.size} channels, " + ("prunable" if g.prunable else "blocked")]
        for title, cuts in (("sources", g.sources), ("sinks", g.sinks)):
            lines.append(f"  {title}:")
            lines.extend(f"    {c.tensor}[axis {c.axis}] of '{c.node}' ({c.op_type}): {c.map}" for c in cuts)
            if not cuts:
                lines.append("    (none)")
        lines.append("  members:")
        lines.extend(f"    {s}: {m}" for s, m in g.members.items())
        if g.blockers:
            lines.append("  blocked because:")
            lines.extend(f"    {b}" for b in g.blockers)
        return "\n".join(lines)

    def summary(self) -> str:
        """One line per group: id, size, status, first source and first blocker."""
        lines = [f"{len(self.groups)} channel groups, {len(self.prunable_groups)} prunable"]
        for g in self.groups:
            src = g.sources[0].node if g.sources else "-"
            status = "prunable" if g.prunable else f"blocked: {g.blockers[0]}"
            lines.append(f"  [{g.id}] {g.size:5d} ch  from {src}  {status}")
        lines.extend(f"  not analysed: {reason}" for reason in self.unanalysed)
        return "\n".join(lines)


# -- fingerprint -------------------------------------------------------------------------------------
def model_fingerprint(model: ModelProto) -> str:
    """A structural hash: nodes, constant names/shapes/types, graph inputs and outputs (not weight values).

    Two models with the same fingerprint have the same groups, so a plan made for one applies to the other.
    """
    h = hashlib.sha256()
    for node in model.graph.node:
        if node.op_type == "Constant":
            h.update(node.output[0].encode())
            continue
        h.update(node.SerializeToString())
    for t in model.graph.initializer:
        h.update(f"{t.name}:{t.data_type}:{list(t.dims)};".encode())
    for vi in list(model.graph.input) + list(model.graph.output):
        h.update(vi.SerializeToString())
    for imp in model.opset_import:
        h.update(f"{imp.domain}:{imp.version};".encode())
    return h.hexdigest()[:32]


# -- union of positions ------------------------------------------------------------------------------
def connected_components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Label of every id ``0..n-1`` (the smallest id of its component) given edges ``a[k]--b[k]``.

    Hook-and-compress in bulk with numpy: each round hooks larger roots under smaller ones, then jumps
    pointers until every id points at its root; a handful of rounds suffice on network graphs.
    """
    parent = np.arange(n, dtype=np.int64)
    if len(a) == 0:
        return parent
    while True:
        pa, pb = parent[a], parent[b]
        differ = pa != pb
        if not differ.any():
            return parent
        lo = np.minimum(pa[differ], pb[differ])
        hi = np.maximum(pa[differ], pb[differ])
        np.minimum.at(parent, hi, lo)
        while True:
            nxt = parent[parent]
            if np.array_equal(nxt, parent):
                break
            parent = nxt


# -- the walk ----------------------------------------------------------------------------------------
class _Walk:
    """State of one analysis: slots discovered, edges, cuts and blockers."""

    def __init__(self, model: ModelProto, rules: RuleSet, shapes: dict[str, tuple], *,
                 grouped_conv: str = "within") -> None:
        self.model = model
        self.index = GraphIndex(model)
        self.rules = rules
        self.ctx = RuleContext(self.index, shapes, grouped_conv=grouped_conv)
        self.base: dict[ChannelAxis, int] = {}
        self.sizes: dict[ChannelAxis, int] = {}
        self.total = 0
        self.queue: deque[ChannelAxis] = deque()
        self.edges_a: list[np.ndarray] = []
        self.edges_b: list[np.ndarray] = []
        self.blocked: dict[ChannelAxis, list[str]] = {}
        self.cuts: list[tuple[ChannelAxis, str, NodeProto, int, ChannelAxis]] = []
        self.touch: list[tuple[ChannelAxis, str]] = []
        self.done: set[tuple[int, ChannelAxis]] = set()
        self.outputs = set(self.index.graph_outputs)
        self.inputs = set(self.index.graph_inputs)
        self.source_slots: list[ChannelAxis] = []
        self.unanalysed: list[str] = []
        self.split = split_constants(self.index, rules, self.ctx)
        order = {id(n): i for i, n in enumerate(self.index.graph.node)}
        quant_split, self.shared_dq = split_quantized(self.index, rules, self.ctx, order)
        for name, readers in quant_split.items():
            self.split.setdefault(name, readers)

    def own_copy(self, s: ChannelAxis, node: NodeProto, via: str = "") -> ChannelAxis:
        """``s`` as ``node`` reads it: its own copy's slot when ``s`` is a split shared constant (``via``: the
        reader a shared quantized constant's DequantizeLinear is analysed for)."""
        return ChannelAxis(s.tensor, s.axis, via or reader_key(node)) if s.tensor in self.split else s

    def not_analysed(self, reason: str) -> None:
        """A layer whose channels could not even be sized: no group, so the reason is kept on the graph."""
        log.warning("analysis: %s", reason)
        self.unanalysed.append(reason)

    def block(self, s: ChannelAxis, reason: str) -> None:
        reasons = self.blocked.setdefault(s, [])
        if reason not in reasons:
            reasons.append(reason)

    def add_slot(self, s: ChannelAxis, size: int | None = None) -> None:
        """Number the positions of a slot; ``size`` (proven by a coupling) serves when its axis is unknown."""
        if s in self.base:
            return
        try:
            n = self.ctx.dim(s.tensor, s.axis)
        except Blocked:
            if size is None:
                raise
            n = size
        self.base[s] = self.total
        self.sizes[s] = n
        self.total += n
        self.queue.append(s)

    def add_coupling(self, c: Coupling) -> None:
        """Add both slots of a coupling.

        An :class:`Identity` coupling says position ``i`` of one slot is position ``i`` of the other, so the
        axes have the same size: when inference left one side unknown (past a custom-domain op) the other
        side's size proves it. Any other map needs both sizes.
        """
        missing: list[tuple[ChannelAxis, Blocked]] = []
        for s in (c.a, c.b):
            try:
                self.add_slot(s)
            except Blocked as exc:
                missing.append((s, exc))
        if not missing:
            return
        if len(missing) == 1 and isinstance(c.map, Identity):
            s, _ = missing[0]
            other = c.b if s == c.a else c.a
            self.add_slot(s, self.sizes[other])
            return
        raise missing[0][1]

    def proven_size(self, node: NodeProto, rule: OpRule, s: ChannelAxis) -> int | None:
        """The size of a seed slot whose axis inference left unknown, read from an Identity-coupled constant."""
        try:
            couplings = rule.couplings(node, s, self.ctx)
        except Blocked:
            return None
        for c in couplings:
            if isinstance(c.map, Identity) and s in (c.a, c.b):
                other = c.b if s == c.a else c.a
                if self.ctx.is_const(other.tensor):
                    try:
                        return self.ctx.dim(other.tensor, other.axis)
                    except Blocked:
                        continue
        return None

    def neighbours(self, s: ChannelAxis) -> list[NodeProto]:
        idx = self.index
        name = s.tensor
        if s.reader and s.tensor in self.shared_dq:  # a reader's copy of a shared quantized constant
            return [self.shared_dq[s.tensor]]
        if s.reader:  # one reader's copy of a split constant (never a graph input or output)
            return [n for n in idx.const_readers(name) if reader_key(n) == s.reader][:1]
        if name in idx.initializers or name in idx.constant_nodes:
            aliases = [name]
            stack = [name]
            while stack:  # Identity copies of a constant that are graph outputs would change
                t = stack.pop()
                for node in idx.consumers.get(t, []):
                    if node.op_type == "Identity":
                        stack.append(node.output[0])
                        aliases.append(node.output[0])
            for alias in aliases:
                if alias in self.outputs:
                    self.block(s, f"constant '{name}' is a graph output (as '{alias}')")
            if name in idx.initializers and name in {i.name for i in idx.graph.input}:
                log.debug("initializer %s is also a graph input; its declared shape will follow the cut", name)
            return self.ctx.const_readers(name)  # through Identity and a quantized weight's DequantizeLinear
        if name in self.inputs:
            self.block(s, f"'{name}' is a graph input; its shape is part of the model's interface")
        if name in self.outputs:
            self.block(s, f"'{name}' is a graph output; cutting it would change the model's outputs")
        nodes: list[NodeProto] = []
        if name in idx.producer:
            nodes.append(idx.producer[name])
        nodes.extend(idx.consumers.get(name, []))
        return nodes

    def visit(self, s: ChannelAxis) -> None:
        for node in self.neighbours(s):
            key = (id(node), s)
            if key in self.done:
                continue
            self.done.add(key)
            rule = self.rules.lookup(node.domain, node.op_type, self.index.opset)
            label = node_label(node)
            if rule is None:
                self.block(s, f"{label}: no rule for op '{node.op_type}' (opset {self.index.opset}) reading or "
                              f"writing '{s.tensor}'; pass extra_rules= to teach onnxprune")
                continue
            via = s.reader if s.reader and self.shared_dq.get(s.tensor) is node else ""
            try:
                couplings = [replace(c, a=self.own_copy(c.a, node, via), b=self.own_copy(c.b, node, via))
                             for c in rule.couplings(node, s.plain, self.ctx)]
                for c in couplings:
                    self.add_coupling(c)
            except Blocked as exc:
                self.block(s, f"{label} on {s}: {exc}")
                continue
            node_name = node.name or node.output[0]
            for c in couplings:
                self.done.add((id(node), c.a))
                self.done.add((id(node), c.b))
                ra, pb = c.map.pairs(self.sizes[c.a])
                if len(ra) and (ra.max() >= self.sizes[c.a] or pb.max() >= self.sizes[c.b] or pb.min() < 0):
                    self.block(s, f"{label}: coupling {c.a} -> {c.b} ({c.map}) does not fit the shapes")
                    continue
                self.edges_a.append(ra + self.base[c.a])
                self.edges_b.append(pb + self.base[c.b])
                self.touch.append((c.a, node_name))
                if c.role:
                    self.cuts.append((c.b, c.role, node, c.input_index, c.a))
                    if c.role == "source":
                        self.source_slots.append(c.b)

    def run(self) -> None:
        for node in self.index.graph.node:
            rule = self.rules.lookup(node.domain, node.op_type, self.index.opset)
            if rule is None:
                if node.op_type in QOPERATOR_OPS:  # a quantized layer onnxprune cannot cut: say so, never skip silently
                    self.not_analysed(f"{node_label(node)} is a QOperator-format op, which onnxprune does not "
                                      f"prune; quantize with QuantFormat.QDQ instead")
                continue
            label = node_label(node)
            try:
                seeds = rule.seeds(node, self.ctx)
            except Blocked as exc:
                self.not_analysed(f"{label}: its output channels were not analysed: {exc}")
                continue
            for s in seeds:
                try:
                    self.add_slot(s)
                except Blocked as exc:
                    size = self.proven_size(node, rule, s)
                    if size is None:
                        self.not_analysed(f"{label}: output channels {s} were not analysed: {exc}")
                        continue
                    self.add_slot(s, size)
            while self.queue:
                self.visit(self.queue.popleft())


#: Ops whose first output has the shape of their first input, for when onnx's inference leaves it unknown
#: (function ops such as GroupNormalization-21 are not always inferred).
SAME_SHAPE_OPS = frozenset({"GroupNormalization", "InstanceNormalization", "LayerNormalization", "BatchNormalization",
                            "Gelu", "Mish", "HardSwish", "Relu", "Sigmoid", "Identity", "Dropout", "LRN"})


def _fill_same_shape(model: ModelProto, shapes: dict[str, tuple]) -> dict[str, tuple]:
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            continue  # a custom-domain op may share a standard op's name, not its semantics: never guess
        if node.op_type in SAME_SHAPE_OPS and node.input and node.output and node.output[0] not in shapes:
            if node.input[0] in shapes:
                shapes[node.output[0]] = shapes[node.input[0]]
    return shapes


def analyze(model: ModelProto | str | os.PathLike[str], *, extra_rules: Iterable[RuleSpec] = (),
            dims: dict[str, int] | None = None, grouped_conv: str = "within") -> DependencyGraph:
    """Find the channel groups of a model.

    Args:
        model: a ``ModelProto`` (not modified) or a path.
        extra_rules: :class:`~onnxprune.structured.rules.registry.RuleSpec` entries that add or override op rules for
            this analysis only.
        dims: values for symbolic input dims (by name) used in shape inference; others are taken as 1, and so
            is every dynamic batch axis whatever ``dims`` says, so the groups never depend on the batch
            (:func:`~onnxprune.core.batch_axes.analysis_dims`).
        grouped_conv: ``"within"`` (default) cuts grouped convolutions inside every group, keeping
            ``group``; ``"whole"`` removes whole groups (see :mod:`onnxprune.structured.rules.weighted`).

    Returns:
        The :class:`DependencyGraph`.

    Raises:
        UnsupportedModelError: the graph has no nodes.
        ConfigError: ``grouped_conv`` is neither ``within`` nor ``whole``.

    Example:
        >>> dg = analyze("model.onnx")  # doctest: +SKIP
        >>> print(dg.summary())  # doctest: +SKIP
    """
    if grouped_conv not in GROUPED_CONV_MODES:
        raise ConfigError(f"grouped_conv must be one of {', '.join(GROUPED_CONV_MODES)}, got {grouped_conv!r}")
    if not isinstance(model, ModelProto):
        model = load_model(model)
    if not model.graph.node:
        raise UnsupportedModelError("the model has no nodes; nothing to analyse")
    rules = RuleSet(extra_rules)
    shapes = _fill_same_shape(model, infer_shapes(model, analysis_dims(model, dims)))  # batch-free groups
    walk = _Walk(model, rules, shapes, grouped_conv=grouped_conv)
    walk.run()
    return _build(walk, model)


def _build(walk: _Walk, model: ModelProto) -> DependencyGraph:
    n = walk.total
    ea = np.concatenate(walk.edges_a) if walk.edges_a else np.zeros(0, np.int64)
    eb = np.concatenate(walk.edges_b) if walk.edges_b else np.zeros(0, np.int64)
    labels = connected_components(n, ea, eb)
    _, cls = np.unique(labels, return_inverse=True)
    n_cls = int(cls.max()) + 1 if n else 0
    cls = cls.astype(np.int64)

    # Group classes: classes sharing a source slot are one group; classes with no source are grouped
    # per slot and blocked (their channels are not produced by any prunable layer).
    has_source = np.zeros(n_cls, dtype=bool)
    ga: list[np.ndarray] = []
    gb: list[np.ndarray] = []
    for s in dict.fromkeys(walk.source_slots):
        c = np.unique(cls[walk.base[s]:walk.base[s] + walk.sizes[s]])
        has_source[c] = True
        ga.append(c[:-1])
        gb.append(c[1:])
    for s, base in walk.base.items():
        c = np.unique(cls[base:base + walk.sizes[s]])
        c = c[~has_source[c]]
        if len(c) > 1:
            ga.append(c[:-1])
            gb.append(c[1:])
    glabel = connected_components(n_cls, np.concatenate(ga) if ga else np.zeros(0, np.int64),
                                  np.concatenate(gb) if gb else np.zeros(0, np.int64))
    # Stable ids: groups and roots in order of first appearance (slots are numbered in walk order).
    first = np.full(n_cls, n, dtype=np.int64)
    np.minimum.at(first, cls, np.arange(n, dtype=np.int64))
    gfirst = np.full(n_cls, n, dtype=np.int64)
    np.minimum.at(gfirst, glabel, first)
    order = np.lexsort((first, gfirst[glabel]))  # classes sorted by (group first, class first)
    group_keys, group_of_sorted = np.unique(gfirst[glabel][order], return_inverse=True)
    class_group = np.empty(n_cls, dtype=np.int64)
    class_group[order] = group_of_sorted
    starts = np.searchsorted(group_of_sorted, np.arange(len(group_keys)))
    class_root = np.empty(n_cls, dtype=np.int64)
    class_root[order] = np.arange(n_cls) - starts[group_of_sorted]
    sizes = np.bincount(class_group, minlength=len(group_keys))
    pos_group = class_group[cls]
    pos_root = class_root[cls]

    n_groups = len(group_keys)
    members: list[dict[ChannelAxis, IndexMap]] = [{} for _ in range(n_groups)]
    slot_groups: dict[ChannelAxis, np.ndarray] = {}
    for s, base in walk.base.items():
        g = pos_group[base:base + walk.sizes[s]]
        r = pos_root[base:base + walk.sizes[s]]
        present = np.unique(g)
        slot_groups[s] = present
        for gid in present:
            pos = np.flatnonzero(g == gid).astype(np.int64)
            members[int(gid)][s] = compress_map(pos, r[pos], int(sizes[int(gid)]))
    for s, reason in unfollowed(walk.ctx.size_reads, walk.base, walk.sizes, cls):  # shape reads proven on classes
        walk.block(s, reason)
    blockers: list[list[str]] = [[] for _ in range(n_groups)]
    for s, reasons in walk.blocked.items():
        for gid in slot_groups.get(s, ()):
            for reason in reasons:
                if reason not in blockers[int(gid)] and len(blockers[int(gid)]) < MAX_BLOCKERS:
                    blockers[int(gid)].append(reason)
    orphan_groups = np.unique(class_group[~has_source])
    for gid in orphan_groups:
        first_slot = next(iter(members[int(gid)]))
        blockers[int(gid)].append(f"channels of {first_slot} are not produced by a layer with constant weights")
    cuts: list[list[ParamCut]] = [[] for _ in range(n_groups)]
    seen_cut: set[tuple] = set()
    for s, role, node, input_index, act in walk.cuts:
        for gid in slot_groups[s]:
            key = (int(gid), s, id(node), input_index)
            if key in seen_cut:
                continue
            seen_cut.add(key)
            cuts[int(gid)].append(ParamCut(s.tensor, s.axis, role, node.name or node.output[0], node.op_type,
                                           input_index, members[int(gid)][s], act))
    nodes: list[dict[str, None]] = [{} for _ in range(n_groups)]
    for s, node_name in walk.touch:
        for gid in slot_groups[s]:
            nodes[int(gid)][node_name] = None
    groups = tuple(
        ChannelGroup(id=i, size=int(sizes[i]), members=MappingProxyType(members[i]), cuts=tuple(cuts[i]),
                     blockers=tuple(blockers[i]), nodes=tuple(nodes[i]))
        for i in range(n_groups)
    )
    index = walk.index
    const_shapes: dict[str, tuple[int, ...]] = {}
    counted: dict[str, bool | str] = {}
    quant = quantized_data(index)  # integer weights of a QDQ model count as parameters (core.stats)
    for s in walk.base:
        name = s.tensor
        if name in index.initializers:
            t = index.initializers[name]
            const_shapes[name] = tuple(int(d) for d in t.dims)
            counted[name] = t.data_type in FLOAT_TYPES or name in quant
        elif name in index.constant_nodes:
            value = index.const_value(name)
            if value is not None:
                const_shapes[name] = tuple(value.shape)
                counted[name] = "constant" if value.dtype.kind == "f" else False
    log.info("analysis: %d slots, %d positions, %d groups (%d prunable)", len(walk.base), n, n_groups,
             sum(1 for g in groups if g.prunable))
    return DependencyGraph(groups=groups, fingerprint=model_fingerprint(model), slot_sizes=dict(walk.sizes),
                           slot_base=dict(walk.base), pos_group=pos_group, pos_root=pos_root,
                           const_shapes=const_shapes, const_counted=counted,
                           shapes=walk.ctx._shapes, unanalysed=tuple(walk.unanalysed), split=walk.split,
                           grouped_conv=walk.ctx.grouped_conv)
