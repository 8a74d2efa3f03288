"""The one-session re-fit of a cut stream's readers computes what the plain sequential re-fit computes.

The reference below is that re-fit written out plainly (how it was first built): per reader, in graph order,
a copy of the current model with the reader's input as an output, a new onnxruntime session, the ridge
solve, and the fitted weight and bias written into the model before the next reader. The bounded-memory
re-fit (weights fed as graph inputs of one session, the output written once) must give the same model
within float round-off, on both width paths (rotation + slicing, plain channel pruning) and on every kind
of reader (MatMul with a bias Add, MatMul without one, Gemm with transB and C, shared norm outputs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import ModelProto, numpy_helper

import onnxprune.recovery.slicegpt as slicegpt_module
import onnxprune.recovery.width as width_module
from onnxprune.core.errors import ConfigError
from onnxprune.core.ir import GraphIndex
from onnxprune.recovery.calibrate import iter_feeds, rows_to_weight, weight_rows, with_outputs
from onnxprune.recovery.reader_refit import collect
from onnxprune.recovery.recover import SinkCut, layer_bias, set_layer_bias
from onnxprune.recovery.slicegpt import prune_stream_width
from onnxprune.recovery.solvers import DEFAULT_RIDGE, solve_spd
from onnxprune.runtime.session import create_session, run_session
from tests import builders

MODELS = Path(__file__).resolve().parents[2] / "models"


def _reference_refit(original: ModelProto | Path, pruned: ModelProto | list[ModelProto], cuts: list[SinkCut],
                     data: Any, *, ridge: float = DEFAULT_RIDGE, max_samples: int | None = None
                     ) -> tuple[ModelProto, list[dict[str, Any]]]:
    if isinstance(original, Path):  # rotation + slicing hands over the rotated model's file
        original = onnx.load(original)
    if isinstance(pruned, list):  # handed over
        pruned = pruned.pop()
    out = ModelProto()
    out.CopyFrom(pruned)
    idx_o = GraphIndex(original)
    position = {n.output[0]: i for i, n in enumerate(original.graph.node)}
    order = sorted(cuts, key=lambda c: position.get(c.node.output[0], 0))
    originals = collect(original, [c.activation for c in order], data, max_samples)
    fitted = []
    for cut in order:
        idx = GraphIndex(out)
        node = idx.nodes_by_name[cut.key]
        w_o, w_p = idx_o.const_value(cut.node.input[1]), idx.const_value(node.input[1])
        if w_o is None or w_p is None:
            continue
        rows_o = weight_rows(cut.node, w_o.astype(np.float64), idx_o.opset)[0]
        bias_o = layer_bias(idx_o, cut.node, rows_o.shape[0])
        x_o = originals[cut.activation].reshape(-1, rows_o.shape[1]).astype(np.float64)
        session = create_session(with_outputs(out, [node.input[0]]))
        x_p = np.concatenate([run_session(session, f, outputs=[node.input[0]])[node.input[0]]
                              for f in iter_feeds(out, data, max_samples=max_samples)])
        x_p = x_p.reshape(-1, x_p.shape[-1]).astype(np.float64)
        target = (x_o @ rows_o.T + bias_o)[:, cut.keep_out]
        rows_p = weight_rows(node, w_p.astype(np.float64), idx.opset)[0]
        aug = np.hstack([x_p, np.ones((x_p.shape[0], 1))])
        gram = aug.T @ aug
        k = x_p.shape[1]
        reg = np.full(k + 1, ridge * max(float(np.mean(np.diag(gram)[:k])), 1e-12))
        reg[k] = 0.0
        prior = np.vstack([rows_p.T, layer_bias(idx, node, rows_p.shape[0])[None]])
        sol = solve_spd(gram + np.diag(reg), aug.T @ target + reg[:, None] * prior)
        name = idx.unique_name(f"{node.name or node.output[0]}_weight")
        value = rows_to_weight(node, sol[:k].T[None], w_p.shape, idx.opset).astype(w_p.dtype)
        out.graph.initializer.append(numpy_helper.from_array(value, name))
        old, node.input[1] = node.input[1], name
        if not any(old in n.input for n in out.graph.node):
            del out.graph.initializer[next(i for i, t in enumerate(out.graph.initializer) if t.name == old)]
        set_layer_bias(idx, node, sol[k].astype(w_p.dtype), w_p.dtype)
        fitted.append({"layer": cut.key})
    return out, fitted


def _both(monkeypatch: pytest.MonkeyPatch, run: Any) -> tuple[ModelProto, ModelProto]:
    fast = run()
    monkeypatch.setattr(width_module, "refit_readers", _reference_refit)
    monkeypatch.setattr(slicegpt_module, "refit_readers", _reference_refit)
    return fast, run()


def _assert_same(fast: ModelProto, reference: ModelProto, feed: dict[str, np.ndarray]) -> None:
    onnx.checker.check_model(fast, full_check=True)
    a = list(run_session(create_session(fast), feed).values())
    b = list(run_session(create_session(reference), feed).values())
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-5 * float(np.abs(y).max()))
    assert {t.name for t in fast.graph.initializer} == {t.name for t in reference.graph.initializer}


@pytest.mark.parametrize("norm,gated", [("layer", False), ("rms", True)])
def test_one_session_refit_equals_sequential_refit_on_prenorm_stacks(monkeypatch: pytest.MonkeyPatch, norm: str,
                                                                      gated: bool) -> None:
    """LayerNorm: rotation + slicing (MatMul readers without bias, a Gemm head); RMSNorm written out with
    gate and up reading one norm output: plain width pruning (MatMul readers with bias Adds; asked for by a
    criterion, as such a stream rotates too)."""
    model = builders.prenorm_stack(norm=norm, gated=gated)
    r = np.random.default_rng(1)
    calib = [{"x": r.standard_normal((16, 5, 4)).astype(np.float32)} for _ in range(2)]
    results: list[dict[str, Any]] = []

    def run() -> ModelProto:
        pruned, _, report = prune_stream_width(model, ratio=0.25, calib=calib,
                                               importance="l2" if norm == "rms" else None)
        results.append(report)
        return pruned

    fast, reference = _both(monkeypatch, run)
    assert results[0]["method"] == ("rotate" if norm == "layer" else "plain")
    assert [f["layer"] for f in results[0]["refit"]] == [f["layer"] for f in results[1]["refit"]]
    assert len(results[0]["refit"]) >= 3
    _assert_same(fast, reference, {"x": r.standard_normal((32, 5, 4)).astype(np.float32)})


def test_one_session_refit_equals_sequential_refit_on_digits_transformer(monkeypatch: pytest.MonkeyPatch) -> None:
    model = onnx.load(str(MODELS / "digits_transformer.onnx"))
    calib = str(MODELS / "digits_transformer_calib.npz")
    fast, reference = _both(monkeypatch, lambda: prune_stream_width(model, ratio=0.5, calib=calib)[0])
    test = np.load(MODELS / "digits_transformer_test.npz")
    names = {i.name for i in model.graph.input}
    _assert_same(fast, reference, {k: test[k][:64] for k in test.files if k in names})


def test_collect_adds_outputs_in_place_and_restores_the_model_byte_for_byte() -> None:
    """The probe edits the model itself (no copy of its weights): outputs added, declared value_info of the
    fetched tensors set aside; afterwards the model must be exactly what it was."""
    model = onnx.shape_inference.infer_shapes(onnx.load(str(MODELS / "digits_transformer.onnx")))
    names = [vi.name for vi in model.graph.value_info]
    before = model.SerializeToString()
    values = collect(model, [names[5], names[1]], str(MODELS / "digits_transformer_calib.npz"), 16)
    assert model.SerializeToString() == before
    assert values[names[1]].shape[0] == 16
    with pytest.raises(ConfigError, match="not computed"):
        collect(model, ["no_such_tensor"], str(MODELS / "digits_transformer_calib.npz"), 16)
    assert model.SerializeToString() == before
