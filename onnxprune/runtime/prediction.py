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
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Calibration:
    """``model ms = overhead_ms + scale * layer sum``, fitted on whole-model measurements.

    Attributes:
        overhead_ms: the fixed cost of a run, which no width changes (clipped to ``[0, first measured ms]``).
        scale: milliseconds of the whole model per unit of layer sum (the table's units need not be ms).
        points: the ``(layer sum, measured ms)`` pairs it was fitted on.
    """

    overhead_ms: float
    scale: float
    points: tuple[tuple[float, float], ...] = field(default=())

    @classmethod
    def fit(cls, points: Sequence[tuple[float, float]]) -> Calibration | None:
        """Least-squares line through ``(layer sum, measured ms)`` points; ``None`` when they cannot fix one
        (fewer than two distinct sums).

        A cut that did not run faster (noise, or a slower kernel) gives a line with no slope: the overhead is
        then the whole measured time and every plan is predicted at the original's speed (scale 0), which is
        what the measurements say.
        """
        pts = tuple((float(s), float(m)) for s, m in points)
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

    def ms(self, layer_sum: float) -> float:
        """Predicted milliseconds of a plan whose layer sum is ``layer_sum``."""
        return self.overhead_ms + self.scale * layer_sum

    def to_dict(self) -> dict[str, object]:
        return {"overhead_ms": round(self.overhead_ms, 6), "scale": self.scale,
                "points": [[round(s, 6), round(m, 6)] for s, m in self.points]}


@dataclass(frozen=True)
class LayerTable:
    """Per-layer latency of one model at one batch, and how each group's width scales each layer.

    Attributes:
        layers: heavy layer name -> its time at full width (any unit; ms when measured).
        cuts: group id -> the layers whose time its width changes.
        sizes: group id -> full width.
        factors: group id -> width -> layer -> measured time at that width over time at full width. A width
            not measured is interpolated between measured ones (and ``0`` at width ``0``); a group never
            measured scales its layers by ``kept / size``.
        calibration: the whole-model fit (see :class:`Calibration`); ``None`` predicts from the sum alone.
    """

    layers: Mapping[str, float]
    cuts: Mapping[int, Sequence[str]]
    sizes: Mapping[int, int]
    factors: Mapping[int, Mapping[int, Mapping[str, float]]] = field(default_factory=dict)
    calibration: Calibration | None = None

    def factor(self, gid: int, width: int, layer: str) -> float:
        """How ``gid`` kept at ``width`` scales ``layer`` (see the class doc)."""
        size = self.sizes[gid]
        if width >= size:
            return 1.0
        measured = {w: f[layer] for w, f in self.factors.get(gid, {}).items() if layer in f}
        if width in measured:
            return measured[width]
        if not measured:
            return width / size
        points = sorted({0: 0.0, size: 1.0, **measured}.items())
        for (w0, f0), (w1, f1) in zip(points, points[1:], strict=False):
            if w0 <= width <= w1:
                return f0 + (f1 - f0) * (width - w0) / max(w1 - w0, 1)
        return width / size

    def layer_sum(self, keep: Mapping[int, int]) -> float:
        """The layers' summed time when each group ``g`` keeps ``keep[g]`` channels (others whole)."""
        scale = dict.fromkeys(self.layers, 1.0)
        for gid, width in keep.items():
            if gid not in self.sizes:
                continue
            for layer in self.cuts.get(gid, ()):
                if layer in scale:
                    scale[layer] *= self.factor(gid, int(width), layer)
        return sum(self.layers[n] * scale[n] for n in self.layers)

    def calibrated_ms(self, keep: Mapping[int, int]) -> float:
        """The calibrated prediction of a plan (a latency budget's cost function).

        Raises:
            ValueError: the table has no calibration.
        """
        if self.calibration is None:
            raise ValueError("this latency table has no whole-model calibration")
        return self.calibration.ms(self.layer_sum(keep))

    def predict_ms(self, keep: Mapping[int, int], original_ms: float | None = None) -> float | None:
        """Predicted time of the plan: calibrated when a fit exists; else the layers' share of
        ``original_ms`` scaled and the rest kept (``None`` without either)."""
        total = self.layer_sum({})
        here = self.layer_sum(keep)
        if self.calibration is not None:
            return self.calibration.ms(here)
        if original_ms is None or total <= 0:
            return None
        share = min(1.0, total / original_ms)
        return original_ms * (1.0 - share * (1.0 - here / total))

    def speedup(self, keep: Mapping[int, int], original_ms: float | None = None) -> float | None:
        """Predicted original time over the plan's (``None`` when nothing can be predicted)."""
        if self.calibration is not None:
            base = self.calibration.ms(self.layer_sum({}))
        elif original_ms is not None:
            base = original_ms
        else:
            total = self.layer_sum({})
            return total / max(self.layer_sum(keep), 1e-12) if total > 0 else None
        ms = self.predict_ms(keep, original_ms)
        return None if ms is None else base / max(ms, 1e-12)
