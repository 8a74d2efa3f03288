"""Sizes for the dynamic dims of a model's inputs: taken from the user or the data, else chosen, and said.

Why this module exists: exported models declare most input axes dynamic (``input_ids[batch, sequence]``,
Paddle's ``x[-1, 3, ?, ?]``), but shapes, MACs and validation inputs need numbers. Refusing such a model
until the user names every axis stops every text, audio and Paddle model; guessing 1 silently gives MACs
at a 1x1 image. So each dynamic axis gets a value, in this order, and every value not given by the user
is reported (``dims_assumed``) and printed:

1. ``--dim`` (``dims``): by ``INPUT:AXIS``, ``INPUT:NAME`` or ``NAME`` (:func:`onnxprune.core.ir.lookup_dim`).
2. data (``--data``, ``--eval-data``, ``--calib``): the size of that axis in the first file holding the input
   (not axis 0, which counts samples there).
3. batch: an axis named like a batch, or the leading axis of an input of rank 2 or more unless named like
   a sequence or a spatial axis (time-major ``[sequence, batch, ...]``), gets 1.
4. weights: an axis the input's first reader fixes: a Conv's input channels, the reduction axis of a
   MatMul or Gemm with a constant weight.
5. the value already chosen for another axis of the same name (``sequence`` of ``input_ids`` and
   ``attention_mask``); ``?`` and unnamed axes never share.
6. candidates, tried together level by level: sequence-like axes (names with seq/len/token/time/step/frame,
   axis 1 of an integer input) 32, 64, 128, ...; spatial axes (2 and up of a rank-4/5 input, or named
   height/width) 224, 256, 320, ... down to 1; others 32, 16, 8, ... Levels that strict shape inference
   accepts are run in onnxruntime on seeded inputs, one session, in order; the first that runs is taken.

It imports onnxruntime only when candidates must be confirmed.
"""

from __future__ import annotations

import logging
import re
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from onnx import ModelProto

from onnxprune.core.batch_axes import SEQUENCE_NAME, SPATIAL_NAME, batch_like
from onnxprune.core.errors import ConfigError, OnnxPruneError
from onnxprune.core.ir import GraphIndex, attr, dim_key, lookup_dim
from onnxprune.core.shapefold import infer_shapes
from onnxprune.runtime.feeds import InputSpec, input_specs, random_feeds

log = logging.getLogger(__name__)

SEQUENCE_SIZES = (32, 64, 128, 16, 8, 256, 512, 1024, 2048, 4096, 16000, 4, 2, 1)
SPATIAL_SIZES = (224, 256, 320, 384, 512, 640, 192, 160, 128, 112, 96, 64, 56, 48, 32, 28, 16, 14, 8, 7, 4, 2, 1)
OTHER_SIZES = (32, 16, 8, 64, 128, 4, 2, 1, 224, 256, 512)
#: Levels of sizes run in onnxruntime (one session, one run each) before giving up.
MAX_RUNS = 8

_SEQUENCE = SEQUENCE_NAME
_SPATIAL = SPATIAL_NAME
#: Placeholder names that say "unknown", not "the same axis as elsewhere".
_PLACEHOLDER = re.compile(r"^(\?|-1|unk__\d+|None)$")


@dataclass(frozen=True)
class ChosenDim:
    """The value one dynamic input axis takes and where it came from.

    Attributes:
        input: the graph input's name.
        axis: the axis (non-negative).
        name: the declared dim name, ``None`` when unnamed or stored as ``-1``.
        value: the size used for shapes, MACs and generated inputs.
        source: ``user`` (``--dim``), ``data``, ``batch``, ``weights``, ``same name`` or ``candidate``.
    """

    input: str
    axis: int
    name: str | None
    value: int
    source: str

    @property
    def label(self) -> str:
        """How messages name the axis: its dim name, or ``input:axis`` when it has none or a placeholder."""
        return self.name if self.name and not _PLACEHOLDER.match(self.name) else dim_key(self.input, self.axis)

    def to_dict(self) -> dict[str, object]:
        """JSON-able dict."""
        return {"input": self.input, "axis": self.axis, "name": self.name, "value": self.value,
                "source": self.source}


@dataclass(frozen=True)
class DimResolution:
    """Every dynamic input axis with its value.

    Attributes:
        chosen: one entry per dynamic axis, in input and axis order.
        dims: the user's ``dims`` plus an ``INPUT:AXIS`` key for every dynamic axis: pass it wherever
            ``dims=`` is taken, and every part of a run uses the same sizes.
        confirmed: True when candidate values ran in onnxruntime, False when none could be confirmed,
            None when nothing needed confirming (no candidates).
        unused: user keys that name no dynamic axis of the model's inputs.
    """

    chosen: tuple[ChosenDim, ...] = ()
    dims: dict[str, int] = field(default_factory=dict)
    confirmed: bool | None = None
    unused: tuple[str, ...] = ()

    @property
    def assumed(self) -> tuple[ChosenDim, ...]:
        """The axes whose value the user did not give."""
        return tuple(c for c in self.chosen if c.source != "user")

    def report(self) -> list[dict[str, object]]:
        """``dims_assumed`` of a report: the assumed axes as dicts (confirmed flag on candidates)."""
        out = []
        for c in self.assumed:
            entry = c.to_dict()
            if c.source == "candidate":
                entry["confirmed"] = bool(self.confirmed)
            out.append(entry)
        return out


def describe_assumed(entries: Sequence[Mapping[str, object]], *, with_batch: bool = False) -> str:
    """``sequence=32, H=224 (assumed; set with --dim)``, or ``""``.

    Takes a report's ``dims_assumed`` list, so the CLI summary, ``analyze`` and the Markdown report print
    the same line. Same-named axes of several inputs are listed once; batch axes (always 1, which the
    "MACs (batch 1)" row already says) only ``with_batch``; an unconfirmed candidate is marked so.

    Example:
        >>> describe_assumed([{"input": "ids", "axis": 1, "name": "sequence", "value": 32, "source": "candidate"}])
        'sequence=32 (assumed; set with --dim)'
    """
    parts: list[str] = []
    for e in entries:
        name = e.get("name")
        c = ChosenDim(str(e["input"]), int(str(e["axis"])), str(name) if name else None, int(str(e["value"])),
                      str(e["source"]))
        if c.source == "batch" and not with_batch:
            continue
        text = f"{c.label}={c.value}"
        if c.source in ("data", "weights"):
            text += f" (from {c.source})"
        elif c.source == "candidate" and e.get("confirmed") is False:
            text += " (unconfirmed)"
        if text not in parts:
            parts.append(text)
    if not parts:
        return ""
    return f"{', '.join(parts)} (assumed; set with --dim)"


def _npz_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Array shapes in an ``.npz``, read from the headers only; ``{}`` when unreadable (the loader says why)."""
    shapes: dict[str, tuple[int, ...]] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with zf.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                            else np.lib.format.read_array_header_2_0)
                    shape, _, _ = read(f)
                shapes[info.filename[: -len(".npy")]] = tuple(int(d) for d in shape)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError):
        return {}
    return shapes


def _weight_size(idx: GraphIndex, spec: InputSpec, axis: int) -> int | None:
    """The size the input's first reader fixes on ``axis``: Conv input channels, MatMul/Gemm reduction."""
    rank = len(spec.shape or ())
    for node in idx.consumers.get(spec.name, ()):
        if not node.input or node.input[0] != spec.name:
            continue
        w = idx.const_shape(node.input[1]) if len(node.input) > 1 else None
        if w is None:
            continue
        if node.op_type == "Conv" and axis == 1 and len(w) >= 2:
            return int(w[1]) * int(attr(node, "group", idx.opset, 1))  # type: ignore[call-overload]
        if node.op_type == "MatMul" and axis == rank - 1 and len(w) == 2:
            return int(w[0])
        if node.op_type == "Gemm" and len(w) == 2 and axis == (0 if attr(node, "transA", idx.opset, 0) else 1):
            return int(w[1] if attr(node, "transB", idx.opset, 0) else w[0])
    return None


def _ladder(spec: InputSpec, axis: int, name: str | None) -> tuple[int, ...]:
    rank = len(spec.shape or ())
    if name and _SEQUENCE.search(name):
        return SEQUENCE_SIZES
    if (name and _SPATIAL.search(name)) or (rank in (4, 5) and axis >= 2):
        return SPATIAL_SIZES
    if spec.dtype.kind in "iu" and axis == 1:
        return SEQUENCE_SIZES
    return OTHER_SIZES


def _accepted_by_inference(model: ModelProto, dims: Mapping[str, int]) -> bool:
    """Strict shape inference passes and leaves no negative size (a too-short sequence through a conv)."""
    try:
        shapes = infer_shapes(model, dict(dims), strict=True)
    except OnnxPruneError:
        return False
    outputs = {o for n in model.graph.node for o in n.output}
    return not any(isinstance(d, int) and d < 0 for name, s in shapes.items() if name in outputs for d in s)


class _Trial:
    """One onnxruntime session of the model (built on first use), run at each level of sizes tried."""

    def __init__(self, model: ModelProto, seed: int) -> None:
        self.model, self.seed = model, seed
        self.session: Any = None  # an onnxruntime InferenceSession (not imported at module level)

    def runs(self, dims: Mapping[str, int]) -> bool:
        """The model runs once on seeded inputs of these sizes; its failures are not logged as errors."""
        import onnxruntime as ort

        from onnxprune.runtime.session import ORT_ERRORS, create_session

        if self.session is None:
            self.session = create_session(self.model, provider="cpu", low_memory=True)
        quiet = ort.RunOptions()
        quiet.log_severity_level = 4  # a refused size is expected here, not an error to show the user
        try:
            self.session.run(None, random_feeds(self.model, seed=self.seed, dims=dims), quiet)
        except ORT_ERRORS as exc:
            log.info("input sizes %s: the model does not run (%s)", dict(dims), str(exc).splitlines()[0])
            return False
        return True


def resolve_dims(model: ModelProto, *, dims: Mapping[str, int] | None = None,
                 data: Sequence[str | Path | None] = (), seed: int = 0, required: bool = True) -> DimResolution:
    """A value for every dynamic input axis of ``model`` (see the module doc for the order).

    Args:
        model: the model (not modified).
        dims: the user's values (``--dim``).
        data: ``.npz`` files whose arrays show real sizes (``None`` entries are skipped).
        seed: seed of the inputs a candidate level is run on.
        required: raise when no candidate level runs; with False the first level is kept, unconfirmed
            (zeroing weights needs no shapes; only MACs then rest on it, and the report says so).

    Returns:
        A :class:`DimResolution`.

    Raises:
        ConfigError: ``required`` and no candidate sizes run in onnxruntime; the message names the axes and
            the ``--dim`` that fixes them.

    Example:
        >>> res = resolve_dims(model, dims={"sequence": 16})  # doctest: +SKIP
        >>> res.dims["input_ids:1"]  # doctest: +SKIP
        16
    """
    user = dict(dims or {})
    specs = input_specs(model)
    data_shapes: list[dict[str, tuple[int, ...]]] = [_npz_shapes(p) for p in data if p]
    idx: GraphIndex | None = None
    chosen: dict[tuple[str, int], ChosenDim] = {}
    pending: list[tuple[InputSpec, int, str | None]] = []
    by_name: dict[str, tuple[int, str]] = {}
    used: set[str] = set()
    for spec in specs:
        for axis, d in enumerate(spec.shape or ()):
            if isinstance(d, int):
                continue
            name = d if isinstance(d, str) and d else None
            keys = {dim_key(spec.name, axis), f"{spec.name}:{name}", name}
            used |= {k for k in keys if k in user}
            value, source = lookup_dim(user, spec.name, axis, name), "user"
            if value is None and axis > 0:
                value = next((s[spec.name][axis] for s in data_shapes
                              if len(s.get(spec.name, ())) == len(spec.shape or ())), None)
                source = "data"
            before = [d if isinstance(d, str) and d else None for d in (spec.shape or ())[:axis]]
            if value is None and batch_like(axis, len(spec.shape or ()), name, before):
                value, source = 1, "batch"
            if value is None:
                idx = idx or GraphIndex(model)  # built only for a model with such axes
                value, source = _weight_size(idx, spec, axis), "weights"
            if value is None and name and not _PLACEHOLDER.match(name) and name in by_name:
                value, origin = by_name[name]
                source = "user" if origin == "user" else "same name"  # --dim sequence via input_ids:1
            if value is None:
                pending.append((spec, axis, name))
                continue
            chosen[(spec.name, axis)] = ChosenDim(spec.name, axis, name, int(value), source)
            if name and not _PLACEHOLDER.match(name):
                by_name.setdefault(name, (int(value), source))
    confirmed: bool | None = None
    if pending:
        confirmed = _choose_candidates(model, user, chosen, pending, seed, required)
    ordered = tuple(chosen[(s.name, a)] for s in specs for a in range(len(s.shape or ())) if (s.name, a) in chosen)
    resolved = dict(user)
    resolved.update({dim_key(c.input, c.axis): c.value for c in ordered})
    unused = tuple(sorted(k for k in user if k not in used))
    for c in ordered:
        if c.source != "user":
            log.info("input '%s' axis %d (%s) = %d (%s)", c.input, c.axis, c.label, c.value, c.source)
    return DimResolution(ordered, resolved, confirmed, unused)


def _choose_candidates(model: ModelProto, user: Mapping[str, int], chosen: dict[tuple[str, int], ChosenDim],
                       pending: list[tuple[InputSpec, int, str | None]], seed: int, required: bool) -> bool:
    """Fill ``chosen`` for the ``pending`` axes from their ladders; True when the level ran in onnxruntime."""
    ladders = [_ladder(spec, axis, name) for spec, axis, name in pending]
    fixed = dict(user)
    fixed.update({dim_key(i, a): c.value for (i, a), c in chosen.items()})

    def level(k: int) -> dict[str, int]:
        values = dict(fixed)
        shared: dict[str, int] = {}
        for (spec, axis, name), ladder in zip(pending, ladders, strict=True):
            value = ladder[min(k, len(ladder) - 1)]
            if name and not _PLACEHOLDER.match(name):
                value = shared.setdefault(name, value)  # one name, one size
            values[dim_key(spec.name, axis)] = value
        return values

    levels = [level(k) for k in range(max(len(ladder) for ladder in ladders))]
    trial = _Trial(model, seed)
    winner: dict[str, int] | None = None
    first_accepted: dict[str, int] | None = None
    runs = 0
    try:
        for lv in levels:
            if runs == MAX_RUNS:
                break
            if not _accepted_by_inference(model, lv):
                continue
            first_accepted = first_accepted or lv
            runs += 1
            if trial.runs(lv):
                winner = lv
                break
        if first_accepted is None:
            # Inference cannot judge every model (custom ops fail strict inference at any size): run the
            # first levels as they are.
            winner = next((lv for lv in levels[:MAX_RUNS] if trial.runs(lv)), None)
    except OnnxPruneError:
        if required:
            raise  # onnxruntime cannot load the model at all: that message says why
    confirmed = winner is not None
    if winner is None:
        if required:
            axes = ", ".join(f"'{s.name}' axis {a} ({n or 'unnamed'})" for s, a, n in pending)
            example = dim_key(pending[0][0].name, pending[0][1])
            raise ConfigError(f"the model runs in onnxruntime at none of the sizes tried for its dynamic input "
                              f"axes {axes}; pass the sizes it expects, e.g. --dim {example}=VALUE")
        winner = first_accepted or levels[0]
    for spec, axis, name in pending:
        chosen[(spec.name, axis)] = ChosenDim(spec.name, axis, name, winner[dim_key(spec.name, axis)], "candidate")
    return confirmed
