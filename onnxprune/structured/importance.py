"""Channel importance criteria and their registry.

A criterion scores every root channel of a group (higher = more important). Scores are computed per
member constant, normalized to ``[0, 1]`` per member and averaged over members (DepGraph's group
importance), so a group's channels are ranked by everything they touch, and groups are comparable for
global ranking.

Data-aware criteria (activation statistics) register here too: they receive the statistics through
:attr:`ImportanceContext.statistics`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
from onnx import ModelProto

from onnxprune.core.errors import ConfigError
from onnxprune.core.ir import GraphIndex
from onnxprune.core.quant import dequantize, quantized_data
from onnxprune.structured.analysis import ChannelGroup, DependencyGraph, ParamCut
from onnxprune.structured.attention import attention_heads

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImportanceContext:
    """What a criterion may read.

    Attributes:
        model: the model being pruned (not modified).
        dg: its dependency graph.
        seed: seed for randomized criteria.
        statistics: optional data (e.g. per-tensor activation statistics from calibration), keyed as the
            criterion that uses it documents.
    """

    model: ModelProto
    dg: DependencyGraph
    seed: int = 0
    statistics: Mapping[str, object] | None = None
    _index: list[GraphIndex] = field(default_factory=list, repr=False, compare=False)
    _cache: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    def weight(self, name: str) -> np.ndarray:
        """The value of a constant in its own dtype, read once and cached until :meth:`release`.

        Criteria cast to float64 themselves (see :func:`slice_norms`) for stable norms.
        """
        if name not in self._cache:
            if not self._index:
                self._index.append(GraphIndex(self.model))
            value = self._index[0].const_value(name)
            if value is None:
                raise ConfigError(f"constant '{name}' not found in the model; was the plan made for it?")
            dq = quantized_data(self._index[0]).get(name) if value.dtype.kind in "iu" else None
            if dq is not None:  # a quantized weight is scored by its dequantized values (per-channel scales)
                value = dequantize(self._index[0], dq, value)
            self._cache[name] = value
        return self._cache[name]

    def release(self) -> None:
        """Forget cached weights; planning calls it after each group.

        Why: the cache held a float64 copy of every weight until the plan was done, the peak of structured
        pruning on large models (tools/bench_large.py, 0.4 GB model: growth 2.69x -> 2.02x of its size).
        """
        self._cache.clear()


Criterion = Callable[[ChannelGroup, ImportanceContext], np.ndarray]
_CRITERIA: dict[str, Criterion] = {}


def register_criterion(name: str) -> Callable[[Criterion], Criterion]:
    """Register ``fn(group, ctx) -> scores`` (shape ``[group.size]``, higher is more important).

    Raises:
        ValueError: ``name`` is already registered.

    Example:
        >>> @register_criterion("my_l1")  # doctest: +SKIP
        ... def my_l1(group, ctx): return member_mean(group, ctx, lambda cut, w: slice_norms(w, cut.axis, 1))
    """

    def decorate(fn: Criterion) -> Criterion:
        if name in _CRITERIA:
            raise ValueError(f"importance criterion '{name}' is already registered")
        _CRITERIA[name] = fn
        return fn

    return decorate


def get_criterion(name: str) -> Criterion:
    """The criterion registered as ``name``.

    Raises:
        ConfigError: no such criterion (the message lists the available ones).
    """
    if name not in _CRITERIA:
        raise ConfigError(f"unknown importance criterion '{name}'; choose one of {', '.join(available_criteria())}")
    return _CRITERIA[name]


def available_criteria() -> list[str]:
    return sorted(_CRITERIA)


# -- building blocks --------------------------------------------------------------------------------
def slice_rows(w: np.ndarray, axis: int) -> np.ndarray:
    """The slices of ``w`` along ``axis`` as float64 rows (one row per position of ``axis``)."""
    return np.moveaxis(np.asarray(w, dtype=np.float64), axis, 0).reshape(w.shape[axis], -1)


def slice_norms(w: np.ndarray, axis: int, order: int) -> np.ndarray:
    """Per-position ``order`` norm (1: sum of |w|, 2: sum of squares) of the slices along ``axis``."""
    rows = slice_rows(w, axis)
    return np.abs(rows).sum(axis=1) if order == 1 else np.square(rows).sum(axis=1)


def per_root(cut: ParamCut, values: np.ndarray, size: int) -> np.ndarray:
    """Sum per-position ``values`` of a cut's axis onto the group's root channels."""
    roots, positions = cut.map.pairs(size)
    return np.bincount(roots, weights=values[positions], minlength=size)[:size]


def normalize(scores: np.ndarray) -> np.ndarray:
    """Scale to ``[0, 1]`` by the maximum (all zeros stay zeros)."""
    top = float(np.max(scores)) if len(scores) else 0.0
    return scores / top if top > 0 else np.zeros_like(scores, dtype=np.float64)


def member_mean(group: ChannelGroup, ctx: ImportanceContext, score: Callable[[ParamCut, np.ndarray], np.ndarray],
                roles: tuple[str, ...] = ("source", "sink"),
                post: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """Mean over the group's weight cuts (of ``roles``) of normalized per-root scores.

    ``score(cut, w)`` gives one value per position of the cut axis; values are summed per root channel,
    passed through ``post`` (e.g. ``np.sqrt`` for an L2 norm) and normalized per member.
    """
    total = np.zeros(group.size, dtype=np.float64)
    count = 0
    for cut in group.cuts:
        if cut.role not in roles:
            continue
        w = ctx.weight(cut.tensor)
        root_scores = per_root(cut, score(cut, w), group.size)
        total += normalize(post(root_scores) if post is not None else root_scores)
        count += 1
    if count == 0:
        return np.ones(group.size, dtype=np.float64)
    return total / count


# -- built-in criteria -------------------------------------------------------------------------------
@register_criterion("l1")
def l1_importance(group: ChannelGroup, ctx: ImportanceContext) -> np.ndarray:
    """Sum of |w| over every weight slice of the channel (producer filters and consumer inputs)."""
    return member_mean(group, ctx, lambda cut, w: slice_norms(w, cut.axis, 1))


@register_criterion("l2")
def l2_importance(group: ChannelGroup, ctx: ImportanceContext) -> np.ndarray:
    """L2 norm of the channel's weight slices, producers and consumers alike (the default)."""
    return member_mean(group, ctx, lambda cut, w: slice_norms(w, cut.axis, 2), post=np.sqrt)


@register_criterion("fpgm")
def fpgm_importance(group: ChannelGroup, ctx: ImportanceContext) -> np.ndarray:
    """Filter pruning via geometric median: a filter close to all others is replaceable (low score)."""

    def distance(cut: ParamCut, w: np.ndarray) -> np.ndarray:
        rows = slice_rows(w, cut.axis)
        sq = np.square(rows).sum(axis=1)
        d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * rows @ rows.T, 0.0)
        return np.sqrt(d2).sum(axis=1)

    return member_mean(group, ctx, distance, roles=("source",))


def _bn_gammas(group: ChannelGroup) -> list[ParamCut]:
    return [c for c in group.cuts if c.op_type == "BatchNormalization" and c.input_index == 1]


def criterion_used(group: ChannelGroup, criterion: str) -> str:
    """How ``criterion`` really scores ``group``: its name, plus the fallback when it cannot apply.

    Why: a criterion that quietly scores some groups another way makes a report lie about why channels
    were dropped; plans record this per group (``PrunePlan.criterion_for``) and the pipeline warns.

    Example:
        >>> criterion_used(group_without_bn, "bn_scale")  # doctest: +SKIP
        'bn_scale (no BatchNormalization: l2)'
    """
    if criterion == "bn_scale" and not _bn_gammas(group):
        return "bn_scale (no BatchNormalization: l2)"
    if criterion == "ablation" and attention_heads(group) is None:
        return "ablation (not attention heads: activation)"
    return criterion


@register_criterion("bn_scale")
def bn_scale_importance(group: ChannelGroup, ctx: ImportanceContext) -> np.ndarray:
    """|gamma| of the BatchNormalization layers in the group (network slimming); l2 when there is none.

    The fallback is reported by :func:`criterion_used`, not here (a criterion only scores).
    """
    cuts = _bn_gammas(group)
    if not cuts:
        log.debug("group %d has no BatchNormalization; bn_scale falls back to l2", group.id)
        return l2_importance(group, ctx)
    total = np.zeros(group.size, dtype=np.float64)
    for cut in cuts:
        total += normalize(per_root(cut, np.abs(np.asarray(ctx.weight(cut.tensor), np.float64)), group.size))
    return total / len(cuts)


@register_criterion("random")
def random_importance(group: ChannelGroup, ctx: ImportanceContext) -> np.ndarray:
    """Seeded random scores (a baseline): the same seed and group give the same scores."""
    return np.random.default_rng([ctx.seed, group.id]).random(group.size)
