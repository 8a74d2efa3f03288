"""Widths chosen by measured latency, latency predictions, and the never-slower decision.

Why here (beside the pipeline): the structured layer knows groups and builds one-layer models
(:mod:`onnxprune.structured.layer_models`), the runtime layer times models and caches the results
(:mod:`onnxprune.runtime.latency`); neither may import the other. This module joins them: a
:class:`LatencyModel` times each group's layers at the widths ``round_to="auto"`` may choose, hands
``make_plan`` a width chooser, predicts a plan's speedup, and :func:`speed_decision` turns a benchmark of
the result into keep / retry with rounder widths / refuse.

Two ways to time a candidate width: a small model (the default benchmark's range) is timed whole with only
that group cut (it sees everything an odd width costs: onnxruntime's blocked layouts and the conversions
around a layer that cannot use them); a big one has each heavy layer rebuilt and timed alone, which is
cheap but flatters odd widths. Either way widths are chosen among multiples of 8 whenever the candidates
hold one (timed alone, 21 channels of the digits CNN looked 11% faster than 24; in the model 22 ran 1.5x
slower than 24, and whole-model timings of one small group on a shared machine are mostly noise).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from onnx import ModelProto

from onnxprune.config import PruneConfig
from onnxprune.runtime.prediction import LayerTable, steadier_table

if TYPE_CHECKING:
    from onnxprune.runtime.latency import AsServed

log = logging.getLogger(__name__)

#: Structured prunes of models from ``BENCH_MIN_MACS`` up to ``AUTO_BENCH_MACS`` MACs (at the batch analysed)
#: are benchmarked by default. Below the minimum a run takes a few microseconds and per-op overhead decides its
#: speed (pass --bench to check anyway). Lowered from 1M: four shipped models lie between (SqueezeNet 1.1 at 0.26M,
#: MobileNetV3-small 0.25M, ShuffleNetV2 x0.5 0.35M, MNASNet 0.5 0.83M), and with auto widths SqueezeNet at
#: ratio 0.3 ran 0.85-0.93x the original (tools/bench_speed.py, 200 alternating runs); benchmarked, its retry at
#: round-to 16 ran 1.05x / 1.00x (batch 1 / 8) and was kept.
AUTO_BENCH_MACS = 50_000_000
BENCH_MIN_MACS = 100_000
#: Below this many MACs at the largest batch timed, a group's full width does not compete with its cut (see
#: ``LatencyModel.time_whole``).
TIME_WHOLE_MIN_MACS = 1_000_000
#: Runs of the default benchmark (``--bench`` uses ``--runs``); enough for the spread-aware decision.
AUTO_BENCH_RUNS = 30
#: ... and a prune's benchmark without ``--runs`` goes on for this long per provider and batch, up to
#: ``AUTO_BENCH_MAX_RUNS`` rounds: SqueezeNet 1.1 at ratio 0.3 (2 threads) ran 0.95x the original at batch 1,
#: and 30 rounds of its 0.1 ms runs gave a median interval reaching past 0.97, so it was saved, with a warning.
AUTO_BENCH_SECONDS = 0.5
AUTO_BENCH_MAX_RUNS = 1000
#: Seconds of layer timing ``round_to="auto"`` may spend per prune (cached results cost nothing).
LATENCY_BUDGET_S = 2.0
#: Widths whose measured cost is within this share of the fastest count as equally fast.
NEAR_TIE = 0.02
#: Rounding a group back to its full width (no cut) must be this much faster than the best cut width. The
#: full width competes whenever no cut candidate is a multiple of 8 (MobileNetV2's 8-channel groups, whose
#: only candidate at ratio 0.3 is 6, were cut untimed). Which widths are timed depends only on the group and
#: the ask, never on a timing, so a run with a warm cache times nothing and plans the same.
FULL_MARGIN = 0.10
#: The same rule when the group was timed in the whole model (a small model, ``context``): there a cut that
#: runs slower than the full width makes the whole model slower, which is what never-slower forbids, so
#: the full width wins once it is faster by more than the verdict's margin (``speed_verdict.MARGIN``). With
#: the 10% rule, ShuffleNetV2 x0.5 kept three 16-channel groups cut to 11 that each timed 4-6% slower in
#: the whole model, and its 0.3 prune ran 0.85x the original at batch 8, 1 thread (round-to 8, which keeps
#: them whole, 1.03x; ``tools/bench_speed.py --models tv_shufflenet_v2_x0_5 --runs 100``).
CONTEXT_FULL_MARGIN = 0.03
#: The calibration's reference cuts remove these shares of every group (widths rounded up to multiples of 8).
#: Two cuts, not one: a width can switch a kernel's path (the digits CNN ran 1.08x faster at 24 of 32
#: channels and 2.4x at 16), and a fit through one such cut mispredicts every other width.
#: Three, not two: a plan that is itself a reference cut is judged with that cut held out, and the digits CNN's
#: 0.3 plan (24/48 channels, off the 16-channel conv block) then had no other off-block point to price its
#: layout from (predicted 1.36x, measured 1.13x); 0.4 gives it one (24/40).
REFERENCE_RATIOS = (0.25, 0.4, 0.6)
#: Seconds each whole-model calibration set may take before it stops (after at least 3 rounds).
CALIBRATION_SET_S = 2.0
#: Quick whole models go on being timed until this many seconds (at most ``latency.MAX_ROUNDS`` rounds): the
#: calibration's few points carry every prediction, and 50 ms of a 0.25 ms model (MobileNetV2 at batch 1, 5
#: plans) is one busy moment of a shared machine.
CALIBRATION_FILL_S = 0.5
#: A latency target's whole-model check of a plan against the original: alternating rounds (at most
#: ``CHECK_ROUNDS``; after ``CHECK_SET_S`` seconds once ``CHECK_MIN_ROUNDS`` were made), every round kept for
#: the spread-aware verdict.
CHECK_ROUNDS = 15
CHECK_MIN_ROUNDS = 5
CHECK_SET_S = 4.0
#: The retry after a slower result rounds widths up to multiples of this.
RETRY_ROUND_TO = 16


def _ceil_to(k: int, step: int, size: int) -> int:
    return min(size, -(-k // step) * step)


#: Every set of layers timed alone also times an empty model (one Identity of one float) under this cache
#: signature, and each layer's time is taken less that run's cost (at least ``NET_FLOOR`` of it is kept):
#: a layer timed alone pays a session run of its own, which the model pays once. On MobileNetV2 at batch 1
#: the 52 layers' summed times came to 0.45 ms for a model that ran in 0.15 ms, a cut at ratio 0.6 moved that
#: sum by 8%, and predictions at ratio 0.5 were 27% too slow.
NULL_SIGNATURE = "empty-run-v1"
NET_FLOOR = 0.05


def _rounded_cut(size: int, asked: int) -> int:
    """A reference cut's width by a fixed rule: ``asked`` rounded up to 8; when that keeps the group whole, up
    to 16 channels (attention heads) as asked, wider groups down to a multiple of 8 (MNASNet's 24-channel
    groups asked for 18 keep 16)."""
    k = _ceil_to(asked, 8, size)
    if k >= size:
        k = asked if size <= 16 or asked < 8 else asked // 8 * 8
    return k


def _null_model() -> ModelProto:
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "empty",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _cuts_conv(group: Any) -> bool:
    """Whether the group's width is a Conv's input or output channels (blocked layouts apply)."""
    return any(c.op_type == "Conv" and c.role in ("source", "sink") for c in group.cuts)


def _as_served(model: ModelProto, dims: Mapping[str, int], batch: int) -> AsServed | None:
    """``model`` to time whole at ``batch`` as the benchmark runs it (its dynamic axes kept, fed at ``batch`` and
    ``dims``: see :class:`~onnxprune.runtime.latency.AsServed`); ``None`` when a dynamic input axis has no size
    (first axis: ``batch``; others from ``dims`` by name or position)."""
    from onnxprune.core.ir import lookup_dim
    from onnxprune.runtime.latency import AsServed

    inits = {t.name for t in model.graph.initializer}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        for axis, d in enumerate(vi.type.tensor_type.shape.dim):
            if axis and not d.dim_value and lookup_dim(dims, vi.name, axis, d.dim_param or None) is None:
                return None
    return AsServed(model, batch, dict(dims))


def _batch_dims(model: ModelProto, dims: Mapping[str, int], batch: int) -> dict[str, int] | None:
    """``dims`` with every input's first axis set to ``batch``; ``None`` when an input's batch is fixed otherwise."""
    out = dict(dims)
    inits = {t.name for t in model.graph.initializer}
    for vi in model.graph.input:
        if vi.name in inits or not vi.type.tensor_type.shape.dim:
            continue
        first = vi.type.tensor_type.shape.dim[0]
        if first.dim_value:
            if first.dim_value != batch:
                return None
        else:  # by name and by position: a resolved size of the batch axis may be keyed either way
            if first.dim_param:
                out[first.dim_param] = batch
            out[f"{vi.name}:0"] = batch
    return out


class LatencyModel:
    """Measured per-layer latency of a model's groups at candidate widths (see the module doc).

    Each group is timed on first use, its candidate widths and its full width in one alternating set
    per batch, until ``budget_s`` is spent; groups past the budget fall back to rounding up to 8.
    """

    def __init__(self, model: ModelProto, dg: Any, *, batches: Sequence[int], dims: Mapping[str, int],
                 timer: Any, cache: Any, budget_s: float = LATENCY_BUDGET_S, context: bool = False,
                 model_timer: Any = None, calibrate: bool = False, check_timer: Any = None,
                 provider: str = "cpu", conv_align: int = 8, empty_run: bool = False,
                 time_whole: bool = True) -> None:
        self.model, self.dg, self.timer, self.cache, self.budget_s = model, dg, timer, cache, budget_s
        #: Times a plan and the original whole, every round kept (``None``: ``model_timer``, one round);
        #: see :meth:`check_plan`.
        self.check_timer, self.provider = check_timer, provider
        #: Conv groups prefer widths that are multiples of this (the provider's blocked layout, see
        #: :mod:`onnxprune.runtime.kernels`): layers timed alone do not see what other widths cost.
        self.conv_align = conv_align
        #: Layers timed alone are taken less an empty model's run (see :data:`NULL_SIGNATURE`); off for timers
        #: that model no per-run cost.
        self.empty_run = empty_run
        #: Whether a group with no cut candidate that is a multiple of 8 times its cut against its full width
        #: (see :data:`FULL_MARGIN`); off below ``TIME_WHOLE_MIN_MACS`` at the largest batch timed, where a run
        #: takes microseconds and per-op overhead, not width, decides its speed (a loaded machine's noise then
        #: kept such groups whole).
        self.time_whole = time_whole
        #: Times whole models for the calibration (default: ``timer``); calibrate only when asked (it runs
        #: the whole model twice per batch; see :mod:`onnxprune.runtime.prediction`).
        self.model_timer = model_timer or timer
        self.calibrate = calibrate
        self._points: dict[int, list[tuple[dict[int, int], float]]] = {}
        self._measured_rate: dict[int, bool] = {}
        self.batches = tuple(int(b) for b in batches)
        self.dims = dict(dims)
        self._shapes: dict[int, Mapping[str, tuple] | None] = {}
        self._sigs: dict[tuple[int, int], dict[int, dict[str, str]]] = {}  # (group, batch) -> width -> layer -> sig
        self._ms: dict[tuple[str, int], float] = {}
        self.seconds = 0.0
        self.timed = self.cached = 0
        self.untimed: set[int] = set()
        self.choices: dict[int, dict[str, Any]] = {}
        #: Context mode: time the whole model with one group cut (small models, where a layer timed alone
        #: misses the layout conversions an odd width costs its neighbours); else each layer alone.
        self.context = context
        self._layers: LatencyModel | None = None  # context mode: the layer-by-layer model that predicts
        #: The model whose :meth:`choose` decides a plan's widths (the context model for its layer model): the
        #: reference cuts take their widths from it (see :meth:`reference_keeps`).
        self._widths: LatencyModel = self
        self._refs: list[dict[int, int]] | None = None

    def _shapes_at(self, batch: int) -> Mapping[str, tuple] | None:
        if batch not in self._shapes:
            from onnxprune.core.shapefold import infer_shapes

            dims = _batch_dims(self.model, self.dims, batch)
            self._shapes[batch] = None if dims is None else infer_shapes(self.model, dims)
        return self._shapes[batch]

    def _measure(self, group: Any, widths: Sequence[int]) -> bool:
        """Time ``group``'s layers at ``widths`` (plus its full width); False when nothing could be timed."""
        from onnxprune.runtime.latency import measure
        from onnxprune.structured.layer_models import layer_models

        widths = sorted(set(widths) | {group.size})
        sets = []
        for batch in self.batches:
            shapes = self._shapes_at(batch)
            known = self._sigs.setdefault((group.id, batch), {})
            todo = [w for w in widths if w not in known]
            if shapes is None or not todo:
                continue
            layers = (self._whole_models(group, todo, batch) if self.context
                      else [(lm.width, lm.node, lm.signature, lm.model)
                            for lm in layer_models(self.model, self.dg, group, todo, shapes)])
            for width, node, sig, _ in layers:
                known.setdefault(width, {})[node] = sig
            null = [(NULL_SIGNATURE, _null_model())] if self.empty_run and not self.context else []
            sets.append((batch, null + [(sig, m) for _, _, sig, m in layers]))
        if sets:
            left = max(0.0, self.budget_s - self.seconds)
            got = measure(sets, timer=self.timer, cache=self.cache, budget_s=left)
            self._ms.update(got.ms)
            self.seconds += got.seconds
            self.timed += got.timed
            self.cached += got.cached
        ok = all(self._cost_parts(group.id, w) is not None for w in widths)
        if not ok:
            self.untimed.add(group.id)
        return ok

    def _whole_models(self, group: Any, widths: Sequence[int], batch: int
                      ) -> list[tuple[int, str, str, AsServed]]:
        """The whole model with only ``group`` cut to each width, timed at ``batch`` (context mode)."""
        import hashlib

        import numpy as np

        from onnxprune.core.errors import OnnxPruneError
        from onnxprune.structured.plan import PrunePlan, keep_every_source
        from onnxprune.structured.surgery import apply_plan

        out = []
        for width in widths:
            keep = keep_every_source(group, np.arange(width, dtype=np.int64))
            try:
                model = self.model if width >= group.size else apply_plan(
                    self.model, PrunePlan(self.dg.fingerprint, {group.id: keep}, {group.id: group.size}),
                    dg=self.dg)
            except OnnxPruneError as exc:
                log.info("group %d at width %d not timed in the model: %s", group.id, width, exc)
                continue
            served = _as_served(model, self.dims, batch)
            if served is None:
                continue
            sig = hashlib.sha256(f"{self.dg.fingerprint}|{group.id}|{width}|{batch}|model".encode()).hexdigest()[:24]
            out.append((width, "model", sig, served))
        return out

    def _cost_parts(self, gid: int, width: int) -> list[tuple[float, float]] | None:
        """``[(ms at width, ms at full width)]`` per batch and layer; ``None`` if any is missing."""
        size = self.dg.groups[gid].size
        parts = []
        for batch in self.batches:
            if self._shapes.get(batch) is None:
                continue
            sigs = self._sigs.get((gid, batch), {})
            full, here = sigs.get(size, {}), sigs.get(width, {})
            if not full or set(full) != set(here):
                return None
            for node, sig in here.items():
                a, b = self._ms.get((sig, batch)), self._ms.get((full[node], batch))
                if a is None or b is None:
                    return None
                parts.append((self._net(a, batch), self._net(b, batch)))
        return parts or None

    def _net(self, ms: float, batch: int) -> float:
        """A layer's time less the cost of running an empty model (see :data:`NULL_SIGNATURE`)."""
        null = None if self.context else self._ms.get((NULL_SIGNATURE, batch))
        return ms if null is None else max(ms - null, NET_FLOOR * ms)

    def relative_cost(self, gid: int, width: int) -> float | None:
        """The group's layer time at ``width`` over that at full width, summed over layers and batches
        (each batch weighted equally)."""
        parts = self._cost_parts(gid, width)
        if parts is None:
            return None
        return sum(a for a, _ in parts) / max(sum(b for _, b in parts), 1e-12)

    def choose(self, group: Any, k: int, *, record: bool = True) -> int:
        """The :data:`~onnxprune.structured.plan.WidthChooser` of ``round_to="auto"``; ``record``: keep the
        choice for :meth:`report` (off for the reference cuts, which are no plan's choices)."""
        from onnxprune.structured.plan import AUTO_FALLBACK, auto_candidates

        candidates = auto_candidates(group.size, k)
        step = self.conv_align if _cuts_conv(group) else AUTO_FALLBACK
        if not any(w % step == 0 and w < group.size for w in candidates):
            step = AUTO_FALLBACK
        fallback = _ceil_to(k, step, group.size)
        aligned = [w for w in candidates if w % step == 0 and w < group.size]
        if aligned:  # odd widths: a layer timed alone flatters them, a whole model's noise hides their cost
            candidates = aligned  # (the full width is no candidate then: the group is still cut)
        untimed = fallback if len(candidates) > 1 else candidates[0]
        if not aligned and self.time_whole:  # no multiple of 8 to cut to: the full width competes (every
            candidates = sorted({*candidates, group.size})  # timed set holds it), a lone cut is timed too
        if len(candidates) == 1 or not self._measure(group, candidates):
            if record:
                self.choices[group.id] = {"asked": k, "chosen": untimed, "timed": False}
            return int(untimed)
        costs = {w: self.relative_cost(group.id, w) for w in candidates}
        cut = [c for w, c in costs.items() if c is not None and w < group.size]
        whole = costs.get(group.size)
        margin = CONTEXT_FULL_MARGIN if self.context else FULL_MARGIN
        if cut and whole is not None and whole >= min(cut) * (1 - margin):
            del costs[group.size]  # the user asked for a cut: keeping the group whole must clearly pay
        best = min(c for c in costs.values() if c is not None)
        near = [w for w, c in costs.items() if c is not None and c <= best * (1 + NEAR_TIE)]
        # Near-ties go to widths that are multiples of 8: a layer timed alone does not see the layout
        # conversions an odd width costs its neighbours in the whole model (onnxruntime's blocked formats).
        chosen = min(near, key=lambda w: (w % step != 0, w % 8 != 0, abs(w - k), -w))
        if record:
            self.choices[group.id] = {"asked": k, "chosen": chosen, "timed": True,
                                      "relative_ms": {str(w): round(c, 4) for w, c in costs.items() if c is not None}}
        return chosen

    def table(self, batch: int, keep_counts: Mapping[int, int] = {},  # noqa: B006
              holdout: bool = False) -> LayerTable | None:
        """The layer table at ``batch`` over every prunable group's heavy layers (``keep_counts``' widths
        measured first where the budget allows); calibrated when :attr:`calibrate` is on (see
        :mod:`onnxprune.runtime.prediction`). ``None`` when the batch's shapes are unknown. ``holdout``: the
        calibration leaves out a reference cut equal to ``keep_counts``' plan, so the plan's prediction is a
        prediction and not the fit through its own measurement (how a tool judges the model on such plans).

        A layer's full-width time is measured, or priced at the time per MAC of the measured ones (MACs
        when none is); a group's factors are its measured widths (see :class:`LayerTable`).
        """
        from onnxprune.core.stats import node_macs
        from onnxprune.structured.layer_models import layer_axes, timed_layers

        if self.context:  # summed over many groups, whole-model timings add up their noise: predict from layers
            return self._layer_model().table(batch, keep_counts, holdout)
        for gid, k in keep_counts.items():
            g = self.dg.groups[gid]
            if k < g.size and self._cost_parts(gid, k) is None and gid not in self.untimed:
                self._measure(g, [k])
        shapes = self._shapes_at(batch)
        if shapes is None:
            return None
        by_name = {n.name or (n.output[0] if n.output else ""): n for n in self.model.graph.node}
        opset = next((o.version for o in self.model.opset_import if o.domain in ("", "ai.onnx")), 17)
        full_ms: dict[str, float] = {}
        cuts: dict[int, tuple[str, ...]] = {}
        sizes: dict[int, int] = {}
        factors: dict[int, dict[int, dict[str, float]]] = {}
        for g in self.dg.groups:
            if not (g.prunable or g.id in keep_counts):
                continue
            sigs = self._sigs.get((g.id, batch), {})
            cuts[g.id], sizes[g.id] = timed_layers(g), g.size
            for node in cuts[g.id]:
                base = self._ms.get((sigs.get(g.size, {}).get(node, ""), batch))
                if base is None:
                    continue
                full_ms[node] = base = self._net(base, batch)
                for width, per in sigs.items():
                    here = self._ms.get((per.get(node, ""), batch))
                    if width < g.size and here is not None:
                        factors.setdefault(g.id, {}).setdefault(width, {})[node] = self._net(here, batch) / base
        names = {n for c in cuts.values() for n in c}
        macs = {n: node_macs(by_name[n], dict(shapes), opset) for n in names if n in by_name}
        timed = [n for n in full_ms if macs.get(n)]
        rate = sum(full_ms[n] for n in timed) / sum(macs[n] or 0 for n in timed) if timed else None
        for n in names:
            if n not in full_ms and macs.get(n):
                full_ms[n] = (macs[n] or 0) * (rate or 1.0)
        blocks = {gid: self.conv_align for gid in cuts if _cuts_conv(self.dg.groups[gid])}
        axes = {gid: layer_axes(self.dg, self.dg.groups[gid]) for gid in cuts}
        table = LayerTable(full_ms, cuts, sizes, factors, blocks=blocks, axes=axes)
        self._measured_rate[batch] = rate is not None
        if self.calibrate:
            points = self._calibration_points(batch)
            if holdout:
                cut = {g: k for g, k in keep_counts.items() if k < self.dg.groups[g].size}
                points = [(keep, ms) for keep, ms in points if not keep or keep != cut]
            # measured factors, or each layer scaled by kept/size: whichever predicts the whole-model runs
            table = steadier_table([table, replace(table, factors={})], points)
        return table

    def _layer_model(self) -> LatencyModel:
        if self._layers is None:
            self._layers = LatencyModel(self.model, self.dg, batches=self.batches, dims=self.dims,
                                        timer=self.timer, cache=self.cache, budget_s=self.budget_s,
                                        model_timer=self.model_timer, calibrate=self.calibrate,
                                        check_timer=self.check_timer, provider=self.provider,
                                        conv_align=self.conv_align, empty_run=self.empty_run,
                                        time_whole=self.time_whole)
            self._layers._widths = self  # its reference cuts are the widths this model chooses
        return self._layers

    def reference_keeps(self) -> list[dict[int, int]]:
        """The calibration's reference cuts (computed once per model): at each of :data:`REFERENCE_RATIOS`, the
        groups ``round_to="auto"`` cuts there (:meth:`choose`, not recorded), kept at three kinds of width (see
        :meth:`_reference_width`): the chosen ones; rounded by a fixed rule; and, where the provider's conv
        block is wider than 8, moved onto the block. Each distinct plan once.

        Why the chooser decides which groups are cut: the plans to predict are its plans, and it keeps whole
        the groups whose cut runs slower in the whole model. Reference cuts made by a fixed rule alone cut
        MobileNetV3-small's 8-channel groups to 6, which ran no faster than the original (1 thread, batch 8),
        where the chooser keeps them whole and its 0.3 plan ran 1.21x: the line through those cuts predicted
        1.03x. Why three widths of the same groups: with the chosen widths alone, a plan was often a reference
        cut itself, and the digits CNN's 0.3 plan, held out of its own calibration, left no other cut off the
        conv block to price that layout from (-15% to -26% errors). Why the cuts on the block: the calibration
        fits its line on plans whose convs keep the blocked layout and prices the layers others take off it
        apart (:mod:`onnxprune.runtime.prediction`)."""
        if self._refs is None:
            kinds = ("chosen", "rounded", "on_block") if self.conv_align > 8 else ("chosen", "rounded")
            groups = self.dg.prunable_groups
            asked = {(r, g.id): max(1, g.size - int(round(r * g.size))) for r in REFERENCE_RATIOS for g in groups}
            chosen = {(r, g.id): self._widths.choose(g, asked[r, g.id], record=False)
                      for r in REFERENCE_RATIOS for g in groups}  # asked once per group and ratio, for every kind
            out: list[dict[int, int]] = []
            for kind in kinds:
                for r in REFERENCE_RATIOS:
                    keep = {g.id: k for g in groups
                            if (k := self._reference_width(g, asked[r, g.id], chosen[r, g.id], kind)) < g.size}
                    if keep and keep not in out:
                        out.append(keep)
            self._refs = out
        return self._refs

    def _reference_width(self, group: Any, asked: int, chosen: int, kind: str) -> int:
        """``group``'s width in a reference cut where ``asked`` channels were asked and the chooser kept
        ``chosen``: whole when the chooser keeps it whole; else ``"chosen"``: the chooser's width; ``"rounded"``:
        :func:`_rounded_cut`; ``"on_block"``: a conv group chosen off the block moved onto it
        (:meth:`_on_block`), any other group as chosen."""
        if chosen >= group.size or kind == "chosen":
            return chosen
        if kind == "rounded":
            return _rounded_cut(group.size, asked)
        return self._on_block(group.size, asked, chosen) if _cuts_conv(group) and chosen % self.conv_align else chosen

    def _on_block(self, size: int, asked: int, k: int) -> int:
        """A conv group's width on the conv block for an on-block reference cut: ``asked`` rounded up to the
        block while that stays below ``size``, else down (a 32-channel group asked for 24 keeps 16); a group
        of one block stays whole; ``k`` when the group is no multiple of the block (off it at full width:
        MobileNetV2's 8- and 24-channel groups, which the original runs so too)."""
        step = self.conv_align
        if size % step:
            return k
        if size < 2 * step:
            return size
        up = _ceil_to(asked, step, size)
        return up if up < size else max(step, asked // step * step)

    def _calibration_points(self, batch: int) -> list[tuple[dict[int, int], float]]:
        """``(keep counts, measured ms)`` of whole-model runs at ``batch``: the original and the reference cuts
        timed alternately once (cached)."""
        if batch not in self._points:
            self._points[batch] = self._measure_plans(batch, [{}, *self.reference_keeps()])
        return self._points[batch]

    def check_plan(self, batch: int, keep_counts: Mapping[int, int]) -> Any:
        """Time ``keep_counts``' plan and the original whole, alternately, at ``batch``; the plan's speedup as a
        spread-aware :class:`~onnxprune.runtime.speed_verdict.SpeedVerdict` (median of per-round speedups and
        its 95% interval), ``None`` when the plan could not be built or timed.

        The calibration is left as it is (refitting it with each checked plan moved the line only partly, and
        two checks did not converge): a latency target corrects the goal it hands the prediction instead
        (:mod:`onnxprune.runtime.target_steps`), which needs a fixed prediction.
        """
        from onnxprune.core.errors import OnnxPruneError
        from onnxprune.runtime.speed_verdict import speed_verdict

        if self.context:
            return self._layer_model().check_plan(batch, keep_counts)
        built = self._plan_models(batch, [{}, dict(keep_counts)])
        if built is None:
            return None
        models = [m for _, m in built]
        try:
            rounds = (self.check_timer(models) if self.check_timer is not None
                      else [[v] for v in self.model_timer(models)])
        except OnnxPruneError as exc:
            log.info("plan not timed whole at batch %d: %s", batch, exc)
            return None
        return speed_verdict(self.provider, batch, rounds[0], rounds[1])

    def _plan_models(self, batch: int, keeps: Sequence[Mapping[int, int]]) -> list[tuple[str, AsServed]] | None:
        """``(cache signature, model timed at batch)`` of plans keeping the first ``keep[g]``
        channels of each group; ``None`` when one cannot be built."""
        import hashlib

        import numpy as np

        from onnxprune.core.errors import OnnxPruneError
        from onnxprune.structured.plan import PrunePlan, keep_every_source
        from onnxprune.structured.surgery import apply_plan

        out = []
        for keep in keeps:
            plan = {gid: keep_every_source(self.dg.groups[gid], np.arange(k, dtype=np.int64))
                    for gid, k in sorted(keep.items()) if k < self.dg.groups[gid].size}
            try:
                model = self.model if not plan else apply_plan(
                    self.model, PrunePlan(self.dg.fingerprint, plan, {g: self.dg.groups[g].size for g in plan}),
                    dg=self.dg)
            except OnnxPruneError as exc:
                log.info("calibration plan not built: %s", exc)
                return None
            served = _as_served(model, self.dims, batch)
            if served is None:
                return None
            widths = ",".join(f"{g}:{len(k)}" for g, k in plan.items())
            out.append((hashlib.sha256(f"{self.dg.fingerprint}|calibration|{widths}|{batch}".encode()).hexdigest()[:24],
                        served))
        return out

    def _measure_plans(self, batch: int, keeps: Sequence[Mapping[int, int]], *, cached: bool = True
                       ) -> list[tuple[dict[int, int], float]]:
        """Whole-model runs of plans keeping the first ``keep[g]`` channels of each group, timed alternately."""
        built = self._plan_models(batch, keeps)
        if built is None:
            return []
        sigs = [sig for sig, _ in built]
        hits = [self.cache.get(sig, batch) for sig in sigs] if cached else [None] * len(sigs)
        if any(h is None for h in hits):
            from onnxprune.core.errors import OnnxPruneError as Failed

            try:
                values = self.model_timer([m for _, m in built])
            except Failed as exc:
                log.info("whole-model calibration skipped at batch %d: %s", batch, exc)
                return []
            for sig, value in zip(sigs, values, strict=True):
                self.cache.put(sig, batch, value)
            self.cache.save()
            hits = list(values)
        return [(dict(k), float(ms)) for k, ms in zip(keeps, hits, strict=True) if ms is not None]

    def predict_ms(self, keep_counts: Mapping[int, int], batch: int) -> float | None:
        """Calibrated predicted latency (ms) of a plan at ``batch``; ``None`` without a calibration."""
        table = self.table(batch, keep_counts)
        if table is None or table.calibration is None:
            return None
        return table.predict_ms(keep_counts)

    def predict_speedup(self, keep_counts: Mapping[int, int], original_ms: Mapping[int, float] | None = None,
                        *, holdout: bool = False) -> dict[int, float]:
        """Predicted speedup per batch of a plan keeping ``keep_counts[group]`` channels.

        Each heavy layer's time at full width is scaled by its measured factor in every group that cuts it
        (independent factors: a conv's input and output widths), see :class:`LayerTable`. Calibrated
        (:attr:`calibrate`), the whole model is ``overhead + scale * layer sum``, fitted on whole-model runs of
        the original and a reference cut. Uncalibrated, with the original model's measured latency per batch
        (``original_ms``) the layers' summed time is their share of the model and the rest stays as it is;
        without, the rest is assumed to scale like them. ``holdout``: see :meth:`table`.
        """
        out: dict[int, float] = {}
        for batch in self.batches:
            table = self.table(batch, keep_counts, holdout)
            if table is None:
                continue
            rated = (self._layer_model() if self.context else self)._measured_rate.get(batch)
            base = (original_ms or {}).get(batch) if rated else None
            sp = table.speedup(keep_counts, base)
            if sp is not None:
                out[batch] = sp
        return out

    def original_ms(self, batch: int) -> float | None:
        """The original's whole-model time at ``batch`` (the calibration's first point: one timing, cached)."""
        points = self._measure_plans(batch, [{}])
        return points[0][1] if points else None

    def rated(self, batch: int) -> bool:
        """Whether the table at ``batch`` is in measured ms (an uncalibrated prediction can then take the
        layers' share of a measured original; see :meth:`predict_speedup`)."""
        return bool((self._layer_model() if self.context else self)._measured_rate.get(batch))

    def calibration_report(self) -> dict[str, Any] | None:
        """Per batch: the fitted overhead and scale and the reference cut (``None`` when not calibrated)."""
        if not self.calibrate:
            return None
        out: dict[str, Any] = {"reference_ratios": list(REFERENCE_RATIOS)}
        for batch in self.batches:
            table = self.table(batch)
            if table is not None and table.calibration is not None:
                out[str(batch)] = table.calibration.to_dict()
        return out

    def report(self) -> dict[str, Any]:
        """JSON-able summary: cache use, time spent, groups left untimed, the widths chosen."""
        return {"batches": list(self.batches), "budget_s": self.budget_s,
                "timed_as": "whole model, one group cut" if self.context else "each layer alone",
                "seconds": round(self.seconds, 3),
                "layers_timed": self.timed, "layers_cached": self.cached,
                "cache": str(self.cache.path) if self.cache.path is not None else None,
                "groups_untimed": sorted(self.untimed),
                "choices": {str(g): c for g, c in sorted(self.choices.items())}}


def latency_model(model: ModelProto, dg: Any, config: PruneConfig, *, timer: Any = None,
                  calibrate: bool = False) -> LatencyModel:
    """The :class:`LatencyModel` of a prune run: first provider, ``threads``, bench batches, the user cache;
    ``calibrate``: predictions fitted on whole-model runs (when a benchmark or a latency target needs them)."""
    from onnxprune.runtime.kernels import conv_alignment
    from onnxprune.runtime.latency import LatencyCache, onnxruntime_round_timer, onnxruntime_timer, table_key
    from onnxprune.runtime.session import parse_providers

    provider = parse_providers(config.providers)[0]
    key = table_key(provider=provider, threads=config.threads, fingerprint=dg.fingerprint) \
        if config.latency_cache else None
    return LatencyModel(model, dg, batches=config.bench_batches, dims=config.dims,
                        timer=timer or onnxruntime_timer(provider=provider, threads=config.threads),
                        cache=LatencyCache.open(key), budget_s=config.latency_budget,
                        context=_small(model, config), calibrate=calibrate,
                        model_timer=None if timer is not None else onnxruntime_timer(
                            provider=provider, threads=config.threads, set_seconds=CALIBRATION_SET_S, fastest=True,
                            fill_s=CALIBRATION_FILL_S),
                        check_timer=None if timer is not None else onnxruntime_round_timer(
                            provider=provider, threads=config.threads, rounds=CHECK_ROUNDS, set_seconds=CHECK_SET_S,
                            min_rounds=CHECK_MIN_ROUNDS, warmup=1),
                        provider=provider, conv_align=conv_alignment(provider), empty_run=timer is None,
                        time_whole=_macs(model, config) * max(config.bench_batches) >= TIME_WHOLE_MIN_MACS)


def _macs(model: ModelProto, config: PruneConfig) -> int:
    """MACs of one run at the batch analysed (the timed batches scale them: MobileNetV2 at 32x32 does 0.75M
    at batch 1, 6M at batch 8)."""
    from onnxprune.core.stats import model_stats

    return int(model_stats(model, dims=config.dims).macs)


def _small(model: ModelProto, config: PruneConfig) -> bool:
    """Small enough to time whole (the default benchmark's range, weights under 64 MB)."""
    from onnxprune.core.io import model_nbytes
    from onnxprune.core.stats import model_stats

    if model_nbytes(model) > AUTO_BENCH_MAX_BYTES:
        return False
    return 0 < model_stats(model, dims=config.dims).macs <= AUTO_BENCH_MACS


#: Weights above this are neither benchmarked nor layer-timed by default: both hold extra copies of layers or
#: models, which broke the 2.5x peak-memory bound of a prune run (2.64x on the 100 MB model of
#: ``tests/test_large.py``). Such models get ``round_to=8`` unless the user asks for ``auto`` or a benchmark.
AUTO_BENCH_MAX_BYTES = 64 * 2**20


def bench_wanted(config: PruneConfig, macs: int, nbytes: int = 0) -> bool:
    """``--bench``, or by default a structured prune of a model small enough to time in a few seconds."""
    if config.bench is not None:
        return bool(config.bench)
    return (config.mode == "structured" and config.validate and BENCH_MIN_MACS <= macs <= AUTO_BENCH_MACS
            and nbytes <= AUTO_BENCH_MAX_BYTES)


def default_widths(config: PruneConfig, nbytes: int, model: ModelProto | None = None) -> PruneConfig:
    """The config with fixed widths when ``auto`` is only the default and the model is too large to time
    within the memory bound (see ``AUTO_BENCH_MAX_BYTES``); unchanged otherwise. The fixed rule is multiples
    of 8, or of the provider's conv alignment when ``model`` has a Conv (16 on an AVX-512 CPU, see
    :mod:`onnxprune.runtime.kernels`)."""
    if (config.mode == "structured" and config.round_to == "auto" and "round_to" not in config.given
            and nbytes > AUTO_BENCH_MAX_BYTES):
        step = 8
        if model is not None and any(n.op_type == "Conv" for n in model.graph.node):
            from onnxprune.runtime.kernels import conv_alignment
            from onnxprune.runtime.session import parse_providers

            step = conv_alignment(parse_providers(config.providers)[0])
        log.info("round_to=%d: layer timing is skipped for models over %d MB of weights", step,
                 AUTO_BENCH_MAX_BYTES >> 20)
        return config.with_(round_to=step)
    return config


@dataclass(frozen=True)
class SpeedDecision:
    """What to do with a benchmarked result: keep it, retry with ``retry`` config, or refuse (``refuse``)."""

    verdicts: tuple[Any, ...]
    message: str | None = None
    retry: PruneConfig | None = None
    refuse: bool = False


def retry_config(config: PruneConfig) -> PruneConfig | None:
    """The config of the one retry after a slower result: widths rounded up to multiples of 16 (or 2x the
    ``round_to`` asked); ``None`` when widths cannot change (a saved plan, or not structured)."""
    if config.mode != "structured" or config.plan_in:
        return None
    step = config.round_to if isinstance(config.round_to, int) else None
    return config.with_(round_to=RETRY_ROUND_TO if step is None or step < RETRY_ROUND_TO else 2 * step)


def speed_decision(bench: Mapping[str, Any], config: PruneConfig, *, retried: bool,
                   confirmed: Sequence[Any] | None = None) -> SpeedDecision:
    """Keep, retry once with rounder widths, or refuse a result that is slower beyond the measured spread
    (with ``confirmed``, the :class:`~onnxprune.runtime.speed_verdict.Confirmation` s of its slower rows, only
    where the confirmation holds; see :mod:`onnxprune.speed_confirm`)."""
    from onnxprune.runtime.speed_verdict import bench_verdicts

    verdicts = tuple(bench_verdicts(bench))
    slow = [v for v in (verdicts if confirmed is None else confirmed) if v.slower]
    if not slow or config.mode != "structured":  # zeroed weights cannot be made faster: the warning says so
        return SpeedDecision(verdicts)
    where = ", ".join(f"{v.provider} batch {v.batch}: {v.speedup:.2f}x (95% {v.low:.2f}-{v.high:.2f})" for v in slow)
    retry = None if retried else retry_config(config)
    if retry is not None:
        return SpeedDecision(verdicts, f"the pruned model ran slower than the original ({where}); retrying with "
                                       f"--round-to {retry.round_to}", retry=retry)
    if config.allow_slower:
        return SpeedDecision(verdicts, f"the pruned model is SLOWER than the original ({where}); kept because of "
                                       f"--allow-slower")
    return SpeedDecision(verdicts, f"the pruned model is slower than the original ({where}), so it was not "
                                   f"saved; try a lower --ratio or a larger --round-to, or pass --allow-slower",
                         refuse=True)


def keep_counts(plan: Any) -> dict[int, int]:
    """Kept width per group of a ``PrunePlan``."""
    return {int(g): len(k) for g, k in plan.keep.items()} if plan is not None else {}
