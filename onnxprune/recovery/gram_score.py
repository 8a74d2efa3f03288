"""Score a pruning candidate from Gram matrices: the error it makes where it acts, without running the model.

Why this module exists: measuring every candidate (a group at a ratio) on the whole model costs one
onnxruntime session and a pass over the calibration set each, hundreds of times for a budget. A channel
cut acts on the layers that *read* the cut channels (the group's Conv/Gemm/MatMul sinks), and for those
linear layers the damage is known exactly from the Gram matrix ``G = XᵀX`` of their input (im2col for a
Conv), collected once by :func:`onnxprune.recovery.calibrate.collect_stats`:

* no recovery: removing input columns ``D`` changes the output by ``−X_D W_Dᵀ``, whose energy is
  ``tr(W_D G_DD W_Dᵀ)``;
* ``bias``: the dropped columns' mean contribution is folded into the bias, leaving the centred energy;
* ``lstsq``: the kept columns and the bias are re-solved (:func:`onnxprune.recovery.recover.affine_refit`)
  and the residual is computed from the same Gram (without the ridge it is ``tr(W_D S W_Dᵀ)``, ``S`` the
  Schur complement of the kept block).

A grouped Conv sink (``group > 1``, cut inside its conv groups) is scored group by group from its
per-group Grams, as recovery re-fits it group by group.

In every case the error of a candidate layer ``W + ΔW``, ``b + Δb`` against the original is
``Σ_o ΔW_o G ΔW_oᵀ + 2 Δb_o ΔW_o·s + n Δb_o²`` (``s`` the column sums, ``n`` the rows), i.e. exactly what
:func:`onnxprune.recovery.recover.recover_structured` would leave on that layer. A candidate's score is the
relative L2 error over its sinks, ``sqrt(Σ error / Σ ‖X Wᵀ + b‖²)``. It ignores what the layers after the
sinks do with the error; :mod:`onnxprune.recovery.sensitivity` anchors each group's curve with one
whole-model measurement to put groups on the model's scale.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np
from onnx import ModelProto

from onnxprune.core.ir import GraphIndex
from onnxprune.recovery.calibrate import ActivationStats, GramStats, weight_rows
from onnxprune.recovery.recover import (
    SinkCut,
    _expand_cols,
    _kernel_size,
    _out_channels,
    column_means,
    conv_groups,
    layer_bias,
    sink_cuts,
)
from onnxprune.recovery.solvers import DEFAULT_RIDGE, affine_refit
from onnxprune.structured.analysis import DependencyGraph

log = logging.getLogger(__name__)

SCORE_RECOVERIES = ("none", "bias", "lstsq")


@dataclass(frozen=True)
class _Layer:
    """One sink's original weight rows, bias and input statistics (cached across candidates)."""

    rows: np.ndarray  # (G, O/G, K) float64, G conv groups (1 for a plain layer)
    bias: np.ndarray  # (G, O/G) float64
    kernel: int  # im2col columns per input channel
    gram: GramStats
    energy: np.ndarray  # (G, O/G) ‖X w_oᵀ + b_o‖² per output channel


def layer_error(rows: np.ndarray, bias: np.ndarray, gs: GramStats, keep_cols: np.ndarray, drop_cols: np.ndarray,
                recover: str, *, channel_means: np.ndarray | None = None, ridge: float = DEFAULT_RIDGE) -> float:
    """Squared output error ``‖X_cand W_candᵀ + b_cand − (X Wᵀ + b)‖²`` of one linear layer after a cut.

    Args:
        rows: ``(O, K)`` original weight rows (the outputs that are kept).
        bias: ``(O,)`` original bias.
        gs: the layer's input Gram statistics (one group block).
        keep_cols / drop_cols: kept and dropped input columns (im2col columns for a Conv).
        recover: ``none``, ``bias`` or ``lstsq`` (what is done to the kept weights).
        channel_means: per-column means bias recovery folds in (default: the Gram's column means).
        ridge: relative ridge of ``lstsq``.

    Returns:
        The squared error summed over rows and output channels (float64, clipped at 0).

    Example:
        >>> x = np.random.default_rng(0).standard_normal((40, 3)); w = np.ones((1, 3))
        >>> gs = GramStats("l", "x", "linear", 1, (x.T @ x)[None], x.sum(0)[None], 40)
        >>> e = layer_error(w, np.zeros(1), gs, np.array([0, 1]), np.array([2]), "none")
        >>> bool(np.isclose(e, np.sum(x[:, 2] ** 2)))
        True
    """
    gram, col_sum, n = gs.gram[0], gs.col_sum[0], float(gs.rows)
    if recover == "lstsq":
        new_rows, new_bias = affine_refit(rows, bias, gram, col_sum, gs.rows, keep_cols, ridge=ridge)
        delta = -rows.copy()
        delta[:, keep_cols] += new_rows
        d_bias = new_bias - bias
        g, s = gram, col_sum
    else:
        delta = -rows[:, drop_cols]
        g, s = gram[np.ix_(drop_cols, drop_cols)], col_sum[drop_cols]
        means = (col_sum / max(n, 1.0)) if channel_means is None else channel_means
        d_bias = rows[:, drop_cols] @ means[drop_cols] if recover == "bias" else np.zeros(rows.shape[0])
    quad = np.einsum("ok,ok->o", delta @ g, delta)
    err = float(np.sum(quad + 2.0 * d_bias * (delta @ s) + n * d_bias * d_bias))
    return max(err, 0.0)


class GramScorer:
    """Scores plans by the relative reconstruction error of their Conv/Gemm/MatMul sinks.

    Built once per model from one calibration pass (``stats`` must hold the Gram of every sink to score);
    each :meth:`score` is numpy on cached matrices.
    """

    def __init__(self, model: ModelProto, dg: DependencyGraph, stats: ActivationStats, *, recover: str = "none",
                 ridge: float = DEFAULT_RIDGE) -> None:
        if recover not in SCORE_RECOVERIES:
            from onnxprune.core.errors import ConfigError

            raise ConfigError(f"recover must be one of {', '.join(SCORE_RECOVERIES)}, got '{recover}'")
        self.model, self.dg, self.stats, self.recover, self.ridge = model, dg, stats, recover, ridge
        self._idx = GraphIndex(model)
        self._layers: dict[str, _Layer] = {}

    def _layer(self, cut: SinkCut) -> _Layer:
        found = self._layers.get(cut.key)
        if found is None:
            w = self._idx.const_value(cut.node.input[1])
            assert w is not None  # sink_cuts only yields layers with a constant weight
            n_out = _out_channels(cut.node, w.shape, self._idx.opset)
            rows = weight_rows(cut.node, w.astype(np.float64), self._idx.opset)
            bias = layer_bias(self._idx, cut.node, n_out).reshape(rows.shape[:2])
            gs = self.stats.gram(cut.key)
            energy = (quadratic(rows, gs.gram) + 2.0 * bias * np.einsum("gok,gk->go", rows, gs.col_sum)
                      + gs.rows * bias * bias)
            found = _Layer(rows, bias, _kernel_size(cut.node, w.shape), gs, energy)
            self._layers[cut.key] = found
        return found

    def sink_errors(self, plan: object) -> dict[str, tuple[float, float]]:
        """Per scored sink of ``plan``: ``(squared error, squared output norm)`` on its kept outputs."""
        out: dict[str, tuple[float, float]] = {}
        for cut in sink_cuts(self.model, self.dg, plan, idx=self._idx):
            gs = self.stats.grams.get(cut.key)
            if gs is None or gs.groups != conv_groups(cut.node, self._idx.opset):
                continue
            layer = self._layer(cut)
            groups, per_group = layer.energy.shape
            width = layer.rows.shape[2] // layer.kernel
            keep_cols = _expand_cols(cut.keep_in, layer.kernel)
            drop_cols = _expand_cols(np.setdiff1d(np.arange(width), cut.keep_in), layer.kernel)
            chan = column_means(self._idx, cut, self.stats, width, groups) if self.recover == "bias" else None
            err = energy = 0.0
            for g in range(groups):  # what recovery leaves on each conv group (recover._recover_sink)
                outs = cut.keep_out[cut.keep_out // per_group == g] - g * per_group
                means = None if chan is None else np.repeat(chan[g], layer.kernel)
                err += layer_error(layer.rows[g][outs], layer.bias[g][outs], _group_stats(gs, g), keep_cols,
                                   drop_cols, self.recover, channel_means=means, ridge=self.ridge)
                energy += float(np.sum(layer.energy[g][outs]))
            out[cut.key] = (err, energy)
        return out

    def score(self, plan: object) -> float | None:
        """Relative L2 error of ``plan`` over its scored sinks; ``None`` when it cuts no scorable layer."""
        errors = self.sink_errors(plan)
        if not errors:
            return None
        err = sum(e for e, _ in errors.values())
        energy = sum(n for _, n in errors.values())
        return math.sqrt(err / energy) if energy > 0 else math.sqrt(err)


def _group_stats(gs: GramStats, g: int) -> GramStats:
    """Conv group ``g``'s block of a layer's Gram statistics, as a one-group ``GramStats``."""
    if gs.groups == 1:
        return gs
    cross = None if gs.cross is None else gs.cross[g:g + 1]
    return replace(gs, groups=1, gram=gs.gram[g:g + 1], col_sum=gs.col_sum[g:g + 1], cross=cross)


def quadratic(rows: np.ndarray, gram: np.ndarray) -> np.ndarray:
    """``w G wᵀ`` for every row ``w``: ``(G, O, K)`` rows and ``(G, K, K)`` Grams → ``(G, O)``.

    One batched matmul (BLAS) and a row-wise dot, not a three-operand ``einsum``, which numpy runs as a plain
    loop over ``O·K²`` terms (seconds per layer on a ResNet-50 3×3 conv, K = 4608); equal to round-off.

    Example:
        >>> r = np.arange(6.0).reshape(1, 2, 3); g = np.eye(3)[None]
        >>> quadratic(r, g).tolist()
        [[5.0, 50.0]]
    """
    return np.einsum("gok,gok->go", np.matmul(rows, gram), rows)


def scorable_sinks(model: ModelProto, dg: DependencyGraph, group_ids: Mapping[int, int] | None = None) -> list[str]:
    """Keys of every Conv/Gemm/MatMul sink any prunable group (or those of ``group_ids``) would cut."""
    one = {g.id: np.zeros(1, dtype=np.int64) for g in dg.prunable_groups
           if g.size > 1 and (group_ids is None or g.id in group_ids)}
    return [c.key for c in sink_cuts(model, dg, one)] if one else []
