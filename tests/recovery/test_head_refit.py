"""After heads are removed, lstsq re-fits the output projection over the kept heads' outputs.

The reference is computed here with ``numpy.linalg.lstsq`` on the calibration activations themselves (not on
the Gram matrices recovery uses): ``min ‖[X_k 1] [W; b] − Y‖² + λ‖W − W_k‖²`` with ``Y`` the original
projection's output, ``λ = ridge × mean diag(X_kᵀX_k)``, the bias not regularized.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import numpy_helper
from oracle_check import assert_equivalent, run_ort

from onnxprune.core.io import load_model
from onnxprune.recovery.calibrate import with_outputs
from onnxprune.recovery.recover import recover_structured
from onnxprune.recovery.solvers import DEFAULT_RIDGE
from onnxprune.runtime.feeds import load_npz_feeds
from onnxprune.structured.analysis import analyze
from onnxprune.structured.attention import attention_heads
from onnxprune.structured.oracle import zeroed_reference
from onnxprune.structured.plan import PrunePlan
from onnxprune.structured.surgery import apply_plan

MODELS = Path(__file__).resolve().parents[2] / "models"
CALIB = MODELS / "digits_transformer_calib.npz"


def _outputs(model, names: list[str], feeds: dict) -> list[np.ndarray]:
    return [np.asarray(a, dtype=np.float64) for a in run_ort(with_outputs(model, names), feeds)[-len(names):]]


@pytest.mark.parametrize("ridge", [DEFAULT_RIDGE, 1.0])  # 1.0: a ridge big enough to show a regularized bias
def test_lstsq_refits_the_output_projection_over_the_kept_heads(ridge: float) -> None:
    model = load_model(MODELS / "digits_transformer.onnx")
    dg = analyze(model)
    group = next(g for g in dg.prunable_groups if attention_heads(g))
    (sink,) = [c for c in group.sinks if c.op_type in ("Gemm", "MatMul")]
    keep = np.array([1, 3], dtype=np.int64)  # two heads of four go
    plan = PrunePlan(fingerprint=dg.fingerprint, keep={group.id: keep}, sizes={group.id: group.size})
    pruned = apply_plan(model, plan)
    assert_equivalent(model, pruned, zeroed_reference(model, dg, plan), evaluator=False)
    refit = recover_structured(model, pruned, dg, plan, CALIB, method="lstsq", ridge=ridge)

    node = next(n for n in model.graph.node if (n.name or n.output[0]) == sink.node)
    assert node.op_type == "Gemm" and sink.axis == 1  # out_proj: y = x Wᵀ + b
    x_name, y_name = node.input[0], node.output[0]
    feeds = load_npz_feeds(CALIB, model)
    x, y = _outputs(model, [x_name, y_name], feeds)
    cols = sink.positions(keep)
    xk = x[:, cols]
    w = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == sink.tensor)).astype(np.float64)
    lam = ridge * float(np.mean(np.diag(xk.T @ xk)))
    a = np.vstack([np.hstack([xk, np.ones((len(xk), 1))]),
                   np.hstack([np.sqrt(lam) * np.eye(len(cols)), np.zeros((len(cols), 1))])])
    rhs = np.vstack([y, np.sqrt(lam) * w[:, cols].T])
    sol = np.linalg.lstsq(a, rhs, rcond=None)[0]
    want = xk @ sol[:-1] + sol[-1]

    (plain,) = _outputs(pruned, [y_name], feeds)
    (got,) = _outputs(refit, [y_name], feeds)
    err_plain, err_refit, err_ref = (float(np.sum((v - y) ** 2)) for v in (plain, got, want))
    assert err_refit < 0.8 * err_plain, (err_refit, err_plain)
    assert abs(err_refit - err_ref) <= 1e-3 * err_ref + 1e-6, (err_refit, err_ref)
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3 * float(np.max(np.abs(y))))
