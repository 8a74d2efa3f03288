"""The linear algebra of recovery: ridge least squares, masked re-fits, bias compensation, on Gram matrices.

Why a module of its own: these are pure numpy functions of Gram statistics (no graph, no runtime), shared
by the structured and sparse re-fits (:mod:`onnxprune.recovery.recover`), SparseGPT, width pruning and the
Gram-scored sensitivity; tests check them against independent numpy references.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from onnxprune.core.errors import CalibrationError, ConfigError

log = logging.getLogger(__name__)

#: Default ridge, relative to the mean diagonal of the Gram matrix (scale-free).
DEFAULT_RIDGE = 1e-3
#: Above this many flops, masked re-fit switches from exact per-row solves to batched conjugate gradients.
_DIRECT_FLOPS = 4e9


def _ridge_value(gram: np.ndarray, ridge: float) -> float:
    """Absolute ridge: ``ridge`` × mean diagonal of ``gram`` (``ridge`` itself for an all-zero Gram)."""
    if ridge < 0 or not math.isfinite(ridge):
        raise ConfigError(f"ridge must be a finite number >= 0, got {ridge}")
    scale = float(np.mean(np.diag(gram))) if gram.size else 0.0
    return ridge * (scale if scale > 0 else 1.0)


#: Rows of the diagonal blocks the triangular solves of :func:`solve_spd` invert (matrix products elsewhere).
_TRI_BLOCK = 64


def solve_spd(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Solve ``a x = b`` for a symmetric positive semi-definite ``a`` (min-norm least squares if singular).

    Why Cholesky: ``a`` is a (ridge-regularized) Gram matrix, so ``a = L Lᵀ`` costs half an LU factorization,
    and the two triangular solves are done blockwise as matrix products (:func:`_cholesky_solve`: numpy has
    no triangular solve, and ``numpy.linalg.solve`` on ``L`` would factorize it again as a general matrix).
    When the factorization fails or a pivot is below round-off (``min L_ii² ≤ n·ε·max L_ii²``, numerically
    singular), the min-norm least-squares solution is returned, as before.
    """
    b = np.asarray(b, dtype=np.float64)
    n = a.shape[0]
    try:
        chol = np.linalg.cholesky(a)
    except np.linalg.LinAlgError:
        return _min_norm(a, b)
    pivots = np.diag(chol) ** 2
    if n and np.isfinite(pivots).all() and pivots.min() <= n * np.finfo(np.float64).eps * pivots.max():
        return _min_norm(a, b)  # non-finite statistics go on, so the caller's require_finite names them
    return _cholesky_solve(chol, b.reshape(n, -1)).reshape(b.shape)


def _min_norm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    log.debug("Gram matrix of size %d is singular; using a least-squares solve", a.shape[0])
    return np.linalg.lstsq(a, b, rcond=None)[0]


def _cholesky_solve(low: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(L Lᵀ)⁻¹ b`` for a lower-triangular ``L`` with a positive diagonal and ``b`` of shape ``(n, m)``.

    Forward then backward substitution by blocks of :data:`_TRI_BLOCK` rows: each block's diagonal triangle
    is inverted once (small) and used for both passes (``inv(Lᵀ_ii) = inv(L_ii)ᵀ``); all other work is matrix
    products, which numpy runs at full BLAS speed.
    """
    n = low.shape[0]
    starts = range(0, n, _TRI_BLOCK)
    inv = [np.linalg.inv(low[s:s + _TRI_BLOCK, s:s + _TRI_BLOCK]) for s in starts]
    y = np.empty_like(b)
    for i, s in enumerate(starts):
        e = min(s + _TRI_BLOCK, n)
        y[s:e] = inv[i] @ (b[s:e] - low[s:e, :s] @ y[:s])
    x = np.empty_like(y)
    for i in reversed(range(len(inv))):
        s = starts[i]
        e = min(s + _TRI_BLOCK, n)
        x[s:e] = inv[i].T @ (y[s:e] - low[e:, s:e].T @ x[e:])
    return x


def lstsq_refit(w_kept_cols: np.ndarray, gram: np.ndarray, cross: np.ndarray, *,
                ridge: float = DEFAULT_RIDGE) -> np.ndarray:
    """Re-fit the kept input columns of a layer so it reproduces a target output, all rows at once.

    Solves ``W' = argmin ‖X_k W'ᵀ − Y‖² + λ‖W' − W_k‖²`` through its normal equations
    ``(G_kk + λI) W'ᵀ = X_kᵀY + λ W_kᵀ``, where ``G_kk = X_kᵀX_k``. For the usual target ``Y = X Wᵀ``
    (the original layer), ``X_kᵀY = G[kept, :] Wᵀ``. The ridge pulls towards the current kept weights,
    so ``ridge → ∞`` gives back plain pruning; ``λ = ridge × mean(diag G_kk)``.

    Args:
        w_kept_cols: ``(O, K')`` current weights of the kept columns.
        gram: ``(K', K')`` Gram matrix of the kept columns.
        cross: ``(K', O)`` cross term ``X_kᵀ Y``.
        ridge: relative ridge (≥ 0).

    Returns:
        ``(O, K')`` float64 re-fitted weights.

    Example:
        >>> x = np.random.default_rng(0).standard_normal((50, 3))
        >>> x[:, 2] = x[:, 0] - x[:, 1]          # the dropped column is a combination of the kept ones
        >>> w = np.array([[1.0, 2.0, 3.0]])
        >>> g = x.T @ x
        >>> np.round(lstsq_refit(w[:, :2], g[:2, :2], g[:2] @ w.T, ridge=0), 6)
        array([[ 4., -1.]])
    """
    w_kept_cols = np.asarray(w_kept_cols, dtype=np.float64)
    gram = np.asarray(gram, dtype=np.float64)
    cross = np.asarray(cross, dtype=np.float64)
    k = gram.shape[0]
    if gram.shape != (k, k) or cross.shape[0] != k or w_kept_cols.shape != (cross.shape[1], k):
        raise ConfigError(
            f"lstsq_refit: shapes do not fit (weights {w_kept_cols.shape}, gram {gram.shape}, "
            f"cross {cross.shape}); expected (O, K'), (K', K'), (K', O)"
        )
    lam = _ridge_value(gram, ridge)
    a = gram + lam * np.eye(k)
    b = cross + lam * w_kept_cols.T
    return solve_spd(a, b).T


def affine_refit(w: np.ndarray, b: np.ndarray, gram: np.ndarray, col_sum: np.ndarray, rows: int,
                 keep: np.ndarray, *, ridge: float = DEFAULT_RIDGE) -> tuple[np.ndarray, np.ndarray]:
    """Re-fit kept columns *and* the bias so ``X_k W'ᵀ + b'`` matches the original ``X Wᵀ + b``.

    This is :func:`lstsq_refit` on the input augmented with a constant column of ones (whose Gram entries
    are the column sums and the row count); the bias is not regularized.

    Args:
        w: ``(O, K)`` original weights (all columns).
        b: ``(O,)`` original bias.
        gram: ``(K, K)`` Gram of the original input; col_sum ``(K,)`` its column sums; rows its row count.
        keep: sorted kept column indices.
        ridge: relative ridge on the weights.

    Returns:
        ``(W' (O, K'), b' (O,))`` in float64.
    """
    w = np.asarray(w, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    keep = np.asarray(keep, dtype=np.int64)
    n = float(rows)
    kk = keep.size
    aug = np.empty((kk + 1, kk + 1))
    aug[:kk, :kk] = gram[np.ix_(keep, keep)]
    aug[:kk, kk] = aug[kk, :kk] = col_sum[keep]
    aug[kk, kk] = n
    # cross = [X_k 1]ᵀ (X Wᵀ + 1 bᵀ)
    cross = np.empty((kk + 1, w.shape[0]))
    cross[:kk] = gram[keep] @ w.T + np.outer(col_sum[keep], b)
    cross[kk] = col_sum @ w.T + n * b
    lam = _ridge_value(aug[:kk, :kk], ridge)
    reg = np.full(kk + 1, lam)
    reg[kk] = 0.0
    target = np.concatenate([w[:, keep].T, b[None, :]])
    sol = solve_spd(aug + np.diag(reg), cross + reg[:, None] * target)
    return sol[:kk].T, sol[kk]


def compensate_bias(w: np.ndarray, b: np.ndarray | None, drop: np.ndarray, col_mean: np.ndarray) -> np.ndarray:
    """The bias after folding the mean contribution of the dropped columns into it.

    ``b' = b + W[:, drop] · mean[drop]``: exact when the dropped inputs are constant.

    Args:
        w: ``(O, K)`` weights (all columns, before the cut).
        b: ``(O,)`` bias or ``None`` (zero).
        drop: dropped column indices.
        col_mean: ``(K,)`` mean of each input column over the calibration data.

    Returns:
        ``(O,)`` float64 bias.

    Example:
        >>> compensate_bias(np.array([[1.0, 2.0]]), np.array([0.5]), np.array([1]), np.array([9.0, 3.0]))
        array([6.5])
    """
    w = np.asarray(w, dtype=np.float64)
    base = np.zeros(w.shape[0]) if b is None else np.asarray(b, dtype=np.float64)
    drop = np.asarray(drop, dtype=np.int64)
    return base + w[:, drop] @ np.asarray(col_mean, dtype=np.float64)[drop]


def bn_channel_mean(beta: np.ndarray, gamma: np.ndarray, *, relu: bool) -> np.ndarray:
    """Expected value of a BatchNormalization output channel (data-free), optionally after a ReLU.

    With accurate running statistics the normalized input is ``N(0, 1)``, so the BN output is
    ``N(beta, gamma²)``: its mean is ``beta``; after a ReLU it is
    ``E[relu(Z)] = beta Φ(beta/|gamma|) + |gamma| φ(beta/|gamma|)``.

    Example:
        >>> float(bn_channel_mean(np.array([0.0]), np.array([1.0]), relu=True)[0])  # 1/sqrt(2π)
        0.3989422804014327
    """
    beta = np.asarray(beta, dtype=np.float64)
    if not relu:
        return beta.copy()
    sigma = np.abs(np.asarray(gamma, dtype=np.float64))
    out = np.maximum(beta, 0.0)
    nz = sigma > 0
    z = beta[nz] / sigma[nz]
    pdf = np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    cdf = 0.5 * (1.0 + np.vectorize(math.erf)(z / math.sqrt(2))) if z.size else z
    out[nz] = beta[nz] * cdf + sigma[nz] * pdf
    return out


# -- masked re-fit (unstructured, N:M) -------------------------------------------------------------
def masked_refit(w: np.ndarray, mask: np.ndarray, gram: np.ndarray, *, ridge: float = DEFAULT_RIDGE,
                 method: str = "auto", max_iter: int = 200, tol: float = 1e-6,
                 cross: np.ndarray | None = None) -> np.ndarray:
    """Re-fit each row's surviving weights, mask fixed, to reproduce the dense row's output.

    Per row ``o`` with kept set ``S``: ``w_S = (G_SS + λI)⁻¹ (G_S: w + λ w_S)`` — the least-squares fit
    of ``X w`` by ``X_S w_S`` with a ridge towards the current values. Rows with the same mask share one
    factorization. Large layers (``method="cg"``, or ``"auto"`` above a few Gflop of direct work) use
    conjugate gradients on all rows at once, started from the masked weights: every CG step lowers the
    objective, so even a capped run never does worse than no re-fit.

    Args:
        w: ``(O, K)`` dense weights, in the layer's (rows = outputs, columns = reduction) layout.
        mask: ``(O, K)`` bool, True where a weight survives.
        gram: ``(K, K)`` Gram matrix of the layer input.
        ridge: relative ridge (≥ 0).
        method: ``"auto"``, ``"direct"`` or ``"cg"``.
        max_iter: CG iteration cap; tol: CG relative residual target.
        cross: ``(K, K)`` ``X̃ᵀX`` when the layer's input is ``X̃`` (``gram = X̃ᵀX̃``) but the target is the
            output on another input ``X`` (sequential calibration: the dense model's); default ``gram``.

    Returns:
        ``(O, K)`` float64 weights, exactly zero outside ``mask``.
    """
    w = np.asarray(w, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    gram = np.asarray(gram, dtype=np.float64)
    if w.shape != mask.shape or gram.shape != (w.shape[1], w.shape[1]):
        raise ConfigError(f"masked_refit: shapes do not fit (w {w.shape}, mask {mask.shape}, gram {gram.shape})")
    if method not in ("auto", "direct", "cg"):
        raise ConfigError(f"masked_refit method must be auto, direct or cg, got '{method}'")
    lam = _ridge_value(gram, ridge)
    target = w @ (gram if cross is None else np.asarray(cross, dtype=np.float64).T)  # row o: (X̃ᵀX w_o)ᵀ
    if method == "auto":
        kept = mask.sum(axis=1).astype(np.float64)
        distinct = len({row.tobytes() for row in np.packbits(mask, axis=1)})
        flops = float(np.sum(kept**3)) / 3 * min(1.0, distinct / max(len(kept), 1)) + float(np.sum(kept**2))
        method = "direct" if flops <= _DIRECT_FLOPS else "cg"
    if method == "direct":
        return _masked_direct(w, mask, gram, lam, target)
    return _masked_cg(w, mask, gram, lam, target, max_iter=max_iter, tol=tol)


def _masked_direct(w: np.ndarray, mask: np.ndarray, gram: np.ndarray, lam: float, gw: np.ndarray) -> np.ndarray:
    out = np.zeros_like(w)
    packed = np.packbits(mask, axis=1)
    groups: dict[bytes, list[int]] = {}
    for i, row in enumerate(packed):
        groups.setdefault(row.tobytes(), []).append(i)
    index_groups = [np.asarray(rows, dtype=np.int64) for rows in groups.values()]
    for rows in index_groups:
        s = np.flatnonzero(mask[rows[0]])
        if s.size == 0:
            continue
        a = gram[np.ix_(s, s)] + lam * np.eye(s.size)
        rhs = gw[np.ix_(rows, s)] + lam * w[np.ix_(rows, s)]
        out[np.ix_(rows, s)] = solve_spd(a, rhs.T).T
    return out


def _masked_cg(w: np.ndarray, mask: np.ndarray, gram: np.ndarray, lam: float, gw: np.ndarray, *, max_iter: int,
               tol: float) -> np.ndarray:
    """Jacobi-preconditioned CG on all rows at once, each row restricted to its mask."""
    m = mask.astype(np.float64)
    a_diag = np.diag(gram) + lam

    def apply(v: np.ndarray) -> np.ndarray:  # rows of v ↦ rows of P (G + λI) v
        return (v @ gram + lam * v) * m

    x = w * m
    rhs = (gw + lam * w) * m
    r = rhs - apply(x)
    inv_diag = np.where(a_diag > 0, 1.0 / np.where(a_diag > 0, a_diag, 1.0), 0.0)
    z = r * inv_diag
    p = z.copy()
    rz = np.einsum("ij,ij->i", r, z)
    norm0 = np.linalg.norm(rhs, axis=1)
    norm0[norm0 == 0] = 1.0
    for it in range(max_iter):
        if np.all(np.linalg.norm(r, axis=1) <= tol * norm0):
            log.debug("masked CG converged in %d iterations", it)
            break
        ap = apply(p)
        pap = np.einsum("ij,ij->i", p, ap)
        alpha = np.divide(rz, pap, out=np.zeros_like(rz), where=pap > 0)
        x += alpha[:, None] * p
        r -= alpha[:, None] * ap
        z = r * inv_diag
        rz_new = np.einsum("ij,ij->i", r, z)
        beta = np.divide(rz_new, rz, out=np.zeros_like(rz), where=rz > 0)
        p = z + beta[:, None] * p
        rz = rz_new
    else:
        worst = float(np.max(np.linalg.norm(r, axis=1) / norm0))
        log.debug("masked CG stopped after %d iterations (worst relative residual %.2e)", max_iter, worst)
    return x * m


def require_finite(value: np.ndarray, layer: str, method: str) -> np.ndarray:
    """``value`` itself, or a :class:`CalibrationError` when it holds NaN or infinity.

    Why: a re-fit from calibration data that overflows (huge activations) or is singular in a way the ridge
    does not catch gives NaN weights, and a model of NaN weights still runs, so nothing downstream would
    stop it being saved. Checked after the cast to the weight's dtype, where float32 overflow shows.

    Raises:
        CalibrationError: naming the layer and the way out.
    """
    bad = int(np.count_nonzero(~np.isfinite(value)))
    if bad:
        raise CalibrationError(
            f"recovery '{method}' gave {bad} non-finite weight(s) in layer '{layer}' (the calibration data "
            f"may hold huge values); check the calibration data, or use --recover bias or --recover none"
        )
    return value
