"""LayerNorm affine fold (exact) and the stream's shape freeze (exact), proven in onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from onnxprune.runtime.session import create_session, run_session
from onnxprune.structured.lnfold import fold_layernorm_affine
from onnxprune.structured.stream import freeze_stream_shapes
from tests.builders import norm_block

MODELS = Path(__file__).resolve().parents[2] / "models"


def _outputs(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return run_session(create_session(model), feeds)


def _feeds(model: onnx.ModelProto, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    r = np.random.default_rng(seed)
    feeds = {}
    for vi in model.graph.input:
        dims = [d.dim_value if d.dim_value else batch for d in vi.type.tensor_type.shape.dim]
        feeds[vi.name] = r.standard_normal(dims).astype(np.float32)
    return feeds


def _assert_same(a: onnx.ModelProto, b: onnx.ModelProto, batch: int = 3) -> None:
    feeds = _feeds(a, batch)
    oa, ob = _outputs(a, feeds), _outputs(b, feeds)
    for name, va in oa.items():
        scale = max(float(np.abs(va).max()), 1e-6)
        np.testing.assert_allclose(ob[name], va, atol=2e-5 * scale, rtol=0)


def _randomized(path: Path, seed: int = 0) -> onnx.ModelProto:
    """The shipped model with random LayerNorm scales/shifts and no all-zero weights (torchvision's ViT head
    is zero-initialised: its logits would hide any error)."""
    model = onnx.load(path)
    r = np.random.default_rng(seed)
    ln_params = {i for n in model.graph.node if n.op_type == "LayerNormalization" for i in n.input[1:]}
    for t in model.graph.initializer:
        v = numpy_helper.to_array(t)
        if v.dtype != np.float32 or v.size < 2:
            continue
        if t.name in ln_params:
            t.CopyFrom(numpy_helper.from_array((v + r.normal(0, 0.5, v.shape)).astype(np.float32), t.name))
        elif not v.any():
            t.CopyFrom(numpy_helper.from_array(r.normal(0, 0.1, v.shape).astype(np.float32), t.name))
    return model


def _ln_params(model: onnx.ModelProto, folded: tuple[str, ...]) -> list[tuple[np.ndarray, np.ndarray | None]]:
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    out = []
    for n in model.graph.node:
        if n.op_type == "LayerNormalization" and any(n.name in f for f in folded):
            out.append((inits[n.input[1]], inits.get(n.input[2]) if len(n.input) > 2 else None))
    return out


@pytest.mark.parametrize("pre_norm", [True, False])
def test_fold_builder_exact_and_plain_norms(pre_norm: bool) -> None:
    model = norm_block(pre_norm=pre_norm)
    result = fold_layernorm_affine(model)
    onnx.checker.check_model(result.model, full_check=True)
    # pre-norm: both LNs fold; post-norm: the first LN feeds the residual Add, so only the last one folds
    assert len(result.folded) == (2 if pre_norm else 1)
    if not pre_norm:
        assert any("Add" in why for why in result.skipped.values())
    for gamma, beta in _ln_params(result.model, result.folded):
        assert np.all(gamma == 1) and (beta is None or np.all(beta == 0))
    _assert_same(model, result.model)


def test_fold_leaves_graph_output_alone() -> None:
    model = norm_block(ln_output=True)
    result = fold_layernorm_affine(model)
    assert len(result.folded) == 1
    assert any("graph output" in why for why in result.skipped.values())
    _assert_same(model, result.model)  # the exposed LN output is unchanged too


def test_fold_really_moves_the_affine() -> None:
    """Without folding into the readers (only resetting the LN), outputs would differ: the check has teeth."""
    model = norm_block()
    result = fold_layernorm_affine(model)
    broken = onnx.ModelProto()
    broken.CopyFrom(model)
    inits = {t.name: t for t in broken.graph.initializer}
    for n in broken.graph.node:
        if n.op_type == "LayerNormalization":
            g = numpy_helper.to_array(inits[n.input[1]])
            inits[n.input[1]].CopyFrom(numpy_helper.from_array(np.ones_like(g), n.input[1]))
    with pytest.raises(AssertionError):
        _assert_same(model, broken)
    _assert_same(model, result.model)


@pytest.mark.parametrize("name, least", [("digits_transformer", 1), ("tv_vit_b_16", 9), ("tv_convnext_tiny", 20)])
def test_fold_shipped_models_exact(name: str, least: int) -> None:
    model = _randomized(MODELS / f"{name}.onnx")
    result = fold_layernorm_affine(model)
    onnx.checker.check_model(result.model, full_check=True)
    assert len(result.folded) >= least, result.skipped
    _assert_same(model, result.model, batch=2)


def test_freeze_stream_shapes_exact_at_any_batch() -> None:
    model = onnx.load(MODELS / "digits_transformer.onnx")
    frozen = freeze_stream_shapes(model)
    assert frozen.constants > 0 and frozen.trailing == 2
    onnx.checker.check_model(frozen.model, full_check=True)
    for batch in (1, 5):
        _assert_same(model, frozen.model, batch=batch)
