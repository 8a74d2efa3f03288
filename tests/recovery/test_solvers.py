"""solve_spd: Cholesky with blockwise triangular solves gives what the previous solve gave (Cholesky factor
solved twice as a general matrix), across the block boundaries, and the min-norm solution when the Gram is
singular or numerically so (a pivot below round-off)."""

from __future__ import annotations

import numpy as np
import pytest

from onnxprune.recovery import solvers
from onnxprune.recovery.solvers import affine_refit, lstsq_refit, masked_refit, solve_spd


def _before(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The solve as it was: ``np.linalg.solve`` on the Cholesky factor and on its transpose."""
    try:
        chol = np.linalg.cholesky(a)
    except np.linalg.LinAlgError:
        return np.linalg.lstsq(a, b, rcond=None)[0]
    return np.linalg.solve(chol.T, np.linalg.solve(chol, b))


def _spd(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((2 * n + 3, n))
    return x.T @ x + 1e-3 * np.eye(n)


@pytest.mark.parametrize("n", [1, 2, 63, 64, 65, 129, 300])
@pytest.mark.parametrize("m", [0, 1, 7])
def test_solve_spd_equals_the_previous_solve(n: int, m: int) -> None:
    """Sizes around the 64-row blocks (one block, exact multiples, a remainder); ``m=0``: a vector."""
    a = _spd(n, n)
    r = np.random.default_rng(m)
    b = r.standard_normal(n) if m == 0 else r.standard_normal((n, m))
    got = solve_spd(a, b)
    assert got.shape == b.shape
    np.testing.assert_allclose(got, _before(a, b), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(a @ got, b, atol=1e-8 * np.abs(b).max())


def test_refits_equal_the_previous_solver(monkeypatch: pytest.MonkeyPatch) -> None:
    """The three re-fits built on solve_spd give the same weights with the previous solve."""
    r = np.random.default_rng(3)
    x = r.standard_normal((400, 150))
    x[:, 140:] = x[:, :10] + 0.1 * r.standard_normal((400, 10))
    g = x.T @ x
    w = r.standard_normal((20, 150))
    keep = np.arange(130)
    mask = r.random(w.shape) > 0.5

    def run() -> list[np.ndarray]:
        return [lstsq_refit(w[:, keep], g[np.ix_(keep, keep)], g[keep] @ w.T),
                *affine_refit(w, np.full(20, 0.5), g, x.sum(0), 400, keep),
                masked_refit(w, mask, g, method="direct")]

    now = run()
    monkeypatch.setattr(solvers, "solve_spd", _before)
    before = run()
    for a, b in zip(now, before, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("noise", [0.0, 1e-9])
def test_singular_or_near_singular_gram_gets_the_min_norm_solution(noise: float) -> None:
    """A column that copies two others (exactly, or up to 1e-9: a pivot below round-off) has no unique
    solution: the min-norm least-squares one, finite and small, never one blown up by the tiny pivot."""
    r = np.random.default_rng(0)
    x = r.standard_normal((50, 6))
    x[:, 5] = x[:, 1] + x[:, 2] + noise * r.standard_normal(50)
    a = x.T @ x
    b = a @ r.standard_normal((6, 3))
    got = solve_spd(a, b)
    np.testing.assert_allclose(got, np.linalg.lstsq(a, b, rcond=None)[0], atol=1e-9)
    assert np.abs(got).max() < 10
