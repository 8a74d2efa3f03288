"""The op-rule interface and the contexts rules work in.

A rule answers two questions for one node: which positions of its tensors are the same channel
(:meth:`OpRule.couplings`), and which attributes or shape constants must change once channels are gone
(:meth:`OpRule.rewrite`). Rules never touch the graph during analysis; during surgery they edit only their
own node through :class:`RewriteContext`, which copies shared constants before changing them.

A quantized weight (a supported ``DequantizeLinear`` of an int8/uint8 constant) is seen through, like an
``Identity``: :meth:`_Context.slot` names its integer storage, so rules cut the stored tensor in place and
the ``DequantizeLinear`` rule (``quant.py``) slices its per-channel scale and zero point. The model stays
quantized; nothing is folded to float.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from onnx import NodeProto

from onnxprune.core.errors import OnnxPruneError
from onnxprune.core.ir import GraphIndex, attr, attr_ints, node_label, set_attr
from onnxprune.core.quant import Dequantized, quantized_outputs
from onnxprune.core.shapefold import MAX_ELEMENTS, fold_values
from onnxprune.structured.axes import ChannelAxis, Coupling, Identity


class Blocked(Exception):  # noqa: N818 - control flow inside the analysis, never escapes it
    """Raised by a rule when a slot cannot be pruned through its node; the message is the reason."""


class _Context:
    """What both contexts share: the index, attribute reads and the shape of a tensor by name."""

    def __init__(self, index: GraphIndex, shapes: dict[str, tuple]) -> None:
        self.index = index
        self.opset = index.opset
        self._shapes = shapes
        self._dequantized = quantized_outputs(index)
        self._folded: dict[str, np.ndarray] | None = None

    def folded(self, name: str) -> np.ndarray | None:
        """The value of a small integer tensor computed from constants only (``Mod``/``Add``/``Reshape`` of
        constants, as torch exports ``unflatten`` bounds), else None. Nothing read from a shape is folded, so
        the value holds at every input size."""
        if self._folded is None:
            # Constants are read through the index (at surgery it reads the source's weights), never the model.
            known = {}
            for t in self.index.model.graph.initializer:
                if int(np.prod(t.dims)) <= MAX_ELEMENTS:
                    value = self.index.const_value(t.name)
                    if value is not None:
                        known[t.name] = value
            self._folded = fold_values(self.index.model, {}, known)
        return self._folded.get(name) if name else None

    def quantized(self, name: str) -> Dequantized | None:
        """The supported quantized weight whose DequantizeLinear writes ``name`` (through Identity), else None."""
        dq = self._dequantized.get(self.index.resolve_identity(name)) if name else None
        return dq if dq is not None and not dq.reason else None

    def quant_reason(self, name: str) -> str:
        """Why the quantized weight behind ``name`` cannot be cut in place ('' when it is not one, or can)."""
        dq = self._dequantized.get(self.index.resolve_identity(name)) if name else None
        return dq.reason if dq is not None else ""

    def const_readers(self, name: str) -> list[NodeProto]:
        """Nodes reading the constant ``name``, through Identity and through the DequantizeLinear of a
        quantized weight (the DequantizeLinear itself included, so its scales are cut too)."""
        readers = self.index.const_readers(name)
        extra: list[NodeProto] = []
        for node in readers:
            if node.op_type == "DequantizeLinear" and node.output and self.quantized(node.output[0]) is not None \
                    and self.index.resolve_identity(node.input[0]) == self.index.resolve_identity(name):
                stack = [node.output[0]]
                while stack:
                    for reader in self.index.consumers.get(stack.pop(), []):
                        if reader.op_type == "Identity":
                            stack.append(reader.output[0])
                        else:
                            extra.append(reader)
        return readers + extra

    def attr(self, node: NodeProto, name: str, default: object = None) -> object:
        """An attribute of ``node``, falling back to the op schema default."""
        return attr(node, name, self.opset, default)

    def int_attr(self, node: NodeProto, name: str, default: int | None = None) -> int:
        """An integer attribute (schema default, then ``default``)."""
        value = attr(node, name, self.opset, default)
        if not isinstance(value, int):
            raise Blocked(f"{node_label(node)} has no integer attribute '{name}'")
        return value

    def ints_attr(self, node: NodeProto, name: str) -> list[int]:
        """A list-of-integers attribute (schema default; empty when absent)."""
        return attr_ints(node, name, self.opset)

    def _lookup(self, name: str) -> tuple | None:
        """The shape as known (constants from their value, others from inference); None when unknown."""
        dq = self.quantized(name)
        if dq is not None:
            return self.index.const_shape(dq.data)
        if self.index.is_constant(name):
            return self.index.const_shape(name)
        return self._shapes.get(name)

    def rank(self, name: str) -> int:
        """Rank of a tensor; each context raises its own error when it is unknown."""
        raise NotImplementedError

    def slot(self, name: str, axis: int) -> ChannelAxis:
        """The slot for ``axis`` of ``name`` (negative axes allowed; constants named by their source)."""
        if axis < 0:
            axis += self.rank(name)
        dq = self.quantized(name)
        if dq is not None:
            return ChannelAxis(dq.data, axis)
        if self.index.is_constant(name):
            name = self.index.resolve_identity(name)
        return ChannelAxis(name, axis)


@dataclass(frozen=True)
class SizeRead:
    """A run-time read of the size of axis ``read`` that lands, times ``scale`` and divided by ``divisor``, in
    the shape entry of axis ``into`` (:mod:`onnxprune.structured.shape_reads`). The read follows every cut
    exactly when ``into`` keeps ``scale / divisor`` positions per kept position of ``read``, which the analysis
    checks on the final channel classes; where it does not, the groups of ``blame`` (the side whose cut would
    make the value wrong) are blocked with ``reason``."""

    read: ChannelAxis
    into: ChannelAxis
    scale: int
    blame: ChannelAxis
    reason: str
    divisor: int = 1


#: How grouped convolutions are cut: ``within`` removes the same channels inside every group and keeps
#: ``group`` (DepGraph's way); ``whole`` removes whole groups and lowers ``group``.
GROUPED_CONV_MODES = ("within", "whole")


class RuleContext(_Context):
    """What a rule may read during analysis: shapes, constants and attributes, all by tensor name.

    ``grouped_conv`` is one of :data:`GROUPED_CONV_MODES`.
    """

    def __init__(self, index: GraphIndex, shapes: dict[str, tuple], *, grouped_conv: str = "within") -> None:
        super().__init__(index, shapes)
        self.grouped_conv = grouped_conv
        #: Size reads rules relied on; checked once the channel classes are known (an ordered set).
        self.size_reads: dict[SizeRead, None] = {}

    def shape(self, name: str) -> tuple[int, ...]:
        """The static shape of a tensor; raises :class:`Blocked` when any dim is unknown."""
        shape = self._lookup(name)
        if shape is None or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise Blocked(f"the shape of '{name}' is unknown ({shape}); pass dims= to fix symbolic dims, or declare "
                          f"it in the model's value_info")
        return tuple(int(d) for d in shape)

    def dim(self, name: str, axis: int) -> int:
        """The size of one axis of a tensor; raises :class:`Blocked` when that axis is unknown or out of range.

        The analysis sizes a slot with this, so a tensor whose other dims are unknown (after a custom op)
        still carries channels; rules that need the whole shape ask :meth:`shape`, which stays strict.
        """
        shape = self._lookup(name)
        if shape is not None and not 0 <= axis < len(shape):
            raise Blocked(f"axis {axis} is out of range for '{name}' {shape}")
        if shape is None or not isinstance(shape[axis], int) or shape[axis] < 0:
            raise Blocked(f"the size of axis {axis} of '{name}' is unknown ({shape}); pass dims= to fix symbolic "
                          f"dims, or declare the shape in the model's value_info")
        return int(shape[axis])

    def rank(self, name: str) -> int:
        """Rank of a tensor (needs only the rank to be known)."""
        shape = self._lookup(name)
        if shape is None:
            raise Blocked(f"the rank of '{name}' is unknown; run shape inference or pass dims=")
        return len(shape)

    def is_const(self, name: str) -> bool:
        """A stored constant, or a quantized weight (cut in its integer storage)."""
        return bool(name) and (self.index.is_constant(name) or self.quantized(name) is not None)

    def const(self, name: str) -> np.ndarray:
        """The value of a constant input; raises :class:`Blocked` when it is computed at runtime."""
        value = self.index.const_value(name) if name else None
        if value is None:
            raise Blocked(f"'{name}' is computed at runtime; onnxprune needs it to be a constant")
        return value


class RewriteContext(_Context):
    """What a rule may read and change during surgery.

    ``kept(name, axis)`` gives the kept positions of a slot (all positions when it is not cut), in the
    coordinates of the original model.
    """

    def __init__(self, index: GraphIndex, shapes: dict[str, tuple], kept: dict[ChannelAxis, np.ndarray],
                 set_const: Callable[[NodeProto, int, np.ndarray], None]) -> None:
        super().__init__(index, shapes)
        self._kept = kept
        self._set_const = set_const
        #: scratch space of one surgery, for rewrites done once for several nodes (shared targets)
        self.memo: dict[str, object] = {}

    def shape(self, name: str) -> tuple[int, ...]:
        """Shape in the original model (before the cut).

        Raises:
            OnnxPruneError: the shape is not static; the analysis only lets a rule rewrite nodes whose
                shapes it proved, so this is a bug in the rule.
        """
        shape = self._lookup(name)
        if shape is None or not all(isinstance(d, int) for d in shape):
            raise OnnxPruneError(f"the shape of '{name}' ({shape}) is not static at surgery; this is a bug in an "
                                 f"op rule, please report it with the model")
        return tuple(int(d) for d in shape)

    def rank(self, name: str) -> int:
        """Rank in the original model (raises like :meth:`shape`)."""
        return len(self.shape(name))

    def changed(self, name: str, axis: int) -> bool:
        return self.slot(name, axis) in self._kept

    def kept(self, name: str, axis: int) -> np.ndarray:
        s = self.slot(name, axis)
        if s in self._kept:
            return self._kept[s]
        return np.arange(self.shape(name)[s.axis], dtype=np.int64)

    def new_shape(self, name: str) -> tuple[int, ...]:
        """Shape after the cut."""
        shape = list(self.shape(name))
        for axis in range(len(shape)):
            if self.changed(name, axis):
                shape[axis] = len(self.kept(name, axis))
        return tuple(shape)

    def const(self, name: str) -> np.ndarray:
        """The value of a constant input in the original model.

        Raises:
            OnnxPruneError: ``name`` is computed at runtime; the analysis blocks such slots, so this is a
                bug in the rule.
        """
        value = self.index.const_value(name)
        if value is None:
            raise OnnxPruneError(f"'{name}' is not a constant at surgery; this is a bug in an op rule, please "
                                 f"report it with the model")
        return value

    def set_attr(self, node: NodeProto, name: str, value: object) -> None:
        set_attr(node, name, value)

    def set_const_input(self, node: NodeProto, input_index: int, value: np.ndarray) -> None:
        """Point input ``input_index`` of ``node`` at a new constant (shared constants are left as is)."""
        self._set_const(node, input_index, value)


class OpRule:
    """How channels flow through one op type. Subclass and register with ``@register_rule``.

    ``couplings(node, slot, ctx)`` gets a slot of one of the node's inputs or outputs (constants included)
    and returns the couplings of that slot with the node's other slots, closed under the node: calling it
    again with any slot it returned must give the same set. Raise :class:`Blocked` with a reason (naming
    the axis and why) when the slot cannot be pruned through this node.
    """

    def seeds(self, node: NodeProto, ctx: RuleContext) -> list[ChannelAxis]:
        """Slots where groups start: the output channel axis of a layer with constant weights."""
        return []

    def couplings(self, node: NodeProto, slot: ChannelAxis, ctx: RuleContext) -> list[Coupling]:
        raise NotImplementedError

    def rewrite(self, node: NodeProto, ctx: RewriteContext) -> None:
        """Edit attributes or shape constants of ``node`` after a cut (default: nothing to edit)."""


# -- helpers shared by rule families -----------------------------------------------------------------
def which_input(node: NodeProto, slot: ChannelAxis, ctx: RuleContext) -> list[int]:
    """Indices of the node inputs that are ``slot.tensor`` (through Identity for constants)."""
    return [i for i, name in enumerate(node.input) if name and ctx.slot(name, 0).tensor == slot.tensor]


def is_output(node: NodeProto, slot: ChannelAxis) -> bool:
    return slot.tensor in node.output


def data_axis(node: NodeProto, slot: ChannelAxis, ctx: RuleContext, data: tuple[int, ...] = (0,)) -> int:
    """The axis ``slot`` stands for when it is an output or one of the ``data`` inputs of ``node``.

    Raises:
        Blocked: ``slot`` is read as a parameter (sizes, scales, axes): its values cannot be cut.
    """
    if is_output(node, slot) or any(i in data for i in which_input(node, slot, ctx)):
        return slot.axis
    raise Blocked(f"{node_label(node)} reads '{slot.tensor}' as a parameter; its values cannot be cut")


def broadcast_couplings(node: NodeProto, inputs: Sequence[int], out_axis: int, ctx: RuleContext,
                        *, role: str = "param") -> list[Coupling]:
    """Couple output axis ``out_axis`` with the aligned axis of every (numpy-broadcast) input.

    A size-1 input axis broadcast against a larger output does not carry channels, so it is not coupled.
    """
    out = node.output[0]
    out_shape = ctx.shape(out)
    result: list[Coupling] = []
    out_slot = ctx.slot(out, out_axis)
    for i in inputs:
        name = node.input[i] if i < len(node.input) else ""
        if not name:
            continue
        shape = ctx.shape(name)
        axis = out_axis - (len(out_shape) - len(shape))
        if axis < 0 or (shape[axis] == 1 and out_shape[out_axis] != 1):
            continue
        if shape[axis] != out_shape[out_axis]:
            raise Blocked(f"{node_label(node)} broadcasts '{name}' axis {axis} ({shape[axis]}) against "
                          f"{out_shape[out_axis]}")
        result.append(Coupling(out_slot, ctx.slot(name, axis), Identity(), role=role if ctx.is_const(name) else "",
                               input_index=i))
    return result


def out_axis_of(node: NodeProto, slot: ChannelAxis, inputs: Sequence[int], ctx: RuleContext) -> int:
    """The output axis aligned with ``slot`` under numpy broadcasting (slot on an input or the output)."""
    if is_output(node, slot):
        return slot.axis
    out_rank = ctx.rank(node.output[0])
    for i in which_input(node, slot, ctx):
        if i in inputs:
            return slot.axis + out_rank - ctx.rank(node.input[i])
    raise Blocked(f"{node_label(node)} reads '{slot.tensor}' as a non-data input (axis {slot.axis})")

