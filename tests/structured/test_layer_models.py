"""One-layer models of a group at a width: the right axes change, the others stay, and onnxruntime runs them."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from builders import conv_relu_conv, depthwise

from onnxprune.core.shapefold import infer_shapes
from onnxprune.structured.analysis import analyze
from onnxprune.structured.layer_models import layer_models


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
