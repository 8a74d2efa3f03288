"""Run-time shape reads that follow a cut: which ``Shape`` reads of a cut axis stay right after the cut.

Exporters write many shape values as arithmetic on ``Shape`` at run time instead of constants: Hugging Face's
Conv1D (GPT-2) flattens with ``x.view(-1, x.size(-1))``, ``repeat_kv`` (Llama) expands K/V to
``(batch, num_kv_heads, n_rep, slen, head_dim)`` read from ``hidden_states.shape`` (the legacy exporter wraps
the target in ``Where(Equal(t, -1), ones, t)``) and reshapes to ``num_kv_heads * n_rep``, and the dynamo
exporter reads ``Shape -> Slice`` pieces instead of ``Gather``. When such a value reads the size of an axis
that is cut, it is *safe* exactly when everything computed from it lands, unchanged or times a positive
constant ``s``, in an entry of a shape consumer (a ``Reshape`` or ``Expand`` target, ``ConstantOfShape``'s
shape) whose output axis is ``s`` times that cut axis: at run time the ``Shape`` simply reads the new, smaller
width, and the consumer's axis shrinks with it. That is proven, never guessed, by a small symbolic evaluation
of the shape subgraph:

* every entry of a small 1-D integer value is an integer, a :class:`Size` (``scale`` times the run-time size
  of one axis of one tensor, divided by ``divisor``) or a :class:`Mixed` (computed from sizes by arithmetic
  that is not followed, with the op that does it);
* one evaluation rule per op (``Shape``, ``Gather``/``Slice`` of entries, ``Squeeze``/``Unsqueeze``/``Cast``/
  ``Reshape``/``Identity``, ``Concat``, ``Mul`` and ``Div`` by a positive constant, integer arithmetic,
  ``Equal`` of a size and a negative constant (a size is never negative), ``Where`` with a known condition,
  ``ConstantOfShape``); any other op gives :class:`Mixed`.

A proven read is a :class:`~onnxprune.structured.axes.Coupling` between the cut axis and the consumer's output
axis (``Block(scale)``), so the analysis cuts both the same way and nothing needs rewriting at surgery
(:func:`follows_cut`). A read that reaches anything else (arithmetic that mixes it, a ``Range``, a
``Tile`` repeat, an index, a graph output, data) blocks the group with the op named (:func:`follow_read`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from onnx import NodeProto, TensorProto, numpy_helper

from onnxprune.core.ir import node_label
from onnxprune.structured.axes import ChannelAxis
from onnxprune.structured.rules.base import Blocked, RewriteContext, RuleContext, SizeRead

log = logging.getLogger(__name__)

#: Longest 1-D value read as shape entries (shape vectors are short; data tensors are never read).
MAX_ENTRIES = 16
#: Nodes one evaluation may visit (shape subgraphs are a handful of nodes deep).
MAX_DEPTH = 48


@dataclass(frozen=True)
class Size:
    """``scale`` times the run-time size of axis ``axis`` of ``tensor``, divided by ``divisor``.

    A ``divisor`` > 1 is an integer ``Div`` by a positive constant (ResNeSt's ``RC // radix``): the value is
    exact only while ``divisor`` divides ``scale`` times the size, which holds at the analysed sizes
    (:func:`_size_read`) and at every cut the analysis lets through (:func:`unfollowed`); so floor division never
    rounds. Nothing multiplies a divided size (floor then multiply is no exact fraction).
    """

    tensor: str
    axis: int
    scale: int = 1
    divisor: int = 1


@dataclass(frozen=True)
class Mixed:
    """A value computed by an op whose result is not followed; ``reads`` are the sizes it depends on."""

    reads: frozenset[tuple[str, int]]
    why: str


Entry = int | Size | Mixed
Value = tuple[Entry, ...]
Context = RuleContext | RewriteContext


def reads(entry: Entry) -> frozenset[tuple[str, int]]:
    """The ``(tensor, axis)`` sizes an entry depends on."""
    if isinstance(entry, Size):
        return frozenset({(entry.tensor, entry.axis)})
    if isinstance(entry, Mixed):
        return entry.reads
    return frozenset()


_RULES: dict[str, Callable[[_Evaluator, NodeProto, int], Value | None]] = {}
#: Which inputs of each evaluated op carry the value (other inputs are parameters: indices, bounds, axes).
_VALUE_INPUTS: dict[str, tuple[int, ...] | None] = {}


def _rule(*ops: str, inputs: tuple[int, ...] | None = (0,)) -> Callable:
    """Register the evaluation of ``ops``; ``inputs`` are the value inputs (None: all of them)."""

    def register(fn: Callable[[_Evaluator, NodeProto, int], Value | None]) -> Callable:
        for op in ops:
            if op in _RULES:
                raise ValueError(f"duplicate shape-read rule for {op}")
            _RULES[op] = fn
            _VALUE_INPUTS[op] = inputs
        return fn

    return register


class _Evaluator:
    """Symbolic values of small 1-D integer tensors, memoised for one question."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.memo: dict[str, Value | None] = {}
        self.budget = MAX_DEPTH

    def length(self, name: str) -> int | None:
        """Number of entries of a scalar or 1-D tensor of static length, else None."""
        shape = self.ctx._lookup(name)
        if shape is None or len(shape) > 1:
            return None
        if not shape:
            return 1
        n = shape[0]
        return int(n) if isinstance(n, int) and 0 <= n <= MAX_ENTRIES else None

    def value(self, name: str) -> Value | None:
        """The entries of ``name``, or None when it is no small shape value (data, unknown length)."""
        if not name:
            return None
        if name in self.memo:
            return self.memo[name]
        self.memo[name] = None  # cycles and repeated failures end here
        result = self._compute(name)
        self.memo[name] = result
        return result

    def _compute(self, name: str) -> Value | None:
        folded = self.ctx.folded(name)
        if folded is not None:
            flat = np.asarray(folded).reshape(-1)
            if flat.size > MAX_ENTRIES or flat.dtype.kind not in "biuf" or \
                    (flat.dtype.kind == "f" and not np.all(np.isfinite(flat) & (flat == np.round(flat)))):
                return None
            return tuple(int(v) for v in flat)
        node = self.ctx.index.producer.get(name)
        shape = self.ctx._lookup(name)
        if node is None or (shape is not None and len(shape) > 1) or self.budget <= 0:
            return None
        n = self.length(name)  # None: inference left the length open (a Slice with computed bounds)
        self.budget -= 1
        rule = _RULES.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        k = list(node.output).index(name)
        result = rule(self, node, k) if rule is not None else None
        if result is None and n is not None and (rule is None or node.op_type not in _STRICT):
            depends: frozenset[tuple[str, int]] = frozenset()
            for i in node.input:
                v = self.value(i)
                for e in v or ():
                    depends |= reads(e)
            result = tuple(Mixed(depends, node_label(node)) for _ in range(n))
        if result is not None and (len(result) > MAX_ENTRIES or n is not None and len(result) != n):
            return None
        return result


def evaluate(name: str, ctx: Context) -> Value | None:
    """The symbolic entries of the small 1-D integer tensor ``name`` (None: no shape value, e.g. data)."""
    return _Evaluator(ctx).value(name)


#: Ops whose failure to evaluate means the output is no shape value at all (data in, data out).
_STRICT = frozenset({"Gather", "Slice", "Squeeze", "Unsqueeze", "Identity", "Reshape", "Flatten", "Cast", "Concat"})


@_rule("Shape")
def _shape(ev: _Evaluator, node: NodeProto, k: int) -> Value | None:
    shape = ev.ctx._lookup(node.input[0])
    if shape is None:
        return None
    rank = len(shape)
    start = ev.ctx.int_attr(node, "start", 0) if ev.ctx.opset >= 15 else 0
    end_attr = ev.ctx.attr(node, "end") if ev.ctx.opset >= 15 else None
    end = int(end_attr) if isinstance(end_attr, int) else rank
    start, end = (min(max(v + rank if v < 0 else v, 0), rank) for v in (start, end))
    return tuple(Size(node.input[0], a) for a in range(start, end))


def _ints(ev: _Evaluator, name: str) -> list[int] | None:
    value = ev.ctx.folded(name) if name else None
    return None if value is None else [int(v) for v in np.asarray(value).reshape(-1)]


@_rule("Gather")
def _gather(ev: _Evaluator, node: NodeProto, k: int) -> Value | None:
    data, idx = ev.value(node.input[0]), _ints(ev, node.input[1])
    if data is None or idx is None or ev.ctx.int_attr(node, "axis", 0) not in (0, -1):
        return None
    n = len(data)
    if any(not -n <= i < n for i in idx):
        return None
    return tuple(data[i] for i in idx)


@_rule("Slice")
def _slice(ev: _Evaluator, node: NodeProto, k: int) -> Value | None:
    data = ev.value(node.input[0])
    if data is None:
        return None
    if ev.ctx.opset < 10:
        starts, ends = ev.ctx.ints_attr(node, "starts"), ev.ctx.ints_attr(node, "ends")
        axes: list[int] | None = ev.ctx.ints_attr(node, "axes") or None
        steps: list[int] | None = None
    else:
        starts, ends = _ints(ev, node.input[1]) or [], _ints(ev, node.input[2]) or []
        given = [node.input[i] if len(node.input) > i else "" for i in (3, 4)]
        axes = _ints(ev, given[0]) if given[0] else None
        steps = _ints(ev, given[1]) if given[1] else None
        if (given[0] and axes is None) or (given[1] and steps is None):
            return None
    if len(starts) != 1 or len(ends) != 1 or any(a not in (0, -1) for a in axes or [0]):
        return None
    step = (steps or [1])[0]
    if step == 0:
        return None
    return tuple(data[i] for i in range(len(data))[slice(starts[0], ends[0], step)])


@_rule("Squeeze", "Unsqueeze", "Identity", "Reshape", "Flatten")
def _same(ev: _Evaluator, node: NodeProto, k: int) -> Value | None:
    return ev.value(node.input[0])


#: Casts that keep every realistic size exactly (narrower integers could wrap, half floats round).
_NUMERIC = frozenset({TensorProto.INT64, TensorProto.INT32, TensorProto.UINT64, TensorProto.UINT32, TensorProto.FLOAT,
                      TensorProto.DOUBLE})


@_rule("Cast")
def _cast(ev: _Evaluator, node: NodeProto, k: int) -> Value | None:
    data = ev.value(node.input[0])
    if data is None:
        return None
    if ev.ctx.int_attr(node, "to") not in _NUMERIC:  # bool, fp16, ...: not every size survives the cast
        return tuple(Mixed(reads(e), node_label(node)) if not isinstance(e, int) else e for e in data)
    return data


@_rule("Concat", inputs=None)
def _concat(ev: _Evaluator, node: NodeProto, k: int) -> Value | None:
    if ev.ctx.int_attr(node, "axis") not in (0, -1):
        return None
    parts = [ev.value(i) for i in node.input if i]
    if any(p is None for p in parts):
        return None
    return tuple(e for p in parts for e in p or ())


def _broadcast(ev: _Evaluator, node: NodeProto) -> list[Value] | None:
    values = [ev.value(i) for i in node.input]
    if any(v is None for v in values):
        return None
    n = max(len(v) for v in values if v is not None)
    if any(len(v) not in (1, n) for v in values if v is not None):
        return None
    return [tuple(v[0] for _ in range(n)) if v is not None and len(v) == 1 else v for v in values]  # type: ignore[misc]


def _entrywise(ev: _Evaluator, node: NodeProto, fn: Callable[..., Entry | None]) -> Value | None:
    """Apply ``fn`` to the aligned entries; a None result becomes :class:`Mixed` naming the node."""
    values = _broadcast(ev, node)
    if values is None:
        return None
    out: list[Entry] = []
    for entries in zip(*values, strict=True):
        result = fn(*entries)
        if result is None:
            depends: frozenset[tuple[str, int]] = frozenset()
            for e in entries:
                depends |= reads(e)
            result = Mixed(depends, node_label(node))
        out.append(result)
    return tuple(out)


def _mul(a: Entry, b: Entry) -> Entry | None:
    if isinstance(a, int) and isinstance(b, int):
        return a * b
    if isinstance(b, Size):
        a, b = b, a
    if isinstance(a, Size) and isinstance(b, int) and b > 0 and a.divisor == 1:  # k * size: a Block(k) of the axis
        return Size(a.tensor, a.axis, a.scale * b)
    return None


def _div(a: Entry, b: Entry) -> Entry | None:
    """Integer division; a size divided by a positive constant stays a :class:`Size` (proven exact later)."""
    if isinstance(a, int) and isinstance(b, int):
        return _trunc_div(a, b)
    if isinstance(a, Size) and isinstance(b, int) and b > 0:
        return Size(a.tensor, a.axis, a.scale, a.divisor * b)
    return None


def _int_op(fn: Callable[[int, int], int | None]) -> Callable[[Entry, Entry], Entry | None]:
    def apply(a: Entry, b: Entry) -> Entry | None:
        return fn(a, b) if isinstance(a, int) and isinstance(b, int) else None

    return apply


def _trunc_div(a: int, b: int) -> int | None:
    return None if b == 0 else (abs(a) // abs(b)) * (1 if (a >= 0) == (b > 0) else -1)


_ARITH: dict[str, Callable[[Entry, Entry], Entry | None]] = {
    "Mul": _mul,
    "Add": _int_op(lambda a, b: a + b),
    "Sub": _int_op(lambda a, b: a - b),
    "Div": _div,
    "Max": _int_op(max),
    "Min": _int_op(min),
}


@_rule(*_ARITH, inputs=None)
def _arith(ev: _Evaluator, node: NodeProto, k: int) -> Value | None:
    if node.op_type in ("Max", "Min") and len(node.input) != 2:
        return None
    return _entrywise(ev, node, _ARITH[node.op_type])


def _equal(a: Entry, b: Entry) -> Entry | None:
    if isinstance(a, int) and isinstance(b, int):
        return int(a == b)
    if isinstance(a, int):
        a, b = b, a
    if isinstance(a, Size) and isinstance(b, int) and b < 0:  # a size is never negative
        return 0
    return None


@_rule("Equal", inputs=None)
def _equal_rule(ev: _Evaluator, node: NodeProto, k: int) -> Value | None:
    return _entrywise(ev, node, _equal)


@_rule("Where", inputs=(1, 2))
def _where(ev: _Evaluator, node: NodeProto, k: int) -> Value | None:
    def pick(c: Entry, a: Entry, b: Entry) -> Entry | None:
        return (a if c else b) if isinstance(c, int) else None

    return _entrywise(ev, node, pick)


@_rule("ConstantOfShape", inputs=())
def _constant_of_shape(ev: _Evaluator, node: NodeProto, k: int) -> Value | None:
    """Every entry is the fill value; its length is the output's static length (the input is a sink)."""
    n = ev.length(node.output[0])
    fill = ev.ctx.attr(node, "value")
    value = numpy_helper.to_array(fill).reshape(-1) if isinstance(fill, TensorProto) else np.zeros(1)
    if n is None or value.size != 1 or value[0] != np.round(value[0]):
        return None
    return tuple(int(value[0]) for _ in range(n))


#: Shape consumers: (op, input) whose entry ``e`` is the size of output axis ``e + offset``.
_SINKS = {("Reshape", 1), ("Expand", 1), ("ConstantOfShape", 0)}


def _sink_offset(node: NodeProto, ctx: Context) -> int:
    """Output axis of target entry 0 (an Expand target may be shorter than its output)."""
    if node.op_type != "Expand":
        return 0
    target = ctx._lookup(node.input[1])
    out = ctx._lookup(node.output[0])
    if not target or out is None or not isinstance(target[0], int):
        raise Blocked(f"{node_label(node)}: the length of its target is unknown")
    return len(out) - int(target[0])


def _size_read(node: NodeProto, out_axis: int, size: Size, ctx: RuleContext, *, blame_read: bool) -> SizeRead:
    """The check that ``node``'s output axis ``out_axis`` keeps ``size.scale / size.divisor`` positions per
    position of the read axis (true at the analysed sizes, or :class:`Blocked`; the analysis checks it holds in
    every cut)."""
    y = node.output[0]
    read_size, have = ctx.dim(size.tensor, size.axis), ctx.dim(y, out_axis)
    scaled = (f"{size.scale} x " if size.scale > 1 else "") + "the size"
    if size.divisor > 1:
        scaled += f" // {size.divisor}"
    if read_size * size.scale != have * size.divisor:
        raise Blocked(f"{node_label(node)}: axis {out_axis} of '{y}' ({have}) is set at run time to {scaled} of axis "
                      f"{size.axis} of '{size.tensor}' ({read_size}); the sizes disagree")
    reason = (f"{node_label(node)} sets axis {out_axis} of '{y}' at run time to {scaled} of axis {size.axis} "
              f"of '{size.tensor}', which the cut does not change in step with it")
    read, into = ctx.slot(size.tensor, size.axis), ctx.slot(y, out_axis)
    return SizeRead(read, into, size.scale, read if blame_read else into, reason, size.divisor)


def follow_target(node: NodeProto, out_axis: int, ctx: RuleContext) -> bool:
    """Whether output axis ``out_axis`` of a ``Reshape``/``Expand`` with a run-time target can follow the cut
    because its target entry is a shape read (``scale`` times the run-time size of an axis of some tensor).

    The read is recorded in ``ctx.size_reads``: the analysis blocks this axis's group unless every cut keeps
    ``scale`` positions of it per kept position of the read axis (:func:`unfollowed`).
    """
    offset = _sink_offset(node, ctx)
    value = _Evaluator(ctx).value(node.input[1])
    entry = out_axis - offset
    if value is None or not 0 <= entry < len(value):
        return False
    size = value[entry]
    if not isinstance(size, Size):
        return False
    ctx.size_reads[_size_read(node, out_axis, size, ctx, blame_read=False)] = None
    return True


def follows_cut(node: NodeProto, ctx: RewriteContext) -> bool:
    """Whether every target entry of a ``Reshape``/``Expand`` whose output axis lost positions is a run-time
    shape read that gives it its new size (then surgery leaves the target as it is)."""
    old, new = ctx.shape(node.output[0]), ctx.new_shape(node.output[0])
    value = _Evaluator(ctx).value(node.input[1])  # the target may be a version surgery just wrote: no shape
    if value is None:
        return False
    offset = len(old) - len(value)
    changed = {b - offset for b in range(len(old)) if old[b] != new[b]}
    return bool(changed) and changed <= following_entries(node, ctx)


def following_entries(node: NodeProto, ctx: RewriteContext) -> set[int]:
    """Target entries of a ``Reshape``/``Expand`` that are run-time shape reads following this cut: the read
    axis, cut or not, gives the output axis its new size, so surgery leaves them as they are."""
    value = _Evaluator(ctx).value(node.input[1]) or ()
    old, new = ctx.shape(node.output[0]), ctx.new_shape(node.output[0])
    offset = len(new) - len(value)
    follows = set()
    for e, v in enumerate(value):
        if not isinstance(v, Size) or not 0 <= e + offset < len(new) or old[e + offset] == new[e + offset]:
            continue
        read = ctx._lookup(v.tensor)
        if read is not None and all(isinstance(d, int) for d in read) \
                and v.scale * len(ctx.kept(v.tensor, v.axis)) == new[e + offset] * v.divisor:
            follows.add(e)
    return follows


def unfollowed(size_reads: Iterable[SizeRead], base: Mapping[ChannelAxis, int], sizes: Mapping[ChannelAxis, int],
               cls: np.ndarray) -> list[tuple[ChannelAxis, str]]:
    """The slots to block, each with its reason, for the size reads that do not follow every cut.

    ``cls`` is the channel class of every position (slot ``s`` holds ``cls[base[s]:base[s] + sizes[s]]``). A
    read follows iff every class holds ``scale / divisor`` times as many positions of ``into`` as of ``read``
    (classes are kept or dropped whole, so a divided size stays a whole number); a slot the analysis never
    reached is never cut.
    """
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64))
    blocked = []
    for r in size_reads:
        (ca, na), (cb, nb) = (np.unique(cls[base[s]:base[s] + sizes[s]], return_counts=True) if s in base else empty
                              for s in (r.read, r.into))
        if not (np.array_equal(ca, cb) and np.array_equal(nb * r.divisor, na * r.scale)):
            blocked.append((r.blame, r.reason))
    return blocked


def follow_read(node: NodeProto, axis: int, ctx: RuleContext) -> None:
    """Raise :class:`Blocked` naming the use unless a ``Shape`` read of cut axis ``axis`` lands only in shape
    entries that can follow it.

    Walks forward from the ``Shape`` output through the evaluated ops while a value still depends on the read;
    each entry of a shape consumer (``Reshape``/``Expand`` target, ``ConstantOfShape``) that depends on it must
    be ``scale`` times the size itself. Those entries are recorded in ``ctx.size_reads``: the analysis blocks
    this axis's group unless the consumer's axis shrinks in step with it in every cut (:func:`unfollowed`).
    """
    x = node.input[0]
    key = (x, axis)
    ev = _Evaluator(ctx)
    prefix = f"{node_label(node)} reports the size of cut axis {axis} of '{x}'"
    found: list[SizeRead] = []
    stack, seen = [node.output[0]], set()
    while stack:
        t = stack.pop()
        if t in seen:
            continue
        seen.add(t)
        how = "used whole by" if t == node.output[0] else "read by a Gather/Slice of that entry, then by"
        if t in ctx.index.graph_outputs:
            raise Blocked(f"{prefix} and it is graph output '{t}'; the value would change after the cut")
        for user in ctx.index.consumers.get(t, []):
            slots = [i for i, name in enumerate(user.input) if name == t]
            user_label = node_label(user)
            if any((user.op_type, i) in _SINKS for i in slots):
                value = ev.value(t)
                if value is None or len(slots) > 1:
                    raise Blocked(f"{prefix} ({how} {user_label}); its entries cannot be read")
                offset = _sink_offset(user, ctx)
                for e, entry in enumerate(value):
                    if key not in reads(entry):
                        continue
                    if isinstance(entry, Size) and entry.scale > 0:
                        found.append(_size_read(user, e + offset, entry, ctx, blame_read=True))
                        continue
                    why = entry.why if isinstance(entry, Mixed) else user_label
                    raise Blocked(f"{prefix} ({how} {user_label}): entry {e} is computed from it by {why}, which "
                                  f"onnxprune cannot prove follows the cut; the value computed from it would change "
                                  f"after the cut")
                continue
            allowed = _VALUE_INPUTS.get(user.op_type, ()) if user.domain in ("", "ai.onnx") else ()
            if user.op_type not in _RULES or any(allowed is not None and i not in allowed for i in slots):
                raise Blocked(f"{prefix} ({how} {user_label}); onnxprune cannot prove the value computed from it "
                              f"follows the cut, so it would change after the cut")
            for out in user.output:
                value = ev.value(out)
                if value is None:
                    raise Blocked(f"{prefix} ({how} {user_label}, whose result is no shape value onnxprune reads); "
                                  f"the value computed from it would change after the cut")
                if any(key in reads(e) for e in value):
                    stack.append(out)
    log.debug("%s: the read of axis %d lands in %d shape entries", node_label(node), axis, len(found))
    ctx.size_reads.update(dict.fromkeys(found))
