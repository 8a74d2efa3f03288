"""A quantized constant shared by several layers (QDQ transformers): every reader keeps its own channels.

The model is what a Hugging Face ViT becomes once quantized: the exporter stores the identical biases of
the patch embedding and of every q/k/v/o projection once (the projections read it through ``Identity``),
and onnxruntime's ``quantize_static`` (QDQ, per-channel int8) turns the patch embedding's bias into int32
behind a ``DequantizeLinear`` whose output the ``Identity`` aliases still read, through fake-quant Q/DQ
pairs. Before :mod:`onnxprune.structured.quant_sharing`, that one integer tensor tied the heads to the
residual stream: no head was prunable and the stream read as "heads channels" wide. Real sessions, oracle.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from oracle_check import assert_close, run_ort, seeded_feeds
from qdq_models import VIT_D as D
from qdq_models import VIT_HEADS as HEADS
from qdq_models import quantize_qdq
from qdq_models import shared_bias_vit as vit_block

from onnxprune.core.ir import GraphIndex
from onnxprune.core.quant import quantized_outputs
from onnxprune.core.stats import count_params
from onnxprune.structured.analysis import analyze
from onnxprune.structured.oracle import zeroed_reference
from onnxprune.structured.plan import PrunePlan
from onnxprune.structured.surgery import apply_plan


@pytest.fixture
def qdq(tmp_path: Path) -> onnx.ModelProto:
    return onnx.load(quantize_qdq(vit_block(), tmp_path))


def _shape(dg) -> list[tuple[int, bool]]:
    return sorted((g.size, g.prunable) for g in dg.groups)


def test_the_quantized_model_is_the_shared_bias_pattern(qdq: onnx.ModelProto) -> None:
    """Guards the premise: the Identity aliases read the DequantizeLinear of the embedding's int32 bias."""
    index = GraphIndex(qdq)
    aliased = {index.resolve_identity(n.output[0]) for n in qdq.graph.node if n.op_type == "Identity"}
    assert len(aliased) == 1
    (dq,) = (index.producer[a] for a in aliased)
    assert dq.op_type == "DequantizeLinear" and index.const_value(dq.input[0]).dtype == np.int32
    assert index.const_shape(dq.input[1]) == (D,)  # per-channel: input scale x weight scale of the Conv


def test_heads_stay_out_of_the_stream_as_in_the_float_model(qdq: onnx.ModelProto) -> None:
    dg_float, dg = analyze(vit_block()), analyze(qdq)
    assert _shape(dg) == _shape(dg_float), dg.summary()
    (heads,) = [g for g in dg.groups if g.prunable]
    assert heads.size == HEADS and len(heads.sources) == 3  # q, k and v: whole heads
    (stream,) = [g for g in dg.groups if g.size == D]  # the embedding, o_proj and both LayerNorms: D wide
    assert not stream.prunable and any("normalizes over axis 2" in b for b in stream.blockers), stream.blockers


@pytest.mark.parametrize("drop", [[0], [1, 3], [2]])
def test_head_cuts_on_the_qdq_block_are_exact_and_stay_quantized(qdq: onnx.ModelProto, drop: list[int]) -> None:
    before = qdq.SerializeToString()
    dg = analyze(qdq)
    (heads,) = [g for g in dg.groups if g.prunable]
    keep = np.setdiff1d(np.arange(HEADS), drop)
    plan = PrunePlan(fingerprint=dg.fingerprint, keep={heads.id: keep}, sizes={heads.id: HEADS})
    pruned = apply_plan(qdq, plan, dg=dg)
    onnx.checker.check_model(pruned, full_check=True)
    feeds = seeded_feeds(qdq, 0, {"B": 3})
    got, want = run_ort(pruned, feeds), run_ort(zeroed_reference(qdq, dg, plan), feeds)
    assert_close(got, want, 1e-5, "QDQ heads")
    assert count_params(qdq) - count_params(pruned) == dg.params_removed(plan.keep)
    assert qdq.SerializeToString() == before, "the input model was modified"
    # still quantized: no Q/DQ pair dropped, integer weights, per-channel scales cut with their channels
    ops = Counter(n.op_type for n in pruned.graph.node)
    ops_before = Counter(n.op_type for n in qdq.graph.node)
    assert ops["QuantizeLinear"] == ops_before["QuantizeLinear"]
    assert ops["DequantizeLinear"] == ops_before["DequantizeLinear"] + 1  # one bias version for q, k and v
    index = GraphIndex(pruned)
    kept = len(keep) * D // HEADS
    for cut in heads.sources:
        weight = index.initializers[cut.tensor]
        assert weight.data_type == onnx.TensorProto.INT8 and list(weight.dims) == [D, kept]
    dqs = [n for n in pruned.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in
           {c.tensor for c in heads.sources}]
    assert dqs and all(index.const_shape(n.input[1]) == (kept,) for n in dqs)
    # the embedding and o_proj keep the whole int32 bias; q, k and v share one int32 copy of the kept channels
    conv = next(n for n in pruned.graph.node if n.op_type == "Conv")
    shared = index.producer[index.resolve_identity(conv.input[2])]
    readers = [n for n in pruned.graph.node if n.op_type == "QuantizeLinear"
               and index.producer.get(index.resolve_identity(n.input[0]), conv).op_type == "DequantizeLinear"]
    widths = Counter(index.const_shape(index.producer[index.resolve_identity(n.input[0])].input[0])[0]
                     for n in readers)
    assert index.const_shape(shared.input[0]) == (D,) and widths == {kept: 3, D: 1}
    assert all(index.const_value(index.producer[index.resolve_identity(n.input[0])].input[0]).dtype == np.int32
               for n in readers)


def test_a_shared_quantized_weight_keeps_its_readers_tied(tmp_path: Path) -> None:
    """Negative case: v and o read one int8 weight. A weight is never split per reader (it is one layer
    applied twice), so v's heads stay tied to the stream o writes, blocked by its LayerNorms, as in the
    float model; the shared bias is still split, so nothing else joins them."""
    qdq = onnx.load(quantize_qdq(vit_block(shared="weight"), tmp_path))
    index = GraphIndex(qdq)
    weights = {dq.data for out, dq in quantized_outputs(index).items()
               if any(n.op_type == "MatMul" for n in index.consumers.get(out, []))}
    assert len(weights) == 3  # q, k, and the one int8 weight v and o read
    dg = analyze(qdq)
    assert _shape(dg) == _shape(analyze(vit_block(shared="weight"))), dg.summary()
    assert not dg.prunable_groups
    (stream,) = [g for g in dg.groups if any("normalizes over axis 2" in b for b in g.blockers)]
    assert {c.tensor for c in stream.sources} >= weights
