"""The zeroed reference, in memory and streamed to a file, on models whose weights are Constant nodes."""

from __future__ import annotations

import builders
import numpy as np
from onnx import helper, numpy_helper
from oracle_check import run_ort, seeded_feeds

import onnxprune as op
import onnxprune.runtime.session as session
from onnxprune.core.io import EXTERNAL_MIN_BYTES, load_model
from onnxprune.structured.analysis import analyze
from onnxprune.structured.oracle import write_zeroed_reference, zeroed_reference
from onnxprune.structured.plan import make_plan


def constant_node_mlp(seed: int = 0, d_in: int = 32, hidden: int = 64, d_out: int = 8):
    """x → MatMul(Constant W1) → Add(Constant b1) → Relu → MatMul(Constant W2) → out; W1, W2 above the size
    from which saving moves a Constant's value to external data."""
    r = np.random.default_rng(seed)
    w1 = r.standard_normal((d_in, hidden)).astype(np.float32)
    w2 = r.standard_normal((hidden, d_out)).astype(np.float32)
    assert min(w1.nbytes, w2.nbytes) > EXTERNAL_MIN_BYTES
    nodes = [
        helper.make_node("Constant", [], ["cw1"], name="const_w1", value=numpy_helper.from_array(w1)),
        helper.make_node("Constant", [], ["cb1"], name="const_b1",
                         value=numpy_helper.from_array(r.standard_normal(hidden).astype(np.float32))),
        helper.make_node("MatMul", ["x", "cw1"], ["m"], name="fc1"),
        helper.make_node("Add", ["m", "cb1"], ["a"], name="fc1_bias"),
        helper.make_node("Relu", ["a"], ["h"], name="relu"),
        helper.make_node("Constant", [], ["cw2"], name="const_w2", value=numpy_helper.from_array(w2)),
        helper.make_node("MatMul", ["h", "cw2"], ["out"], name="fc2"),
    ]
    return builders.make_model(nodes, [builders.vinfo("x", ["N", d_in])], [builders.vinfo("out", ["N", d_out])])


def test_streamed_reference_with_constant_nodes_loads_checks_and_equals_the_in_memory_one(tmp_path) -> None:
    model = constant_node_mlp()
    dg = analyze(model)
    plan = make_plan(model, dg, ratio=0.5)
    path = write_zeroed_reference(model, dg, plan, tmp_path / "ref.onnx")
    # What validation does with a file reference: load the graph only (weights stay on disk), with the checker.
    load_model(path, weights=False)
    feeds = seeded_feeds(model)
    import onnxruntime as ort

    streamed = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)
    in_memory = run_ort(zeroed_reference(model, dg, plan), feeds)
    np.testing.assert_array_equal(streamed[0], in_memory[0])
    assert not np.array_equal(in_memory[0], run_ort(model, feeds)[0])  # the sinks really were zeroed


def test_prune_with_streamed_reference_on_constant_nodes(monkeypatch) -> None:
    """A model above the streaming threshold (lowered here) whose weights are Constant nodes prunes and is
    proven exact (it failed with 'Data of TensorProto ( tensor name: ) should be stored in
    zeroed_reference.onnx.data, but it is not regular file')."""
    monkeypatch.setattr(session, "SESSION_FILE_BYTES", 1000)
    model = constant_node_mlp()
    result = op.prune(model, op.PruneConfig(mode="structured", ratio=0.5))
    assert result.report["validation"]["exact"]["passed"]
