"""Block influence: 1 - mean cosine between the stream before and after a residual branch, on data."""

from __future__ import annotations

from pathlib import Path

import builders
import numpy as np

from onnxprune.recovery.block_influence import block_influence
from onnxprune.structured.depth import depth_reference, residual_branches

MODELS = Path(__file__).resolve().parents[2] / "models"


def test_a_silenced_branch_has_no_influence_and_a_live_one_has_some(tmp_path: Path) -> None:
    model = builders.transformer_ffn(d=8, hidden=16, t=4)
    branches = residual_branches(model)
    data = tmp_path / "calib.npz"
    np.savez(data, x=np.random.default_rng(0).standard_normal((6, 4, 8)).astype(np.float32))
    (live,) = block_influence(model, branches, data)
    (silenced,) = block_influence(depth_reference(model, branches), branches, data)
    assert 0.0 < live < 2.0
    assert abs(silenced) < 1e-12


def test_influence_ranks_the_mlp_of_digits_transformer_lowest() -> None:
    """Measured, not assumed: on the shipped calibration digits the first MLP sublayer turns the stream
    least (the data-free norm ranks the attention sublayers lowest)."""
    from onnxprune.core.io import load_model

    model = load_model(MODELS / "digits_transformer.onnx")
    branches = residual_branches(model)
    influence = block_influence(model, branches, MODELS / "digits_transformer_calib.npz", max_samples=64)
    assert branches[int(np.argmin(influence))].add == "/encoder/layers.0/Add_1"
    assert int(np.argmin([b.score for b in branches])) != int(np.argmin(influence))
