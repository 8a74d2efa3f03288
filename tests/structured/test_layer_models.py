"""One-layer models of a group at a width: the right axes change, the others stay, and onnxruntime runs them."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from builders import GraphBuilder, conv_relu_conv, depthwise, vinfo
from onnx import helper

from onnxprune.core.shapefold import infer_shapes
from onnxprune.structured.analysis import analyze
from onnxprune.structured.layer_models import layer_axes, layer_models, timed_layers


def _run(model):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {i.name: np.zeros(i.shape, np.float32) for i in sess.get_inputs()}
    return sess.run(None, feeds)


def _weights(layer):
    return {t.name: list(t.dims) for t in layer.model.graph.initializer}


def test_conv_group_cuts_producer_output_and_consumer_input_axes():
    model = conv_relu_conv(c_in=4, c_mid=16, c_out=5, hw=9, batch=2)
    dg = analyze(model)
    g = next(g for g in dg.groups if g.size == 16 and g.prunable)
    layers = {(lm.node, lm.width): lm for lm in layer_models(model, dg, g, [16, 8], infer_shapes(model))}
    assert set(layers) == {("conv1", 16), ("conv1", 8), ("conv2", 16), ("conv2", 8)}
    assert _weights(layers["conv1", 8]) == {"w1": [8, 4, 3, 3], "b1": [8]}  # producer: output axis only
    assert _weights(layers["conv2", 8]) == {"w2": [5, 8, 1, 1], "b2": [5]}  # consumer: input axis only
    data = layers["conv2", 8].model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in data] == [2, 8, 9, 9]  # batch and spatial dims from the model, channels cut
    assert _run(layers["conv1", 8].model)[0].shape == (2, 8, 9, 9)
    assert _run(layers["conv2", 8].model)[0].shape == (2, 5, 9, 9)
    # same shapes, same signature; another width, another one
    assert layers["conv1", 8].signature != layers["conv1", 16].signature


def test_depthwise_conv_group_attribute_follows_the_width():
    model = depthwise(c=8)
    dg = analyze(model)
    shapes = infer_shapes(model)
    g = next(g for g in dg.groups if g.prunable and any("Conv" == c.op_type and c.role == "sink" for c in g.cuts)
             and g.size == 8)
    for lm in layer_models(model, dg, g, [5], shapes):
        node = lm.model.graph.node[0]
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if group > 1:
            assert group == 5
        _run(lm.model)  # every rebuilt layer runs


def _concat_then_conv(hw: int = 5):
    """Two convs (6 and 4 channels) concatenated and read by one conv: two groups slice its input axis."""
    g = GraphBuilder(0)
    a = g.op("Relu", [g.conv("x", 3, 6)])
    b = g.op("Relu", [g.conv("x", 3, 4)])
    cat = g.op("Concat", [a, b], axis=1)
    g.nodes.append(helper.make_node("Conv", [cat, g.weight((5, 10, 1, 1))], ["out"], name="reader"))
    return g.build([vinfo("x", [1, 3, hw, hw])], [vinfo("out", [1, 5, hw, hw])])


def test_groups_that_slice_one_concatenation_share_the_readers_input_axis():
    model = _concat_then_conv()
    dg = analyze(model)
    six, four = (next(g for g in dg.groups if g.size == n and g.prunable) for n in (6, 4))
    axes6, axes4 = layer_axes(dg, six), layer_axes(dg, four)
    assert "reader" in timed_layers(six) and "reader" in timed_layers(four)
    # one key for the reader's input axis, each group's share of its 10 channels
    assert axes6["reader"][0] == axes4["reader"][0]
    assert axes6["reader"][1] == 0.6 and axes4["reader"][1] == 0.4
    # each producer's output axis is its own, all of it, and another axis than the reader's input
    producer6 = next(n for n in timed_layers(six) if n != "reader")
    assert axes6[producer6][1] == 1.0 and axes6[producer6][0] != axes6["reader"][0]
