"""SparseGPT (Frantar & Alistarh, 2023): choose each layer's zeros and update the survivors in one pass.

Why this module exists: Wanda picks zeros from ``|W| × ‖x‖`` and leaves the survivors as they are; a masked
re-fit (``--recover lstsq``) can repair the survivors afterwards, but for a mask chosen without knowing what
the repair can do. SparseGPT does both at once, column by column, from the layer's input Gram matrix
``H = XᵀX`` that calibration already collects (:mod:`onnxprune.recovery.calibrate`, im2col for Conv):

* ``H`` is damped (``λ`` = 1% of its mean diagonal) and ``U``, the upper Cholesky factor of ``H⁻¹``, is
  computed once. ``U[j, j]²`` is ``[H_F⁻¹]_jj`` for the columns ``F = {j, j+1, ...}`` not yet processed, the
  denominator of the Optimal Brain Surgeon saliency ``w_j² / [H_F⁻¹]_jj``.
* Columns are processed in blocks of 128. For unstructured sparsity the zeros of a block are the entries of
  least saliency over the whole block (rows × columns), chosen when the block starts; for N:M, the ``m - n``
  of least saliency in each row's group of ``m`` consecutive columns, chosen when the group starts.
* When column ``j`` is processed, each row's pruned entry is zeroed and its error spread over the columns
  still to come by the OBS update ``w_F -= (w_j / U_jj) · U[j, F]``; kept entries are frozen. Updates to
  later blocks are applied once per block (lazy batching), which gives the same numbers.

Exactness as :mod:`onnxprune.sparse.sparsify` promises it: a layer gets exactly the count of zeros it is
given (``round(s × numel)``, or ``m - n`` in every group of ``m``). Entries already zero stay zero and count
first. The per-block counts add up to the layer's count (each block's share of what the existing zeros leave,
rounded cumulatively), so no rounding is lost. Input columns that are always zero on the calibration data
(a dead Gram diagonal) cannot change the output there, so their weights go right after existing zeros.

Weights stored as int8 behind DequantizeLinear are refused (an update computes float weights; Wanda and
magnitude keep them quantized). float16/bfloat16 weights are updated in float64 and written back in their
dtype; a survivor that would round to zero there is written as the smallest subnormal of its sign instead,
so the count of zeros stays exact.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from onnx import ModelProto

from onnxprune.core.errors import ConfigError
from onnxprune.core.ir import GraphIndex
from onnxprune.core.weights import PrunableWeight, SkippedWeight
from onnxprune.recovery.calibrate import GRAM_OPS, ActivationStats, rows_to_weight, weight_rows
from onnxprune.recovery.recover import refuse_quantized
from onnxprune.recovery.solvers import require_finite
from onnxprune.sparse.sparsify import LayerTarget

log = logging.getLogger(__name__)

#: Columns processed per block (the paper's value).
BLOCK_SIZE = 128
#: Dampening of the Gram matrix, relative to its mean diagonal (the paper's 1%).
DAMP = 0.01


def split_count(total: int, sizes: Sequence[int], floors: Sequence[int]) -> list[int]:
    """Share ``total`` zeros among segments of ``sizes`` entries, each keeping at least its ``floors``.

    What is left after the floors is shared in proportion to each segment's free entries
    (``size - floor``), rounded cumulatively so the shares add up to exactly ``max(total, Σ floors)`` and
    never exceed a segment's size.

    Example:
        >>> split_count(5, [4, 4, 4], [0, 0, 0])
        [2, 1, 2]
        >>> split_count(5, [4, 4], [3, 0])
        [3, 2]
    """
    floors = [int(f) for f in floors]
    free = [int(s) - f for s, f in zip(sizes, floors, strict=True)]
    extra = max(int(total) - sum(floors), 0)
    room = sum(free)
    extra = min(extra, room)
    out: list[int] = []
    done = 0
    cum = 0
    for f, cap in zip(floors, free, strict=True):
        cum += cap
        upto = round(extra * cum / room) if room else 0
        out.append(f + upto - done)
        done = upto
    return out


def _upper_cholesky_of_inverse(h: np.ndarray) -> np.ndarray:
    """``U`` upper triangular with ``UᵀU = H⁻¹``; the damping is raised tenfold while ``H`` is not positive
    definite (a rank-deficient Gram of few samples)."""
    eye = np.eye(h.shape[0])
    extra = 0.0
    scale = float(np.mean(np.diag(h))) or 1.0
    for _ in range(8):
        try:
            lower = np.linalg.cholesky(h + extra * eye)
            inv_lower = np.linalg.solve(lower, eye)
            h_inv = inv_lower.T @ inv_lower
            return np.linalg.cholesky((h_inv + h_inv.T) / 2).T
        except np.linalg.LinAlgError:
            extra = scale * DAMP if extra == 0 else extra * 10
            log.debug("Gram matrix not positive definite after damping; adding %.3g", extra)
    raise ConfigError("the layer's input Gram matrix stays singular after damping; the calibration data may hold "
                      "NaN or all-equal samples")


def sparsegpt_rows(w: np.ndarray, gram: np.ndarray, *, zeros: int | None = None,
                   nm: tuple[int, int] | None = None, block_size: int = BLOCK_SIZE,
                   damp: float = DAMP, cross: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """SparseGPT on one weight in row layout: rows are outputs, columns the inputs ``gram`` describes.

    Args:
        w: ``(R, K)`` weights, ``y = x · w[r]`` for output ``r``.
        gram: ``(K, K)`` ``XᵀX`` of the layer's input.
        zeros: unstructured: exactly this many zeros (at least the entries already zero).
        nm: ``(n, m)``: keep ``n`` of every ``m`` consecutive columns of each row (``K % m == 0``).
        block_size: columns per block (rounded down to a multiple of ``m`` for N:M, at least ``m``).
        damp: dampening relative to the mean diagonal of ``gram``.
        cross: ``(K, K)`` ``X̃ᵀX`` when ``gram`` is ``X̃ᵀX̃`` of the input the layer now sees and the target is
            ``X w`` on another input (the dense model's, in sequential calibration): the updates then start
            from the unconstrained optimum ``w* = (X̃ᵀX̃ + λI)⁻¹ X̃ᵀX w``, since ``‖Xw − X̃v‖² = ‖X̃(w* − v)‖²``
            up to a constant. Entries of ``w`` that are zero stay zero.

    Returns:
        ``(values, mask)``: ``(R, K)`` float64 weights with zeros where ``mask`` is True.

    Raises:
        ConfigError: neither or both of ``zeros`` and ``nm``, or shapes that do not fit.
    """
    if (zeros is None) == (nm is None):
        raise ConfigError("sparsegpt_rows needs exactly one of zeros= (unstructured) and nm= (N:M)")
    weights = np.array(w, dtype=np.float64)
    r, k = weights.shape
    if gram.shape != (k, k):
        raise ConfigError(f"sparsegpt: weight rows {weights.shape} do not fit a Gram matrix of shape {gram.shape}")
    if nm is not None and k % nm[1]:
        raise ConfigError(f"sparsegpt: {k} input columns are not a multiple of M={nm[1]}")
    forced = weights == 0  # existing zeros stay zero and are pruned first
    h = np.array(gram, dtype=np.float64)
    dead = np.diag(h) <= 0
    h[dead, dead] = 1.0
    h[np.diag_indices(k)] += damp * float(np.mean(np.diag(h)))
    u = _upper_cholesky_of_inverse(h)
    if cross is not None:
        weights = (u.T @ (u @ (np.asarray(cross, dtype=np.float64) @ weights.T))).T  # H⁻¹ = UᵀU
    if nm is not None:
        block_size = max(nm[1], block_size - block_size % nm[1])
    starts = list(range(0, k, block_size))
    quotas: list[int] = []
    if zeros is not None:
        sizes = [r * (min(b + block_size, k) - b) for b in starts]
        floors = [int(np.count_nonzero(forced[:, b:b + block_size])) for b in starts]
        quotas = split_count(zeros, sizes, floors)
    mask = np.zeros((r, k), dtype=bool)
    for bi, b0 in enumerate(starts):
        b1 = min(b0 + block_size, k)
        block = weights[:, b0:b1].copy()
        u1 = u[b0:b1, b0:b1]
        diag = np.diag(u1)
        errors = np.zeros_like(block)
        bmask = np.zeros(block.shape, dtype=bool)
        if zeros is not None:
            saliency = _saliency(block, diag, forced[:, b0:b1], dead[b0:b1])
            order = np.argsort(saliency.ravel(), kind="stable")[: quotas[bi]]
            bmask.ravel()[order] = True
        for i in range(b1 - b0):
            if nm is not None and i % nm[1] == 0:
                n, m = nm
                sl = slice(i, i + m)
                saliency = _saliency(block[:, sl], diag[sl], forced[:, b0 + i:b0 + i + m], dead[b0 + i:b0 + i + m])
                order = np.argsort(saliency, axis=1, kind="stable")[:, : m - n]
                group = forced[:, b0 + i:b0 + i + m].copy()
                np.put_along_axis(group, order, True, axis=1)
                bmask[:, sl] = group
            col = block[:, i]
            err = np.where(bmask[:, i], col, 0.0) / diag[i]
            block[:, i:] -= np.outer(err, u1[i, i:])
            block[:, i] = np.where(bmask[:, i], 0.0, block[:, i])
            errors[:, i] = err
        weights[:, b0:b1] = block
        weights[:, b1:] -= errors @ u[b0:b1, b1:]
        mask[:, b0:b1] = bmask
    weights[mask] = 0.0
    return weights, mask


def _saliency(block: np.ndarray, diag: np.ndarray, forced: np.ndarray, dead: np.ndarray) -> np.ndarray:
    """``w² / U_jj²`` (lower = pruned first); existing zeros ``-inf``, dead input columns ``0``."""
    out = block**2 / (diag**2)[None, :]
    out[:, dead] = 0.0
    out[forced] = -np.inf
    return out


def _write_dtype(values: np.ndarray, mask: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``values`` in ``dtype``, survivors that round to zero there replaced by the smallest subnormal of
    their sign (the count of zeros must not grow by rounding)."""
    out = values.astype(dtype)
    lost = (out == 0) & ~mask & (values != 0)
    if np.any(lost):
        tiny = np.nextafter(np.zeros((), dtype=out.dtype), np.ones((), dtype=out.dtype))
        out[lost] = np.where(values[lost] > 0, tiny, -tiny)
        log.debug("%d updated weights below the smallest %s kept as its smallest subnormal", int(lost.sum()), dtype)
    return out


def refuse_quantized_sparsegpt(model: ModelProto) -> None:
    """SparseGPT writes float weights: refuse a QDQ model with the way out.

    Raises:
        ConfigError: the model holds weights stored as integers behind DequantizeLinear.
    """
    refuse_quantized(model, doing="--importance sparsegpt updates the remaining weights in float",
                     fix="use --importance wanda or magnitude (they keep the integer weights), or prune the float "
                         "model and quantize it afterwards")


@dataclass
class SparseGPTUpdate:
    """A :data:`~onnxprune.sparse.sparsify.WeightUpdate` running SparseGPT on every weight it has a Gram for.

    Weights it cannot update (read by several layers, not a Conv/Gemm/2-D MatMul weight, no Gram collected)
    are declined, so they are pruned by magnitude; :attr:`declined` says which and why.

    Attributes:
        model: the model being pruned (the one the statistics were measured on).
        stats: its calibration statistics, with the Gram matrix of every layer to update.
        block_size, damp: as in :func:`sparsegpt_rows`.
        declined: weights pruned by magnitude instead, with the reason.
        updated: weights SparseGPT updated.
    """

    model: ModelProto
    stats: ActivationStats
    block_size: int = BLOCK_SIZE
    damp: float = DAMP
    declined: list[SkippedWeight] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._idx = GraphIndex(self.model)

    def __call__(self, pw: PrunableWeight, w: np.ndarray, target: LayerTarget
                 ) -> tuple[np.ndarray, np.ndarray] | None:
        reason = self._why_not(pw, w)
        if reason:
            log.info("sparsegpt: weight '%s' pruned by magnitude: %s", pw.name, reason)
            self.declined.append(SkippedWeight(pw.name, reason))
            return None
        key = pw.readers[0]
        node = self._idx.nodes_by_name[key]
        gs = self.stats.grams[key]
        rows = weight_rows(node, w.astype(np.float64), self._idx.opset)  # (groups, outputs per group, K)
        if gs.gram.shape != (rows.shape[0], rows.shape[2], rows.shape[2]):
            reason = f"its Gram matrix {gs.gram.shape} does not fit the weight's rows {rows.shape}"
            self.declined.append(SkippedWeight(pw.name, reason))
            return None
        if target.zeros is not None:
            counts = split_count(target.zeros, [rows[g].size for g in range(rows.shape[0])],
                                 [int(np.count_nonzero(rows[g] == 0)) for g in range(rows.shape[0])])
        new_rows = np.empty_like(rows)
        mask_rows = np.empty(rows.shape, dtype=bool)
        for g in range(rows.shape[0]):
            new_rows[g], mask_rows[g] = sparsegpt_rows(
                rows[g], gs.gram[g], zeros=counts[g] if target.zeros is not None else None, nm=target.nm,
                block_size=self.block_size, damp=self.damp, cross=None if gs.cross is None else gs.cross[g])
        mask = rows_to_weight(node, mask_rows, w.shape, self._idx.opset)
        values = _write_dtype(rows_to_weight(node, new_rows, w.shape, self._idx.opset), mask, w.dtype)
        self.updated.append(pw.name)
        return mask, require_finite(values, key, "sparsegpt")

    def _why_not(self, pw: PrunableWeight, w: np.ndarray) -> str:
        if len(pw.readers) != 1:
            return f"read by {len(pw.readers)} layers"
        if pw.op_types[0] not in GRAM_OPS:
            return f"read by a {pw.op_types[0]} (SparseGPT covers {', '.join(GRAM_OPS)})"
        if pw.op_types[0] == "MatMul" and w.ndim != 2:
            return f"a batched MatMul weight of shape {list(w.shape)}"
        if pw.readers[0] not in self.stats.grams:
            return "no input Gram matrix was collected for its layer"
        if w.dtype not in (np.float16, np.float32, np.float64):
            return f"stored as {w.dtype} (SparseGPT writes float16, float32 and float64 weights)"
        return ""

    def report(self) -> dict[str, object]:
        """JSON-ready: the weights updated and those pruned by magnitude instead (with the reason)."""
        return {"updated": list(self.updated),
                "magnitude_instead": [{"name": s.name, "reason": s.reason} for s in self.declined]}


def gram_layers(model: ModelProto, weights: Iterable[PrunableWeight]) -> list[str]:
    """The layers (node keys) whose input Gram SparseGPT or a re-fit needs: the single Gram-op reader of
    each weight."""
    return list(dict.fromkeys(pw.readers[0] for pw in weights
                              if len(pw.readers) == 1 and pw.op_types[0] in GRAM_OPS))

