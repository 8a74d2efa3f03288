"""What ``analyze`` shows of attention blocks (heads, head_dim, KV heads, why blocked) and residual branches
(where they start and join, what they hold, removable or why not), in text and in JSON."""

from __future__ import annotations

import json
from pathlib import Path

import builders
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from oracle_check import assert_close, run_ort, seeded_feeds

from onnxprune.cli.main import main
from onnxprune.core.io import load_model
from onnxprune.structured.analysis import analyze
from onnxprune.structured.blocks import attention_blocks
from onnxprune.structured.depth import depth_reference, remove_branches, residual_joins

MODELS = Path(__file__).resolve().parents[2] / "models"


def _blocks(model: onnx.ModelProto) -> list[dict]:
    return attention_blocks(model, analyze(model))


def test_heads_head_dim_and_kv_heads_of_multi_head_and_grouped_query_attention() -> None:
    (mha,) = _blocks(builders.attention_block(heads=4, d=16))
    assert (mha["heads"], mha["kv_heads"], mha["head_dim"], mha["unit"], mha["prunable"]) == (4, 4, 4, "heads", True)
    (gqa,) = _blocks(builders.attention_block(heads=4, kv_heads=2, d=16))
    assert (gqa["heads"], gqa["kv_heads"], gqa["head_dim"], gqa["unit"]) == (4, 2, 4, "kv groups")
    (packed,) = _blocks(builders.attention_block(heads=4, d=16, fused="split"))
    assert (packed["heads"], packed["head_dim"]) == (4, 4)
    real = _blocks(load_model(MODELS / "digits_transformer.onnx"))
    assert [(b["output_projection"], b["heads"], b["head_dim"], b["prunable"]) for b in real] == [
        ("/encoder/layers.0/self_attn/Gemm", 4, 16, True), ("/encoder/layers.1/self_attn/Gemm", 4, 16, True)]


def test_attention_whose_heads_are_not_found_is_listed_with_the_reason() -> None:
    (block,) = _blocks(builders.attention_block(heads=2, runtime_target=True, shape_op="Max"))
    assert block["heads"] is None and not block["prunable"]
    assert block["why"].startswith("heads not found: ") and "computed at runtime by 'Max" in block["why"]


def _branch_reading(extra: bool) -> onnx.ModelProto:
    """``e = in W0``, ``x = Relu(e)``, ``y = x + (x * m) W`` with ``m`` the earlier activation ``e`` (extra: a
    skip from further back, no block) or a constant."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 4)).astype(np.float32), n) for n in ("w0", "w")]
    if not extra:
        inits.append(numpy_helper.from_array(np.ones(4, np.float32), "c"))
    nodes = [helper.make_node("MatMul", ["in", "w0"], ["e"], name="embed"),
             helper.make_node("Relu", ["e"], ["x"], name="act"),
             helper.make_node("Mul", ["x", "e" if extra else "c"], ["xm"], name="gate"),
             helper.make_node("MatMul", ["xm", "w"], ["f"], name="proj"),
             helper.make_node("Add", ["x", "f"], ["y"], name="join")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("in", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("extra", [False, True])
def test_residual_joins_say_where_what_and_why_not(extra: bool) -> None:
    model = _branch_reading(extra)
    (join,) = residual_joins(model)
    assert (join.add, join.start, join.kind, join.nodes) == ("join", "act", "mlp", 2)
    if extra:
        assert join.branch is None
        assert join.why == "the branch also reads 'e', an earlier activation of the stream's path"
        return
    assert join.branch is not None and join.why == ""
    feeds = seeded_feeds(model)
    assert_close(run_ort(remove_branches(model, [join.branch]), feeds),
                 run_ort(depth_reference(model, [join.branch]), feeds), 1e-6)


def test_a_gelu_polynomial_is_no_residual_block() -> None:
    """``x + 0.044715 x³`` inside a tanh GELU joins its input again, but holds no layer."""
    model = builders.transformer_ffn(erf_gelu=False)
    assert [j.kind for j in residual_joins(model)] == ["mlp"]


def test_analyze_prints_one_line_per_block_and_the_json_holds_them(capsys: pytest.CaptureFixture[str]) -> None:
    path = str(MODELS / "digits_transformer.onnx")
    assert main(["analyze", path]) == 0
    lines = capsys.readouterr().out.splitlines()
    at = lines.index("attention blocks: 2 (2 prunable by whole heads)")
    assert lines[at + 1].split() == ["/encoder/layers.0/self_attn/Gemm", "4", "heads", "x", "16", "prunable",
                                     "(group", "1)"]
    res = next(k for k, line in enumerate(lines) if line.startswith("residual blocks: 4 removable"))
    assert lines[res + 1].split()[:6] == ["/encoder/layers.0/Add", "attention", "149", "nodes", "from", "/Add"]
    assert len(lines) == res + 5  # one line per block
    assert main(["analyze", path, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [(b["heads"], b["kv_heads"], b["head_dim"]) for b in doc["attention_blocks"]] == [(4, 4, 16)] * 2
    assert [(b["add"], b["kind"], b["removable"]) for b in doc["residual_blocks"]] == [
        ("/encoder/layers.0/Add", "attention", True), ("/encoder/layers.0/Add_1", "mlp", True),
        ("/encoder/layers.1/Add", "attention", True), ("/encoder/layers.1/Add_1", "mlp", True)]
