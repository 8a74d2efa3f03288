"""Structured pruning in one call: analyse, plan, cut, report.

This is the entry point the prune pipeline and the CLI use; the steps are public on their own
(:func:`~onnxprune.structured.analysis.analyze`, :func:`~onnxprune.structured.plan.make_plan`,
:func:`~onnxprune.structured.surgery.apply_plan`) for callers that need to look between them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from onnx import ModelProto

from onnxprune.core.io import load_model
from onnxprune.structured.analysis import DependencyGraph, analyze
from onnxprune.structured.attention import attention_heads
from onnxprune.structured.coverage_sides import layer_sides
from onnxprune.structured.naming import group_layers, group_name
from onnxprune.structured.plan import PrunePlan, WidthChooser, make_plan, validate_options
from onnxprune.structured.rules.registry import RuleSpec
from onnxprune.structured.surgery import apply_plan


@dataclass(frozen=True)
class StructuredResult:
    """What :func:`prune_structured` returns.

    Attributes:
        model: the pruned model.
        plan: the plan that was applied.
        dg: the dependency graph of the original model.
        report: JSON-able dict with ``groups``, ``blocked``, ``coverage``, ``params_removed``.
    """

    model: ModelProto
    plan: PrunePlan
    dg: DependencyGraph
    report: dict


def coverage(model: ModelProto, dg: DependencyGraph, shapes: dict | None = None) -> float:
    """Share of the MACs of layers with constant weights that prunable groups can reduce.

    Each layer counts half for its input side and half for its output side: a side is covered when the
    group its channels belong to is prunable (a grouped convolution's two sides are one group).
    """
    sides = layer_sides(model, dg, shapes)
    total = sum(s.macs for s in sides)
    covered = sum(s.macs for s in sides if s.covered)
    return covered / total if total else 0.0


def build_report(model: ModelProto, dg: DependencyGraph, plan: PrunePlan) -> dict:
    """The JSON-able report of a structured cut."""
    groups = []
    for gid, keep in plan.keep.items():
        g = dg.groups[gid]
        groups.append({
            "id": gid,
            "name": group_name(g),
            "layers": group_layers(g),
            "size_before": g.size,
            "size_after": len(keep),
            "members": [str(s) for s in g.members],
            "criterion": plan.criterion_for(gid),
            "attention": attention_heads(g),
        })
    blocked = [{"id": g.id, "name": group_name(g), "size": g.size, "reason": "; ".join(g.blockers),
                "attention": attention_heads(g)} for g in dg.groups if not g.prunable]
    return {
        "groups": groups,
        "blocked": blocked,
        "coverage": round(coverage(model, dg, dict(dg.shapes)), 6),
        "channels_removed": plan.channels_removed,
        "params_removed": dg.params_removed(plan.keep),
    }


def prune_structured(model: ModelProto | str | os.PathLike[str], *, ratio: float, importance: str | Callable = "l2",
                     global_rank: bool = False, round_to: int | str | None = None, min_channels: int = 1,
                     exclude: Iterable[str] = (), seed: int = 0, plan: PrunePlan | None = None,
                     group_ratios: Mapping[int, float] | None = None, extra_rules: Iterable[RuleSpec] = (),
                     statistics: Mapping[str, object] | None = None,
                     dg: DependencyGraph | None = None,
                     width_chooser: WidthChooser | None = None) -> StructuredResult:
    """Remove channels from a model; the input is never modified.

    Args:
        model: ``ModelProto`` or path.
        ratio: share of each prunable group's channels to remove, in ``[0, 1)``.
        importance: criterion name or callable (see :mod:`onnxprune.structured.importance`).
        global_rank: rank channels of all groups together.
        round_to: keep channel counts multiples of this, or ``"auto"`` (``width_chooser`` decides).
        min_channels: keep at least this many channels per group.
        exclude: shell-style patterns on node/weight names protecting their groups.
        seed: seed for randomized criteria.
        plan: apply this plan instead of making one (the other planning options are ignored).
        group_ratios: per-group ratios overriding ``ratio``.
        extra_rules: additional op rules (:class:`~onnxprune.structured.rules.registry.RuleSpec`).
        statistics: data for data-aware criteria.
        dg: the dependency graph of ``model`` if the caller already built it (saves a second analysis).
        width_chooser: see :func:`~onnxprune.structured.plan.make_plan`.

    Returns:
        :class:`StructuredResult`.

    Raises:
        ConfigError: an option is out of range.
        PlanError: ``plan`` was made for another model.

    Example:
        >>> result = prune_structured("resnet.onnx", ratio=0.3)  # doctest: +SKIP
        >>> result.report["coverage"]  # doctest: +SKIP
    """
    validate_options(ratio=ratio, round_to=round_to, min_channels=min_channels, group_ratios=group_ratios)
    # Every step below only reads the model, and apply_plan builds a new one: no copy of a ModelProto here.
    m = model if isinstance(model, ModelProto) else load_model(model)
    rules = tuple(extra_rules)
    if dg is None:
        dg = analyze(m, extra_rules=rules)
    if plan is None:
        plan = make_plan(m, dg, ratio=ratio, importance=importance, global_rank=global_rank, round_to=round_to,
                         min_channels=min_channels, exclude=exclude, seed=seed, group_ratios=group_ratios,
                         statistics=statistics, width_chooser=width_chooser)
    pruned = apply_plan(m, plan, dg=dg, extra_rules=rules)
    return StructuredResult(model=pruned, plan=plan, dg=dg, report=build_report(m, dg, plan))


def describe_groups(model: ModelProto, *, dims: Mapping[str, int] | None = None) -> dict:
    """Channel groups of a model as ``onnxprune analyze`` shows them (JSON-able)."""
    dg = analyze(model, dims=dict(dims) if dims else None)
    groups = [{
        "id": g.id,
        "name": group_name(g),
        "layers": group_layers(g),
        "size": g.size,
        "blockers": list(g.blockers),
        "sources": [f"{c.node} ({c.op_type})" for c in g.sources],
        "sinks": [f"{c.node} ({c.op_type})" for c in g.sinks],
        "members": [str(s) for s in g.members],
        "attention": attention_heads(g),
    } for g in dg.groups]
    from onnxprune.structured.blocks import attention_blocks

    return {"groups": groups, "coverage": round(coverage(model, dg, dict(dg.shapes)), 6),
            "unanalysed": list(dg.unanalysed), "attention_blocks": attention_blocks(model, dg)}
