"""Vocabulary pruning: for ids all kept, the pruned logits are the original's at the kept ids (onnxruntime)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.core.errors import ConfigError, UnsupportedModelError
from onnxprune.runtime.session import create_session, run_session
from onnxprune.structured.vocab import KEPT_IDS_KEY, UNKNOWN_ID_KEY, prune_vocab

V, D = 50, 8


def _lm(head: str) -> onnx.ModelProto:
    """ids [B, T] → Gather(E) → MatMul + Relu → head over the vocabulary: ``untied`` (MatMul + bias Add),
    ``tied`` (MatMul by Transpose(E)) or ``gemm`` (flattened to [-1, D], Gemm with transB and C)."""
    r = np.random.default_rng(0)
    inits = [numpy_helper.from_array(r.standard_normal((V, D)).astype(np.float32), "E"),
             numpy_helper.from_array(r.standard_normal((D, D)).astype(np.float32), "W1")]
    nodes = [helper.make_node("Gather", ["E", "ids"], ["emb"], name="embed"),
             helper.make_node("MatMul", ["emb", "W1"], ["h0"], name="mm"),
             helper.make_node("Relu", ["h0"], ["h"], name="relu")]
    if head == "untied":
        inits += [numpy_helper.from_array(r.standard_normal((D, V)).astype(np.float32), "Wh"),
                  numpy_helper.from_array(r.standard_normal(V).astype(np.float32), "bh")]
        nodes += [helper.make_node("MatMul", ["h", "Wh"], ["z"], name="lm_head"),
                  helper.make_node("Add", ["z", "bh"], ["logits"], name="lm_bias")]
        out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", "T", V])
    elif head == "tied":
        nodes += [helper.make_node("Transpose", ["E"], ["Et"], name="tie", perm=[1, 0]),
                  helper.make_node("MatMul", ["h", "Et"], ["logits"], name="lm_head")]
        out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", "T", V])
    else:
        inits += [numpy_helper.from_array(r.standard_normal((V, D)).astype(np.float32), "Wg"),
                  numpy_helper.from_array(r.standard_normal(V).astype(np.float32), "bg"),
                  numpy_helper.from_array(np.array([-1, D], dtype=np.int64), "rows")]
        nodes += [helper.make_node("Reshape", ["h", "rows"], ["flat"], name="flatten"),
                  helper.make_node("Gemm", ["flat", "Wg", "bg"], ["logits"], name="lm_head", transB=1)]
        out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, V])
    graph = helper.make_graph(nodes, "lm", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["B", "T"])],
                              [out], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _logits(model: onnx.ModelProto, ids: np.ndarray) -> np.ndarray:
    return run_session(create_session(model), {"ids": ids})["logits"]


KEEP = np.array([3, 7, 8, 20, 41, 49])


@pytest.mark.parametrize("head", ["untied", "tied", "gemm"])
def test_kept_ids_give_the_original_logits_at_the_kept_ids(head: str) -> None:
    model = _lm(head)
    before = model.SerializeToString()
    result = prune_vocab(model, KEEP[::-1].tolist() + [7])  # any order, duplicates ignored
    assert model.SerializeToString() == before  # the input is not modified
    onnx.checker.check_model(result.model, full_check=True)
    ids = np.random.default_rng(1).choice(KEEP, size=(3, 5))
    ref = _logits(model, ids)
    got = _logits(result.model, ids)
    assert got.shape == ref.shape[:-1] + (KEEP.size,)
    np.testing.assert_array_equal(got, ref[..., KEEP])
    meta = {p.key: p.value for p in result.model.metadata_props}
    assert json.loads(meta[KEPT_IDS_KEY]) == KEEP.tolist() and meta[UNKNOWN_ID_KEY] == "3"
    dim = result.model.graph.output[0].type.tensor_type.shape.dim[-1]
    assert dim.dim_value == KEEP.size
    sizes = {t.name: tuple(t.dims) for t in result.model.graph.initializer}
    assert sizes["E"] == (KEEP.size, D)
    assert result.report["params_removed"] == (V - KEEP.size) * (D if head == "tied" else 2 * D + 1)


def test_a_tied_head_stays_tied() -> None:
    result = prune_vocab(_lm("tied"), KEEP)
    head = next(n for n in result.model.graph.node if n.name == "lm_head")
    tie = next(n for n in result.model.graph.node if n.output[0] == head.input[1])
    assert tie.op_type == "Transpose" and tie.input[0] == "E" and result.report["tied"] is True
    assert not any(tuple(t.dims) == (D, KEEP.size) for t in result.model.graph.initializer)


def test_ids_outside_the_kept_set_are_read_as_the_unknown_id() -> None:
    model = _lm("untied")
    result = prune_vocab(model, KEEP, unknown=20)
    ids = np.array([[3, 0, 41, 19, 49]])  # 0 and 19 are not kept
    as_unknown = np.where(np.isin(ids, KEEP), ids, 20)
    np.testing.assert_array_equal(_logits(result.model, ids), _logits(model, as_unknown)[..., KEEP])


@pytest.mark.parametrize("keep, unknown, match", [
    ([], None, "no token id to keep"),
    ([3, 50], None, r"token id 50 is outside the vocabulary \[0, 50\)"),
    ([3, 7], 8, "unknown token id 8 is not among the kept ids"),
])
def test_bad_ids_are_refused_with_the_fix(keep: list[int], unknown: int | None, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        prune_vocab(_lm("untied"), keep, unknown=unknown)


def test_a_table_with_another_reader_is_refused_with_it() -> None:
    model = _lm("untied")
    model.graph.node.append(helper.make_node("ReduceSum", ["E"], ["esum"], name="stats", keepdims=0))
    model.graph.output.append(helper.make_tensor_value_info("esum", TensorProto.FLOAT, None))
    with pytest.raises(UnsupportedModelError, match=r"table 'E' is also read by 'stats' \(ReduceSum\)"):
        prune_vocab(model, KEEP)


def test_a_model_without_an_embedding_is_refused() -> None:
    model = _lm("untied")
    model.graph.node[0].op_type = "Identity"  # no Gather of the table any more
    del model.graph.node[0].input[:]
    model.graph.node[0].input.extend(["ids"])
    with pytest.raises(UnsupportedModelError, match="no vocabulary to prune"):
        prune_vocab(model, KEEP)
