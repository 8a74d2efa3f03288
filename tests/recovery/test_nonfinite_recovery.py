"""Recovery that gives NaN or infinite weights is an error: no model of NaN weights is ever returned.

Issue: an all-NaN `--calib` with `--recover lstsq` exited 0 with every weight NaN. Non-finite data is now
refused up front (tests/runtime/test_nonfinite.py); this is the second guard, for finite data whose
statistics overflow.
"""

from __future__ import annotations

import numpy as np
import pytest
from builders import mlp

from onnxprune.core.errors import CalibrationError
from onnxprune.recovery.calibrate import collect_stats
from onnxprune.recovery.recover import recover_sparse
from onnxprune.sparse.sparsify import sparsify


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # the NaN the guard catches
def test_recovery_giving_non_finite_weights_is_an_error() -> None:
    """Finite data whose statistics overflow must not end in a model of NaN weights."""
    model = mlp(d_in=16)
    x = np.random.default_rng(0).standard_normal((64, 16)).astype(np.float32)
    sparse = sparsify(model, sparsity=0.7).model
    stats = collect_stats(model, [{"x": x}], gram_for=["fc1", "fc2"])
    stats.grams["fc1"].gram[...] = np.inf  # what overflowing float32 activations give
    stats.grams["fc1"].col_sum[...] = np.inf
    with pytest.raises(CalibrationError, match=r"recovery 'lstsq' gave \d+ non-finite weight\(s\) in layer 'fc1'"):
        recover_sparse(model, sparse, stats)
    with pytest.raises(CalibrationError, match="non-finite weight"):
        recover_sparse(model, sparse, stats, method="bias")
