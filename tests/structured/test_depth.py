"""Depth: residual branches ``y = x + f(x)`` found from dataflow and removed (``y = x``).

The oracle: the pruned model equals the original with each removed branch's last projection (weight and
bias) and the zero-preserving tail after it zeroed, in onnxruntime, at several batch sizes; the removed
model passes the full checker and loses exactly the branch's parameters.
"""

from __future__ import annotations

from pathlib import Path

import builders
import numpy as np
import onnx
import pytest
from oracle_check import assert_close, run_ort, seeded_feeds

from onnxprune.core.errors import ConfigError
from onnxprune.core.io import load_model
from onnxprune.core.stats import count_params
from onnxprune.structured.depth import choose_branches, depth_reference, remove_branches, residual_branches

MODELS = Path(__file__).resolve().parents[2] / "models"


def _prove(model: onnx.ModelProto, branches) -> onnx.ModelProto:
    before = model.SerializeToString()
    pruned = remove_branches(model, branches)
    reference = depth_reference(model, branches)
    onnx.checker.check_model(pruned, full_check=True)
    assert [o.name for o in pruned.graph.output] == [o.name for o in model.graph.output]
    for batch in (1, 3):
        feeds = seeded_feeds(model, batch, dims={d: batch for d in ("B", "batch", "N")})
        assert_close(run_ort(pruned, feeds), run_ort(reference, feeds), 1e-5, f"batch {batch}")
    assert model.SerializeToString() == before, "the input model was modified"
    return pruned


def test_ffn_and_attention_branches_are_found_and_removed() -> None:
    for model in (builders.transformer_ffn(), builders.attention_block(heads=2, runtime_target=True)):
        (branch,) = residual_branches(model)
        assert branch.output == "out"
        pruned = _prove(model, [branch])
        assert [n.op_type for n in pruned.graph.node] == ["Identity"]  # the whole branch went


@pytest.mark.parametrize("name", ["digits_transformer", "tv_vit_b_16", "tv_resnet18", "tv_convnext_tiny"])
def test_every_branch_of_real_models_removes_exactly(name: str) -> None:
    model = load_model(MODELS / f"{name}.onnx")
    branches = residual_branches(model)
    expected = {"digits_transformer": 4, "tv_vit_b_16": 8, "tv_resnet18": 5, "tv_convnext_tiny": 18}[name]
    assert len(branches) == expected
    for count in (1, 2):
        chosen = choose_branches(branches, count)
        assert sorted(b.score for b in chosen) == sorted(b.score for b in branches)[:count]
        pruned = _prove(model, chosen)
        assert count_params(pruned) < count_params(model)


def test_a_stream_with_a_downsampling_shortcut_is_no_branch() -> None:
    """ResNet's downsampling blocks add a projected shortcut: neither side reads only the other."""
    model = load_model(MODELS / "tv_resnet18.onnx")
    found = {b.add for b in residual_branches(model)}
    assert not any("layer2.0" in a or "layer3.0" in a or "layer4.0" in a for a in found)


def test_a_branch_ending_in_a_nonlinearity_that_moves_zero_is_not_removable() -> None:
    model = builders.transformer_ffn(erf_gelu=False)
    ffn_out = [n for n in model.graph.node if n.name == "residual"][0].input[1]
    producer = [n for n in model.graph.node if ffn_out in n.output][0]
    producer.output[0] = "pre"
    model.graph.node.append(onnx.helper.make_node("Sigmoid", ["pre"], [ffn_out], name="squash"))
    assert residual_branches(model) == []


def test_too_many_blocks_is_refused() -> None:
    branches = residual_branches(builders.transformer_ffn())
    with pytest.raises(ConfigError, match="has 1 removable"):
        choose_branches(branches, 2)


def test_consecutive_blocks_removed_together_chain_the_stream() -> None:
    """y1 = x + f(x); y2 = y1 + g(y1): removing both leaves y2 = x."""
    g = builders.GraphBuilder(0)
    y = "x"
    for _ in range(3):
        h = g.op("Relu", [g.op("MatMul", [y, g.weight((8, 16))])])
        y = g.op("Add", [y, g.op("Add", [g.op("MatMul", [h, g.weight((16, 8))]), g.weight((8,), "b")])])
    g.nodes.append(onnx.helper.make_node("MatMul", [y, g.weight((8, 3))], ["out"], name="head"))
    model = g.build([builders.vinfo("x", ["B", 8])], [builders.vinfo("out", ["B", 3])])
    branches = residual_branches(model)
    assert len(branches) == 3
    pruned = _prove(model, branches)
    assert [n.op_type for n in pruned.graph.node] == ["MatMul"]
    np.testing.assert_array_equal(pruned.graph.node[0].input[0], "x")


def _masked_blocks(*, shared_bias: bool, skip_from_embedding: bool = False) -> onnx.ModelProto:
    """Two blocks ``y = x + f(x, mask)`` as exporters write attention: the branch also reads a mask computed
    from a graph input (and a ``Shape`` of the stream), and, with ``shared_bias``, every last projection
    reads one de-duplicated zero bias (what exporters write for zero-initialised biases)."""
    g = builders.GraphBuilder(0)
    bias = g.const(np.zeros(8, np.float32), "shared_bias") if shared_bias else None
    mask = g.op("Mul", [g.op("Sub", [g.const(np.float32(1.0)), "mask"]), g.const(np.float32(-1e4))])
    embedded = g.op("MatMul", ["x", g.weight((8, 8))])
    y = embedded
    for _ in range(2):
        width = g.op("Cast", [g.op("Shape", [y])], to=onnx.TensorProto.FLOAT)  # a shape read, metadata only
        scores = g.op("Add", [g.op("MatMul", [y, g.weight((8, 8))]), mask])
        h = g.op("Mul", [g.op("Softmax", [scores], axis=-1), g.op("ReduceMax", [width], keepdims=1)])
        if skip_from_embedding:
            h = g.op("Add", [h, embedded])  # reads a learned activation from before the stream
        proj = g.op("MatMul", [h, g.weight((8, 8))])
        y = g.op("Add", [y, g.op("Add", [proj, bias or g.weight((8,), "b")])])
    g.nodes.append(onnx.helper.make_node("MatMul", [y, g.weight((8, 3))], ["out"], name="head"))
    return g.build([builders.vinfo("x", ["B", 8]), builders.vinfo("mask", ["B", 8])],
                   [builders.vinfo("out", ["B", 3])])


@pytest.mark.parametrize("shared_bias", [False, True])
def test_a_branch_reading_a_mask_and_a_shared_bias_is_removed_exactly(shared_bias: bool) -> None:
    """Attention branches read the mask (a graph input) and shape reads; exporters share identical zero
    biases between layers. Both blocks are found, each removal passes the oracle, and zeroing one block's
    slot of the shared bias leaves the other block's bias alone."""
    model = _masked_blocks(shared_bias=shared_bias)
    branches = residual_branches(model)
    assert len(branches) == 2
    for chosen in ([branches[0]], [branches[1]], branches):
        _prove(model, chosen)
    if shared_bias:  # the oracle gives the zeroed reader a zero of its own; the shared one keeps its readers
        reference = depth_reference(model, [branches[0]])
        shared = [i.name for i in model.graph.initializer if i.name.startswith("shared_bias")]
        readers = [n for n in reference.graph.node if shared[0] in n.input]
        assert len(shared) == 1 and len(readers) == 1
        value = [i for i in reference.graph.initializer if i.name == shared[0]][0]
        assert value.dims == [8]  # still there, for the block that was not removed


def test_a_branch_reading_an_earlier_learned_activation_is_not_a_block() -> None:
    """A skip from further back (here the embedding output, read again by the second block) is not a residual
    block of the second block's stream; the first block, whose stream *is* the embedding output, still is."""
    branches = residual_branches(_masked_blocks(shared_bias=False, skip_from_embedding=True))
    assert len(branches) == 1
    assert branches[0].stream == "matmul_8"  # the embedding MatMul's output
