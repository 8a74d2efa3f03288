"""A full-size ResNet-50 (v1.5, 224×224, random weights) built with ``onnx.helper``: no torch needed.

Why: benchmarks and structured-pruning tests need a realistic, large CNN that anyone can regenerate in a
second without downloads. The layout follows torchvision's ``resnet50`` (stride on the 3×3 conv, a
1×1 conv + BN downsample on the first block of each stage), and the node and weight names follow
torchvision's state-dict names (``layer2.0.conv1`` / ``layer2.0.conv1.weight``), so results read like
the ones people know.

Every Conv's output width can be overridden by name (``widths={"layer1.0.conv1": 40, ...}``), which
builds the *natively narrow twin* of a pruned model: same layout, same widths, fresh random weights,
and no trace of pruning. Timing the two side by side shows whether a pruned graph runs as fast as a
network trained at that size would. This module imports only numpy and onnx.

Example:
    >>> from tools.resnet50 import resnet50, conv_widths
    >>> model = resnet50(seed=0)
    >>> twin = resnet50(seed=1, widths=conv_widths(model))
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))  # (planes, blocks, stride) of layer1..layer4
EXPANSION = 4
OPSET = 17


class _Builder:
    def __init__(self, seed: int, widths: Mapping[str, int]) -> None:
        self.rng = np.random.default_rng(seed)
        self.widths = dict(widths)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.used: set[str] = set()

    def width(self, name: str, default: int) -> int:
        self.used.add(name)
        return int(self.widths.get(name, default))

    def add_init(self, name: str, array: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array, dtype=np.float32), name))
        return name

    def conv_bn(self, name: str, bn: str, x: str, c_in: int, c_out: int, k: int, stride: int,
                *, relu: bool, gamma: tuple[float, float] = (0.5, 1.0)) -> str:
        """Conv (no bias, He-normal weights) → BatchNormalization → optional Relu."""
        pad = k // 2
        fan_in = c_in * k * k
        w = self.rng.standard_normal((c_out, c_in, k, k), dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_in))
        self.add_init(f"{name}.weight", w)
        self.nodes.append(helper.make_node("Conv", [x, f"{name}.weight"], [f"{name}_out"], name=name,
                                           kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4))
        self.add_init(f"{bn}.weight", self.rng.uniform(*gamma, c_out))
        self.add_init(f"{bn}.bias", self.rng.normal(0.0, 0.1, c_out))
        self.add_init(f"{bn}.running_mean", self.rng.normal(0.0, 0.1, c_out))
        self.add_init(f"{bn}.running_var", self.rng.uniform(0.5, 1.5, c_out))
        self.nodes.append(helper.make_node(
            "BatchNormalization",
            [f"{name}_out", f"{bn}.weight", f"{bn}.bias", f"{bn}.running_mean", f"{bn}.running_var"],
            [f"{bn}_out"], name=bn, epsilon=1e-5))
        if not relu:
            return f"{bn}_out"
        self.nodes.append(helper.make_node("Relu", [f"{bn}_out"], [f"{bn}_relu"], name=f"{bn}.relu"))
        return f"{bn}_relu"


def resnet50(*, seed: int = 0, widths: Mapping[str, int] | None = None, batch: int | str = "N",
             num_classes: int = 1000, image_size: int = 224) -> onnx.ModelProto:
    """Build ResNet-50 with seeded random weights.

    Args:
        seed: weight seed; the same seed and widths give the same model byte for byte.
        widths: output channels by Conv name (``conv1``, ``layerS.B.conv1..3``, ``layerS.0.downsample.0``);
            unnamed convs keep the standard width. Residual adds need ``conv3`` and the downsample/identity
            widths of a stage to agree; widths read from a valid model (``conv_widths``) always do.
        batch: the batch dim (a name for a dynamic batch, or a number).
        num_classes: width of the final Gemm.
        image_size: height and width of the input.

    Returns:
        A checked ``ModelProto`` with input ``input`` [batch, 3, H, W] and output ``logits`` [batch, classes].

    Raises:
        ValueError: a name in ``widths`` that is not a Conv of ResNet-50 (a typo would silently do nothing).
    """
    b = _Builder(seed, widths or {})
    c = b.width("conv1", 64)
    x = b.conv_bn("conv1", "bn1", "input", 3, c, 7, 2, relu=True)
    b.nodes.append(helper.make_node("MaxPool", [x], ["maxpool_out"], name="maxpool", kernel_shape=[3, 3],
                                    strides=[2, 2], pads=[1, 1, 1, 1]))
    x, c_in = "maxpool_out", c
    for s, (planes, blocks, stride) in enumerate(STAGES, start=1):
        for i in range(blocks):
            p = f"layer{s}.{i}"
            st = stride if i == 0 else 1
            w1 = b.width(f"{p}.conv1", planes)
            w2 = b.width(f"{p}.conv2", planes)
            if i == 0:
                c_out = b.width(f"{p}.conv3", planes * EXPANSION)
                b.width(f"{p}.downsample.0", c_out)
                shortcut = b.conv_bn(f"{p}.downsample.0", f"{p}.downsample.1", x, c_in, c_out, 1, st, relu=False)
            else:
                c_out = b.width(f"{p}.conv3", c_in)
                shortcut = x
            h = b.conv_bn(f"{p}.conv1", f"{p}.bn1", x, c_in, w1, 1, 1, relu=True)
            h = b.conv_bn(f"{p}.conv2", f"{p}.bn2", h, w1, w2, 3, st, relu=True)
            # A small last-BN scale keeps 16 random residual blocks from blowing activations up.
            h = b.conv_bn(f"{p}.conv3", f"{p}.bn3", h, w2, c_out, 1, 1, relu=False, gamma=(0.05, 0.3))
            b.nodes.append(helper.make_node("Add", [h, shortcut], [f"{p}_add"], name=f"{p}.add"))
            b.nodes.append(helper.make_node("Relu", [f"{p}_add"], [f"{p}_out"], name=f"{p}.relu"))
            x, c_in = f"{p}_out", c_out
    unknown = sorted(set(b.widths) - b.used)
    if unknown:
        raise ValueError(f"widths names no Conv of ResNet-50: {unknown}")
    b.nodes.append(helper.make_node("GlobalAveragePool", [x], ["pool_out"], name="avgpool"))
    b.nodes.append(helper.make_node("Flatten", ["pool_out"], ["flat"], name="flatten", axis=1))
    fc_w = b.rng.standard_normal((num_classes, c_in), dtype=np.float32) * np.float32(np.sqrt(1.0 / c_in))
    b.add_init("fc.weight", fc_w)
    b.add_init("fc.bias", np.zeros(num_classes, np.float32))
    b.nodes.append(helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1))
    graph = helper.make_graph(
        b.nodes, "resnet50",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, image_size, image_size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, num_classes])],
        b.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="onnxprune-tools-resnet50")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def conv_widths(model: onnx.ModelProto) -> dict[str, int]:
    """Output channels of every Conv, by node name (read from the weight's first dim)."""
    dims = {t.name: list(t.dims) for t in model.graph.initializer}
    out: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type == "Conv" and node.input[1] in dims:
            out[node.name] = int(dims[node.input[1]][0])
    return out


def standard_widths() -> dict[str, int]:
    """The Conv widths of the standard ResNet-50 (what ``resnet50()`` builds)."""
    return conv_widths(resnet50(seed=0, num_classes=2, image_size=32))
