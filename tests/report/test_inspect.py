"""``analyze`` summaries of models whose interface is only partly declared."""

from __future__ import annotations

import builders
import numpy as np
from onnx import TensorProto, helper

from onnxprune.report.inspect import analyze_summary


def test_input_without_a_tensor_shape_is_listed_as_dynamic() -> None:
    seq = helper.make_tensor_sequence_value_info("s", TensorProto.FLOAT, None)  # a sequence has no shape
    nodes = [helper.make_node("SequenceAt", ["s", "i"], ["x"], name="pick"),
             helper.make_node("Relu", ["x"], ["out"], name="act")]
    graph = helper.make_graph(nodes, "seq", [seq], [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n"])],
                              [builders.init("i", np.array(0, np.int64))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", builders.OPSET)])
    summary = analyze_summary(model)
    assert summary["dynamic_inputs"] == {"s": None}
    assert summary["params"] == 0
