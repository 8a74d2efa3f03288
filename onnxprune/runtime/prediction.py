"""A plan's latency predicted from a per-layer table, calibrated against whole-model measurements.

Why: summing the time of each heavy layer timed alone mispredicts the whole model in two opposite ways.
On a tiny model, a fixed cost per run (session overhead, input and output copies, the ops no group
changes) dominates, and every layer timed alone carries its own copy of that overhead, so a sum of layer
factors says "no speedup" where the model ran 1.8x faster (+88% error on the digits CNN). With two threads
on a shared machine, small layers parallelise worse than the layer timings of big ones suggest (-34% on
ResNet-50). Both are affine distortions of the layer sum ``S``: the whole model takes ``O + c * S``.
Measuring the whole model at a few plans (the original and reference cuts that are not the plan to
predict) fixes the fixed cost ``O`` and the scale ``c`` (least squares); every candidate plan is then
predicted from its layer sum. Pure arithmetic on data, so the logic is tested with tables given as data.

One line does not fit two kernel paths. onnxruntime's CPU provider runs a Conv in a blocked layout (NCHWc,
16-channel blocks on AVX-512) only when its channels are multiples of the block; a cut to another width
keeps that conv in the plain layout, with layout conversions around it in the model. A layer timed alone
pays the conversions at every blocked width (so it overstates them) and none at the others (so it flatters
them). On the digits CNN the line through the original and the 24/48-channel reference cut (plain layout)
predicted the 16/32-channel plan (blocked) at 1.2x where it ran 1.7-2.4x. So the layers whose conv width a
cut takes off the block are summed apart (``U``, see :meth:`LayerTable.unaligned_sum`) and counted (``N``),
and the model is ``O + c * S + p * U + q * N``: ``O`` and ``c`` fitted on the whole-model runs of plans with
no such layer (the original and reference cuts kept on the block), ``p`` and ``q``, what off-block layers
cost beyond the line (by their time, and each as one more op to run), on the others.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class Calibration:
    """``model ms = overhead_ms + scale * layer sum + unaligned_scale * off-block sum + per_unaligned_ms *
    off-block layers``, fitted on whole-model measurements (see the module doc).

    Attributes:
        overhead_ms: the fixed cost of a run, which no width changes (clipped to ``[0, first measured ms]``).
        scale: milliseconds of the whole model per unit of layer sum (the table's units need not be ms).
        points: the ``(layer sum, measured ms)`` pairs it was fitted on.
        unaligned_scale: what a unit of layer time taken off the conv block costs the model beyond
            ``scale`` (never negative; 0 when no measured plan had such layers).
        unaligned: the off-block sum of each point (empty: all 0).
        per_unaligned_ms: what each layer taken off the conv block costs the model whatever its size
            (never negative). Why both: a conv off the block runs between layout conversions, whose cost
            is partly their data (it grows with the layer) and partly one more op to run, which at batch 1
            on a small model is most of it. Priced by layer time alone, GoogLeNet's 0.5 plan at batch 1,
            2 threads, with eleven 16-channel groups cut to 8, was predicted at 1.48x and ran 1.22x; the
            reference cuts that priced it took fewer, bigger layers off the block.
        unaligned_counts: the number of off-block layers of each point (empty: all 0).
    """

    overhead_ms: float
    scale: float
    points: tuple[tuple[float, float], ...] = field(default=())
    unaligned_scale: float = 0.0
    unaligned: tuple[float, ...] = field(default=())
    per_unaligned_ms: float = 0.0
    unaligned_counts: tuple[int, ...] = field(default=())

    @classmethod
    def fit(cls, points: Sequence[tuple[float, float]], unaligned: Sequence[float] | None = None,
            counts: Sequence[int] | None = None) -> Calibration | None:
        """Least-squares line through ``(layer sum, measured ms)`` points; ``None`` when they cannot fix one
        (fewer than two distinct sums).

        With ``unaligned`` (each point's off-block sum; ``counts``: its number of off-block layers) and at
        least two points with none and distinct sums, the line is fitted on those points alone, and what the
        others measured above it is priced by :func:`_off_block_costs`: a plain-layout cut then no longer
        bends the line that predicts blocked plans. Otherwise, or when the on-block points give a line with
        no slope (one run stalled on a loaded machine: ResNet-50 at 2 threads was predicted at 1.00x for a
        plan measured at 3.17x), every point fits the line and off-block layers cost nothing extra.

        A cut that did not run faster (noise, or a slower kernel) gives a line with no slope: the overhead is
        then the whole measured time and every plan is predicted at the original's speed (scale 0), which is
        what the measurements say.
        """
        pts = tuple((float(s), float(m)) for s, m in points)
        offs = tuple(float(u) for u in unaligned) if unaligned is not None else (0.0,) * len(pts)
        cnts = tuple(int(n) for n in counts) if counts is not None else (0,) * len(pts)
        if len(offs) != len(pts) or len(cnts) != len(pts):
            raise ValueError("one off-block sum and count per point is needed")
        on = [p for p, u, n in zip(pts, offs, cnts, strict=True) if u <= 0 and n == 0]
        if len(on) < len(pts) and (line := cls._line(on)) is not None and line.scale > 0:
            off = [(m - line.ms(s), u, n) for (s, m), u, n in zip(pts, offs, cnts, strict=True) if u > 0 or n]
            per_ms, per_layer = _off_block_costs(off)
            return cls(line.overhead_ms, line.scale, pts, per_ms, offs, per_layer, cnts if any(cnts) else ())
        line = cls._line(pts)
        return None if line is None else cls(line.overhead_ms, line.scale, pts, 0.0, offs if any(offs) else ())

    @classmethod
    def _line(cls, pts: Sequence[tuple[float, float]]) -> Calibration | None:
        """The clipped least-squares line of :meth:`fit` (``None``: fewer than two distinct sums)."""
        pts = tuple(pts)
        if len(pts) < 2:
            return None
        n = len(pts)
        mean_s = sum(s for s, _ in pts) / n
        mean_m = sum(m for _, m in pts) / n
        var = sum((s - mean_s) ** 2 for s, _ in pts)
        if var <= 1e-18 * max(mean_s * mean_s, 1e-300):
            return None
        scale = sum((s - mean_s) * (m - mean_m) for s, m in pts) / var
        top_s, top_m = max(pts)  # the widest plan (the original): the overhead cannot exceed its time
        scale = max(scale, 0.0)
        overhead = mean_m - scale * mean_s
        if overhead < 0:  # the time scales faster than the layers: no fixed cost, through the widest point
            overhead, scale = 0.0, top_m / top_s if top_s > 0 else 0.0
        elif overhead > top_m:
            overhead, scale = top_m, 0.0
        return cls(overhead, scale, pts)

    def ms(self, layer_sum: float, unaligned_sum: float = 0.0, unaligned_count: int = 0) -> float:
        """Predicted milliseconds of a plan whose layer sum is ``layer_sum``, ``unaligned_sum`` of it in
        ``unaligned_count`` layers off the conv block."""
        return (self.overhead_ms + self.scale * layer_sum + self.unaligned_scale * unaligned_sum
                + self.per_unaligned_ms * unaligned_count)

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"overhead_ms": round(self.overhead_ms, 6), "scale": self.scale,
                                  "points": [[round(s, 6), round(m, 6)] for s, m in self.points]}
        if self.unaligned:
            out.update(unaligned_scale=self.unaligned_scale, unaligned=[round(u, 6) for u in self.unaligned])
        if self.unaligned_counts:
            out.update(per_unaligned_ms=self.per_unaligned_ms, unaligned_counts=list(self.unaligned_counts))
        return out


def _off_block_costs(off: Sequence[tuple[float, float, int]]) -> tuple[float, float]:
    """``(per unit of off-block layer time, per off-block layer)``, never negative, that best price what
    plans with off-block layers measured above the on-block line (``(excess ms, off-block sum, count)``
    each): least squares by the time alone, by the count alone, or by both when three or more such plans
    were measured (two would fit any pair exactly); the one that leaves the least, in that order on a tie.
    """
    def single(col: int) -> float:
        den = sum(float(p[col]) ** 2 for p in off)
        return max(sum(p[0] * p[col] for p in off) / den, 0.0) if den > 0 else 0.0

    def left(a: float, b: float) -> float:
        return sum((r - a * u - b * n) ** 2 for r, u, n in off)

    candidates = [(single(1), 0.0), (0.0, single(2))]
    if len(off) >= 3:
        suu = sum(u * u for _, u, _ in off)
        snn = sum(n * n for _, _, n in off)
        sun = sum(u * n for _, u, n in off)
        det = suu * snn - sun * sun
        if det > 1e-12 * max(suu * snn, 1e-300):
            sru = sum(r * u for r, u, _ in off)
            srn = sum(r * n for r, _, n in off)
            a, b = (sru * snn - srn * sun) / det, (srn * suu - sru * sun) / det
            if a >= 0 and b >= 0:
                candidates.append((a, b))
    return min(candidates, key=lambda c: left(*c))


@dataclass(frozen=True)
class LayerTable:
    """Per-layer latency of one model at one batch, and how each group's width scales each layer.

    Attributes:
        layers: heavy layer name -> its time at full width (any unit; ms when measured).
        cuts: group id -> the layers whose time its width changes.
        sizes: group id -> full width.
        factors: group id -> width -> layer -> measured time at that width over time at full width. A width
            not measured is interpolated between measured ones, and one below the narrowest measured width is
            extrapolated along the line through the two narrowest (clipped at 0); a group never measured
            scales its share of each layer's axis by ``kept / size`` (see ``axes``). Why not a line to ``0``
            at width ``0``: a small layer's time has a part no width removes (its launch, its passes over
            memory), which a measured width holds and a line through the origin drops; the reference cuts,
            at widths the table did not measure, then read too fast, the fitted scale grew to make up for
            it, and the measured plan between them read too slow (MobileNetV2, batch 1, ratio 0.5: predicted
            1.10x, measured 1.27x).
        calibration: the whole-model fit (see :class:`Calibration`); ``None`` predicts from the sum alone.
        blocks: group id -> the channel block of the conv layout its width decides (groups that cut a Conv
            on a provider with a blocked layout); see :meth:`unaligned_sum`.
        axes: group id -> layer -> ``(axis, share)``: which axis of the layer the group cuts (say its input
            channels) and the group's share of that axis' channels. Groups that cut one axis of a layer are
            slices of one concatenation, and their cuts remove channels from one sum: their savings add,
            where cuts of different axes (a conv's input and output) multiply. A width not measured scales
            only the group's share of the axis. Why: DenseNet's layers read the concatenation of up to 25
            groups' outputs; each 4-channel slice cut to 2 multiplied the layer's time by 1/2, so the layer
            read 0.5^25 of its time, and a plan that kept more channels than a reference cut read as the
            slower one (predicted 1.07x, measured 1.38x at ratio 0.5, batch 8). A group not listed cuts an
            axis of its own, all of it.
    """

    layers: Mapping[str, float]
    cuts: Mapping[int, Sequence[str]]
    sizes: Mapping[int, int]
    factors: Mapping[int, Mapping[int, Mapping[str, float]]] = field(default_factory=dict)
    calibration: Calibration | None = None
    blocks: Mapping[int, int] = field(default_factory=dict)
    axes: Mapping[int, Mapping[str, tuple[str, float]]] = field(default_factory=dict)

    def _axis(self, gid: int, layer: str) -> tuple[str, float]:
        """The axis of ``layer`` that ``gid`` cuts and the group's share of it (see the class doc)."""
        return self.axes.get(gid, {}).get(layer) or (f"group {gid}", 1.0)

    def factor(self, gid: int, width: int, layer: str) -> float:
        """How ``gid`` kept at ``width`` scales ``layer`` (see the class doc)."""
        size = self.sizes[gid]
        if width >= size:
            return 1.0
        measured = {w: f[layer] for w, f in self.factors.get(gid, {}).items() if layer in f}
        if width in measured:
            return measured[width]
        if not measured:
            return 1.0 - self._axis(gid, layer)[1] * (1.0 - width / size)
        if width <= 0:
            return 0.0
        points = sorted({size: 1.0, **measured}.items())
        (w0, f0), (w1, f1) = points[0], points[1]
        if width < w0:  # along the two narrowest points, never above the narrowest nor below 0
            return min(f0, max(0.0, f0 - (f1 - f0) * (w0 - width) / max(w1 - w0, 1)))
        for (w0, f0), (w1, f1) in zip(points, points[1:], strict=False):
            if w0 <= width <= w1:
                return f0 + (f1 - f0) * (width - w0) / max(w1 - w0, 1)
        return width / size

    def _scaled(self, keep: Mapping[int, int]) -> dict[str, float]:
        """Each layer's time when each group ``g`` keeps ``keep[g]`` channels (others whole): per axis, the
        savings of the groups that cut it added; the axes' factors multiplied (see :attr:`axes`)."""
        saved: dict[str, dict[str, float]] = {}
        for gid, width in keep.items():
            if gid not in self.sizes:
                continue
            for layer in self.cuts.get(gid, ()):
                if layer in self.layers:
                    axis = saved.setdefault(layer, {})
                    key = self._axis(gid, layer)[0]
                    axis[key] = axis.get(key, 0.0) + 1.0 - self.factor(gid, int(width), layer)
        out = dict(self.layers)
        for layer, axis in saved.items():
            for s in axis.values():
                out[layer] *= max(0.0, 1.0 - s)
        return out

    def layer_sum(self, keep: Mapping[int, int]) -> float:
        """The layers' summed time when each group ``g`` keeps ``keep[g]`` channels (others whole)."""
        return sum(self._scaled(keep).values())

    def _off_block(self, keep: Mapping[int, int]) -> set[str]:
        """The layers that ``keep`` takes off the conv block: cut by a group of :attr:`blocks` whose full width
        is a multiple of its block and whose kept width is not. A group off the block at full width
        (MobileNetV2's 8-channel ones on AVX-512) adds nothing: the original runs that way too."""
        off: set[str] = set()
        for gid, width in keep.items():
            block, size = self.blocks.get(gid), self.sizes.get(gid)
            if block and size and size % block == 0 and int(width) < size and int(width) % block:
                off.update(n for n in self.cuts.get(gid, ()) if n in self.layers)
        return off

    def terms(self, keep: Mapping[int, int]) -> tuple[float, float, int]:
        """``(S, U, N)`` of a plan, each layer scaled once: the layer sum, the off-block sum
        (:meth:`unaligned_sum`) and the off-block layers (:meth:`unaligned_count`), what the calibration reads."""
        scaled = self._scaled(keep)
        off = self._off_block(keep)
        return sum(scaled.values()), sum(t for n, t in scaled.items() if n in off), len(off)

    def unaligned_sum(self, keep: Mapping[int, int]) -> float:
        """``U``: the summed time (at ``keep``'s widths) of the layers that ``keep`` takes off the conv block
        (see :meth:`_off_block`)."""
        return self.terms(keep)[1]

    def unaligned_count(self, keep: Mapping[int, int]) -> int:
        """How many layers ``keep`` takes off the conv block (see :meth:`_off_block`)."""
        return len(self._off_block(keep))

    def calibrated_ms(self, keep: Mapping[int, int]) -> float:
        """The calibrated prediction of a plan (a latency budget's cost function).

        Raises:
            ValueError: the table has no calibration.
        """
        if self.calibration is None:
            raise ValueError("this latency table has no whole-model calibration")
        return self.calibration.ms(*self.terms(keep))

    def predict_ms(self, keep: Mapping[int, int], original_ms: float | None = None) -> float | None:
        """Predicted time of the plan: calibrated when a fit exists; else the layers' share of
        ``original_ms`` scaled and the rest kept (``None`` without either)."""
        total = self.layer_sum({})
        here = self.layer_sum(keep)
        if self.calibration is not None:
            return self.calibrated_ms(keep)
        if original_ms is None or total <= 0:
            return None
        share = min(1.0, total / original_ms)
        return original_ms * (1.0 - share * (1.0 - here / total))

    def speedup(self, keep: Mapping[int, int], original_ms: float | None = None) -> float | None:
        """Predicted original time over the plan's (``None`` when nothing can be predicted)."""
        if self.calibration is not None:
            base = self.calibrated_ms({})
        elif original_ms is not None:
            base = original_ms
        else:
            total = self.layer_sum({})
            return total / max(self.layer_sum(keep), 1e-12) if total > 0 else None
        ms = self.predict_ms(keep, original_ms)
        return None if ms is None else base / max(ms, 1e-12)


def _sums(table: LayerTable, points: Sequence[tuple[Mapping[int, int], float]]
          ) -> list[tuple[float, float, int, float]]:
    """``(layer sum, off-block sum, off-block layers, measured ms)`` of each point under ``table``."""
    return [(*table.terms(keep), ms) for keep, ms in points]


def _fit(sums: Sequence[tuple[float, float, int, float]]) -> Calibration | None:
    return Calibration.fit([(s, m) for s, _, _, m in sums], [u for _, u, _, _ in sums], [n for _, _, n, _ in sums])


def held_out_error(table: LayerTable, points: Sequence[tuple[Mapping[int, int], float]]) -> float:
    """How well ``table``'s layer sums predict whole-model runs: the mean relative error of each measured plan
    predicted by the calibration fitted on the others (``inf`` when a fit cannot be made without one).

    Why: with few points, the fit's own residuals say little (three parameters, four or five points), and a
    prediction is asked of plans not among them."""
    sums = _sums(table, points)
    errors = []
    for i, (s, u, n, ms) in enumerate(sums):
        fit = _fit([*sums[:i], *sums[i + 1:]])
        if fit is None or ms <= 0:
            return float("inf")
        errors.append(abs(fit.ms(s, u, n) / ms - 1))
    return sum(errors) / len(errors) if errors else float("inf")


#: A cut plan counts as having run faster than the original when its whole-model time is this much below.
FASTER_MARGIN = 0.03


def contradicted(table: LayerTable, points: Sequence[tuple[Mapping[int, int], float]]) -> bool:
    """Whether ``table`` reads a cut plan as no faster than the original (a layer sum at or above the
    original's) where that plan's whole-model run was faster than the original's by :data:`FASTER_MARGIN`."""
    original = next((ms for keep, ms in points if not keep), None)
    if original is None:
        return False
    full = table.layer_sum({})
    return any(keep and ms < original * (1 - FASTER_MARGIN) and table.layer_sum(keep) >= full
               for keep, ms in points)


def steadier_table(tables: Sequence[LayerTable], points: Sequence[tuple[Mapping[int, int], float]]) -> LayerTable:
    """Of tables that differ in how a width scales a layer, the one whose layer sums predict the measured plans
    best (:func:`held_out_error`; the first on a tie) among those the measurements do not contradict
    (:func:`contradicted`; all of them when each is), calibrated on every point.

    Why: layers timed alone at widths of a few channels take microseconds, and at two threads on a shared
    machine those timings are noise; MobileNetV2 at batch 1 read every cut plan as slower than the full
    model (layer sum 0.49-0.50 against 0.45) while each ran faster, and predicted a 0.3 cut at 0.41x where
    1.02x was measured. The same layers scaled by kept/size (no measured factor) follow the whole-model
    runs there; on bigger layers the measured factors do, and are kept.

    Why a contradicted table is out even when its held-out error is lower: with few points that barely move,
    a line of no slope predicts them well, and that is what such a table gives. SqueezeNet 1.1 (1 thread,
    batch 1) read two on-block reference cuts at 1.01-1.02 of the original's layer sum while they ran
    7% and 13% faster; its held-out error was the lower one, and it predicted the 0.3 plan at 0.78x where 0.93x
    was measured (kept/size: 0.94x)."""
    plausible = [t for t in tables if not contradicted(t, points)] or list(tables)
    table = min(plausible, key=lambda t: held_out_error(t, points))  # min keeps the first of equal errors
    return replace(table, calibration=_fit(_sums(table, points)))
