"""Prune plans: which root channels of each group survive.

A :class:`PrunePlan` is data, not code: kept indices per group id plus the fingerprint of the model it was
made for, so it can be saved, reviewed, edited and applied later (and refused on another model).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import numpy as np
from onnx import ModelProto

from onnxprune.core.errors import ConfigError, PlanError
from onnxprune.core.io import load_model
from onnxprune.core.ir import matches_any
from onnxprune.structured.analysis import ChannelGroup, DependencyGraph
from onnxprune.structured.importance import ImportanceContext, criterion_used, get_criterion

PLAN_VERSION = 1


def _frozen_index(values: Iterable[int]) -> np.ndarray:
    arr = np.unique(np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=np.int64))
    arr.flags.writeable = False
    return arr


@dataclass(frozen=True)
class PrunePlan:
    """Kept root channels per group.

    Attributes:
        fingerprint: :func:`onnxprune.structured.analysis.model_fingerprint` of the model the plan is for.
        keep: group id → sorted unique int64 kept root indices (groups not listed are not cut).
        sizes: group id → group size when planned (checked again when applied).
        criterion: the importance criterion used (informative).
    """

    fingerprint: str
    keep: Mapping[int, np.ndarray]
    sizes: Mapping[int, int]
    criterion: str = "l2"
    meta: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "keep", MappingProxyType({int(k): _frozen_index(v) for k, v in self.keep.items()}))
        object.__setattr__(self, "sizes", MappingProxyType({int(k): int(v) for k, v in self.sizes.items()}))
        object.__setattr__(self, "meta", MappingProxyType(dict(self.meta)))

    def kept(self, group_id: int) -> np.ndarray:
        """Root indices the plan keeps in a group (sorted int64)."""
        return np.asarray(self.keep[group_id], dtype=np.int64)

    def dropped(self, group_id: int) -> np.ndarray:
        """Root indices the plan removes from a group (sorted int64)."""
        if group_id not in self.keep:
            return np.zeros(0, dtype=np.int64)
        return np.setdiff1d(np.arange(self.sizes[group_id], dtype=np.int64), self.kept(group_id))

    def criterion_for(self, group_id: int) -> str:
        """The criterion that really scored a group, e.g. ``"bn_scale (no BatchNormalization: l2)"``."""
        fallbacks = self.meta.get("criterion_fallbacks")
        if isinstance(fallbacks, Mapping):
            return str(fallbacks.get(str(group_id), self.criterion))
        return self.criterion

    def warnings(self) -> list[str]:
        """One line per criterion fallback (groups the named criterion could not score), for the user."""
        by_used: dict[str, list[int]] = {}
        for gid in self.keep:
            used = self.criterion_for(gid)
            if used != self.criterion:
                by_used.setdefault(used, []).append(gid)
        return [f"importance '{self.criterion}' scored {len(ids)} group(s) as '{used}' (groups "
                f"{', '.join(str(i) for i in ids)})" for used, ids in by_used.items()]

    @property
    def channels_removed(self) -> int:
        return sum(self.sizes[g] - len(k) for g, k in self.keep.items())

    # -- JSON --------------------------------------------------------------------------------------
    def to_json(self) -> str:
        doc = {
            "version": PLAN_VERSION,
            "fingerprint": self.fingerprint,
            "criterion": self.criterion,
            "meta": dict(self.meta),
            "groups": {str(g): {"size": self.sizes[g], "keep": [int(i) for i in k]} for g, k in self.keep.items()},
        }
        return json.dumps(doc, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> PrunePlan:
        """Parse a plan written by :meth:`to_json`.

        Raises:
            PlanError: not JSON, wrong version, or malformed entries.
        """
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PlanError(f"plan is not valid JSON ({exc.msg} at line {exc.lineno}); re-create it") from exc
        if not isinstance(doc, dict) or doc.get("version") != PLAN_VERSION:
            raise PlanError(f"plan version {doc.get('version') if isinstance(doc, dict) else '?'} is not "
                            f"supported (expected {PLAN_VERSION}); re-create the plan")
        try:
            groups = doc["groups"]
            keep = {int(g): np.asarray([int(i) for i in v["keep"]], dtype=np.int64) for g, v in groups.items()}
            sizes = {int(g): int(v["size"]) for g, v in groups.items()}
            return cls(fingerprint=str(doc["fingerprint"]), keep=keep, sizes=sizes,
                       criterion=str(doc.get("criterion", "")), meta=dict(doc.get("meta", {})))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise PlanError(f"plan is malformed ({type(exc).__name__}: {exc}); re-create it") from exc

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the plan as JSON, atomically (a temporary file, then ``os.replace``).

        Raises:
            OutputError: the folder is missing or not writable, or the disk is full.
        """
        from onnxprune.core.io import write_text_atomic

        return write_text_atomic(path, self.to_json(), what="plan")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PrunePlan:
        """Read a plan file.

        Raises:
            PlanError: missing or unreadable file, or malformed content.
        """
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise PlanError(f"cannot read plan {path} ({exc.strerror or exc}); check the path") from exc
        return cls.from_json(text)


def check_plan(plan: PrunePlan, dg: DependencyGraph) -> None:
    """Refuse a plan that does not fit the analysed model.

    Raises:
        PlanError: other model (fingerprint), unknown or blocked group, size mismatch, bad indices.
    """
    if plan.fingerprint != dg.fingerprint:
        raise PlanError(f"the plan was made for another model (fingerprint {plan.fingerprint[:12]} != "
                        f"{dg.fingerprint[:12]}); make a new plan for this model")
    for gid, keep in plan.keep.items():
        if not 0 <= gid < len(dg.groups):
            raise PlanError(f"plan names group {gid}, but the model has groups 0..{len(dg.groups) - 1}")
        g = dg.groups[gid]
        if plan.sizes.get(gid) != g.size:
            raise PlanError(f"plan says group {gid} has {plan.sizes.get(gid)} channels, the model has {g.size}")
        if len(keep) == 0:
            raise PlanError(f"plan keeps no channel of group {gid}; keep at least one")
        if keep[0] < 0 or keep[-1] >= g.size:
            raise PlanError(f"plan keeps index {int(keep[-1] if keep[-1] >= g.size else keep[0])} of group {gid}, "
                            f"outside 0..{g.size - 1}")
        emptied = emptied_sources(g, keep)
        if emptied:
            raise PlanError(f"plan keeps no output channel of layer '{emptied[0]}' (group {gid}); every layer must "
                            f"keep at least one: add one of its channels to the plan")
        if len(keep) < g.size and not g.prunable:
            raise PlanError(f"plan cuts group {gid}, which is blocked: {g.blockers[0]}")


def emptied_sources(group: ChannelGroup, keep: np.ndarray) -> list[str]:
    """Names of the layers of ``group`` that ``keep`` would leave with no output channel at all."""
    everything = np.arange(group.size, dtype=np.int64)
    return [c.node for c in group.sources
            if c.positions(everything).size and not c.positions(np.asarray(keep, dtype=np.int64)).size]


def keep_every_source(group: ChannelGroup, keep: np.ndarray, scores: np.ndarray | None = None) -> np.ndarray:
    """``keep`` plus, for each layer it would empty, that layer's best channel (lowest index without scores).

    Why: a Concat branch whose every channel is dropped becomes a layer with zero outputs. That is legal ONNX
    but some onnxruntime versions fail to build a session for it (seen with 1.23: NCHWc "invalid channel
    count"), and an empty layer is waste a user would rather see removed than kept. So no layer is emptied.
    """
    keep = np.asarray(keep, dtype=np.int64)
    for cut in group.sources:
        roots = np.unique(cut.map.pairs(group.size)[0]).astype(np.int64)
        if roots.size == 0 or cut.positions(keep).size:
            continue
        order = np.lexsort((roots, -scores[roots])) if scores is not None else np.arange(roots.size)
        keep = np.union1d(keep, roots[order[:1]]).astype(np.int64)
    return keep


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def _matches(group: ChannelGroup, patterns: tuple[str, ...]) -> bool:
    names = list(group.nodes) + [c.node for c in group.cuts] + [c.tensor for c in group.cuts]
    return matches_any(names, patterns)


#: ``round_to="auto"``: widths chosen by measured latency (a ``width_chooser``); without one, this rule.
AUTO = "auto"
AUTO_FALLBACK = 8
#: ``"auto"`` never rounds a group smaller than this back to its full width (a few attention heads).
AUTO_MIN_FULL_ROUND = 16

#: ``width_chooser(group, k)``: the width to keep in ``group`` when the ratio asks for ``k`` channels.
WidthChooser = Callable[[ChannelGroup, int], int]


def _keep_count(n: int, drop: int, min_channels: int, round_to: int | str | None) -> int:
    """Kept width of a group of ``n`` when ``drop`` go; ``"auto"`` without a chooser rounds up to multiples
    of :data:`AUTO_FALLBACK` as :func:`auto_candidates` does, so never a group under 16 (a few attention
    heads) back to its full width: a budget's costs, counted with this rule, would otherwise see heads that
    cannot be cut while the chooser that makes the final plan cuts them (hf_vit_legacy at
    ``--target-macs 0.6``: the budget stopped at 64.8% of MACs, the model written kept 30.7%)."""
    k = max(n - drop, min(min_channels, n))
    step = AUTO_FALLBACK if round_to == AUTO else round_to
    if isinstance(step, int) and step and k < n:
        up = min(n, -(-k // step) * step)
        k = k if round_to == AUTO and up == n and n < AUTO_MIN_FULL_ROUND else up
    return k


def auto_candidates(size: int, k: int, tolerance: float = 0.03) -> list[int]:
    """Widths ``round_to="auto"`` may keep when the ratio asks for ``k`` of ``size`` channels.

    ``k`` itself; ``k`` rounded up to multiples of 8, 16 and 32 (the full width only when rounding to 8
    already reaches it in a group of 16 or more); and ``k`` rounded down to those multiples when that
    drops at most ``tolerance`` of the group (at least one channel), so a chosen width never keeps much
    fewer channels than asked.
    """
    if k >= size:
        return [size]
    out = {k}
    floor_tol = max(1, int(tolerance * size))
    for step in (8, 16, 32):
        up = -(-k // step) * step
        if up < size or (step == 8 and size >= AUTO_MIN_FULL_ROUND):  # never a small group back to full width
            out.add(min(up, size))
        down = (k // step) * step
        if down >= 1 and k - down <= floor_tol:
            out.add(down)
    return sorted(out)


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest scores (ties: lower index wins), sorted."""
    order = np.lexsort((np.arange(len(scores)), -scores))
    return np.sort(order[:k]).astype(np.int64)


def validate_options(*, ratio: float, round_to: int | str | None, min_channels: int,
                     group_ratios: Mapping[int, float] | None, dg: DependencyGraph | None = None) -> None:
    """Check pruning options; raises :class:`ConfigError` naming the option and the valid range."""
    if not isinstance(ratio, (int, float)) or not 0 <= ratio < 1:
        raise ConfigError(f"ratio must be in [0, 1), got {ratio!r}")
    if round_to is not None and round_to != AUTO and (not isinstance(round_to, int) or round_to < 1):
        raise ConfigError(f"round_to must be an integer >= 1 or 'auto', got {round_to!r}")
    if not isinstance(min_channels, int) or min_channels < 1:
        raise ConfigError(f"min_channels must be an integer >= 1, got {min_channels!r}")
    for gid, r in (group_ratios or {}).items():
        if not isinstance(r, (int, float)) or not 0 <= r < 1:
            raise ConfigError(f"group_ratios[{gid}] must be in [0, 1), got {r!r}")
        if dg is not None and not 0 <= int(gid) < len(dg.groups):
            raise ConfigError(f"group_ratios names group {gid}, but the model has groups 0..{len(dg.groups) - 1}")


def make_plan(model: ModelProto | str | os.PathLike[str], dg: DependencyGraph, *, ratio: float,
              importance: str | Callable = "l2", global_rank: bool = False, round_to: int | str | None = None,
              min_channels: int = 1,
              exclude: Iterable[str] = (), seed: int = 0, group_ratios: Mapping[int, float] | None = None,
              statistics: Mapping[str, object] | None = None,
              width_chooser: WidthChooser | None = None) -> PrunePlan:
    """Choose the channels to keep in every prunable group.

    Args:
        model: the analysed model (weights are read for importance): a ``ModelProto`` or a path, as for
            :func:`~onnxprune.structured.surgery.apply_plan`.
        dg: its dependency graph (from :func:`~onnxprune.structured.analysis.analyze`).
        ratio: share of each group's channels to remove (``round(ratio * size)``, half up).
        importance: criterion name (see :func:`onnxprune.structured.importance.available_criteria`) or a callable.
        global_rank: rank all groups' channels together under one threshold instead of per group.
        round_to: keep channel counts multiples of this (rounded up, never above the group size); ``"auto"``:
            ``width_chooser`` picks each width among :func:`auto_candidates` (without one: multiples of 8).
        min_channels: never keep fewer channels than this in a group.
        exclude: shell-style patterns on node and weight names; matching groups are not cut.
        seed: seed for randomized criteria.
        group_ratios: per-group-id ratios overriding ``ratio`` (from a budget allocator).
        statistics: data for data-aware criteria (passed on as ``ImportanceContext.statistics``).
        width_chooser: with ``round_to="auto"``, the width to keep per group (the pipeline passes one that
            reads measured latency; this layer does not time anything itself).

    Returns:
        The :class:`PrunePlan` (prunable groups only).

    Raises:
        ConfigError: an option is out of range, the criterion is unknown or ``dg`` is not a dependency graph.
        ModelLoadError: ``model`` is a path that cannot be loaded.

    Example:
        >>> plan = make_plan(model, analyze(model), ratio=0.3)  # doctest: +SKIP
    """
    if not isinstance(dg, DependencyGraph):
        raise ConfigError(f"make_plan needs the model's DependencyGraph (from analyze(model)) as dg, "
                          f"got {type(dg).__name__}")
    if not isinstance(model, ModelProto):
        model = load_model(model, check=False)
    validate_options(ratio=ratio, round_to=round_to, min_channels=min_channels, group_ratios=group_ratios, dg=dg)
    patterns = (exclude,) if isinstance(exclude, str) else tuple(exclude)
    criterion = get_criterion(importance) if isinstance(importance, str) else importance
    name = importance if isinstance(importance, str) else getattr(importance, "__name__", "custom")
    ctx = ImportanceContext(model=model, dg=dg, seed=seed, statistics=statistics)
    ratios = {int(k): float(v) for k, v in (group_ratios or {}).items()}
    groups = [g for g in dg.groups if g.prunable and g.size > 0 and not _matches(g, patterns)]
    scores: dict[int, np.ndarray] = {}
    for g in groups:
        s = np.asarray(criterion(g, ctx), dtype=np.float64).reshape(-1)
        if s.shape != (g.size,):
            raise ConfigError(f"criterion '{name}' returned {s.shape[0]} scores for group {g.id} of size {g.size}")
        scores[g.id] = np.nan_to_num(s, nan=0.0)
        ctx.release()
    counts: dict[int, int] = {}
    chooser = width_chooser if round_to == AUTO else None
    round_to_count = None if chooser is not None else round_to
    if global_rank:
        floor = {g.id: min(min_channels, g.size) for g in groups}
        total = sum(g.size for g in groups)
        budget = _round_half_up(ratio * total)
        entries = [(float(v), g.id, i) for g in groups for i, v in enumerate(scores[g.id])]
        entries.sort()
        dropped = {g.id: 0 for g in groups}
        for _, gid, _ in entries:
            if budget <= 0:
                break
            if dg.groups[gid].size - dropped[gid] > floor[gid]:
                dropped[gid] += 1
                budget -= 1
        for g in groups:
            counts[g.id] = _keep_count(g.size, dropped[g.id], min_channels, round_to_count)
    else:
        for g in groups:
            r = ratios.get(g.id, ratio)
            counts[g.id] = _keep_count(g.size, _round_half_up(r * g.size), min_channels, round_to_count)
    if chooser is not None:
        floor = {g.id: min(min_channels, g.size) for g in groups}
        counts = {g.id: max(floor[g.id], min(g.size, int(chooser(g, counts[g.id])))) for g in groups}
    keep = {g.id: keep_every_source(g, _top(scores[g.id], counts[g.id]), scores[g.id]) for g in groups}
    meta: dict[str, object] = {"ratio": ratio, "global_rank": global_rank, "round_to": round_to,
                               "min_channels": min_channels, "seed": seed, "grouped_conv": dg.grouped_conv}
    fallbacks = {str(g.id): used for g in groups if (used := criterion_used(g, name)) != name}
    if fallbacks:  # JSON keys are strings; absent when every group was scored as named
        meta["criterion_fallbacks"] = fallbacks
    return PrunePlan(fingerprint=dg.fingerprint, keep=keep, sizes={g.id: g.size for g in groups}, criterion=name,
                     meta=meta)
