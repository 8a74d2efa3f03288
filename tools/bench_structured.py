"""Speed of structured pruning on a ResNet-50-sized graph (random weights, built with onnx.helper).

Measures analysis + planning + surgery + saving at full width (224x224, ~100 MB), then checks that a
graph 10x deeper (same width) costs at most ~10x as much, i.e. no quadratic walk. Run:

    .venv/bin/python tools/bench_structured.py [--width 64] [--depth-factor 10] [--ratio 0.3]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxprune.core.io import save_model
from onnxprune.core.stats import count_params
from onnxprune.structured.analysis import analyze
from onnxprune.structured.plan import make_plan
from onnxprune.structured.surgery import apply_plan


def resnet(width: int = 64, blocks: tuple[int, ...] = (3, 4, 6, 3), classes: int = 1000,
           seed: int = 0) -> onnx.ModelProto:
    """A ResNet-50-style bottleneck network (opset 17) with random float32 weights."""
    r = np.random.default_rng(seed)
    nodes, inits = [], []
    counter = [0]

    def name(base: str) -> str:
        counter[0] += 1
        return f"{base}{counter[0]}"

    def weight(shape: tuple[int, ...], kind: str) -> str:
        n = name(kind)
        if kind == "var":
            value = r.uniform(0.5, 1.5, shape)
        elif kind == "gamma":
            value = r.uniform(0.5, 1.5, shape)
        else:
            value = r.standard_normal(shape) * (0.05 if len(shape) > 1 else 0.1)
        inits.append(numpy_helper.from_array(value.astype(np.float32), n))
        return n

    def conv_bn(x: str, c_in: int, c_out: int, k: int, stride: int = 1, relu: bool = True) -> str:
        c = name("conv")
        nodes.append(helper.make_node("Conv", [x, weight((c_out, c_in, k, k), "w")], [c], name=c,
                                      kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4))
        b = name("bn")
        nodes.append(helper.make_node("BatchNormalization", [c, weight((c_out,), "gamma"), weight((c_out,), "beta"),
                                                             weight((c_out,), "mean"), weight((c_out,), "var")], [b],
                                      name=b))
        if not relu:
            return b
        y = name("relu")
        nodes.append(helper.make_node("Relu", [b], [y], name=y))
        return y

    x = conv_bn("input", 3, width, 7, 2)
    p = name("pool")
    nodes.append(helper.make_node("MaxPool", [x], [p], name=p, kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4))
    x, c_in = p, width
    for stage, n_blocks in enumerate(blocks):
        mid = width * 2**stage
        out = mid * 4
        for i in range(n_blocks):
            stride = 2 if i == 0 and stage > 0 else 1
            y = conv_bn(x, c_in, mid, 1)
            y = conv_bn(y, mid, mid, 3, stride)
            y = conv_bn(y, mid, out, 1, relu=False)
            short = conv_bn(x, c_in, out, 1, stride, relu=False) if i == 0 else x
            s = name("add")
            nodes.append(helper.make_node("Add", [y, short], [s], name=s))
            a = name("relu")
            nodes.append(helper.make_node("Relu", [s], [a], name=a))
            x, c_in = a, out
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap"))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], name="flatten", axis=1))
    nodes.append(helper.make_node("Gemm", ["flat", weight((classes, c_in), "fc_w"), weight((classes,), "fc_b")],
                                  ["logits"], name="fc", transB=1))
    x_info = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 224, 224])
    y_info = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])
    graph = helper.make_graph(nodes, "resnet", [x_info], [y_info], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def measure(model: onnx.ModelProto, ratio: float, folder: Path) -> dict[str, float]:
    t0 = time.perf_counter()
    dg = analyze(model)
    t1 = time.perf_counter()
    plan = make_plan(model, dg, ratio=ratio)
    t2 = time.perf_counter()
    pruned = apply_plan(model, plan, dg=dg)
    t3 = time.perf_counter()
    save_model(pruned, folder / "pruned.onnx")
    t4 = time.perf_counter()
    return {"analyze": t1 - t0, "plan": t2 - t1, "apply": t3 - t2, "save": t4 - t3, "total": t4 - t0,
            "params_before": count_params(model), "params_after": count_params(pruned),
            "groups": len(dg.groups), "prunable": len(dg.prunable_groups), "nodes": len(model.graph.node)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--depth-factor", type=int, default=10)
    ap.add_argument("--scale-width", type=int, default=16, help="width of the shallow/deep scaling pair")
    ap.add_argument("--ratio", type=float, default=0.3)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    print(f"date: {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"machine: {platform.machine()} {platform.processor() or ''} cpus={os.cpu_count()} "
          f"python={platform.python_version()} numpy={np.__version__} onnx={onnx.__version__}")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    with tempfile.TemporaryDirectory() as tmp:
        model = resnet(args.width)
        size_mb = model.ByteSize() / 1e6
        best = min((measure(model, args.ratio, Path(tmp)) for _ in range(args.repeat)), key=lambda m: m["total"])
        print(f"resnet50 width {args.width}: {best['nodes']} nodes, {size_mb:.0f} MB, {best['groups']} groups "
              f"({best['prunable']} prunable), params {best['params_before']:,} -> {best['params_after']:,} at ratio "
              f"{args.ratio}")
        print("  best of {}: analyze {analyze:.3f}s  plan {plan:.3f}s  apply {apply:.3f}s  save {save:.3f}s  "
              "total {total:.3f}s".format(args.repeat, **best))
        base = (3, 4, 6, 3)
        shallow = resnet(args.scale_width, base)
        deep = resnet(args.scale_width, tuple(b * args.depth_factor for b in base))
        s = min((measure(shallow, args.ratio, Path(tmp)) for _ in range(args.repeat)), key=lambda m: m["total"])
        d = min((measure(deep, args.ratio, Path(tmp)) for _ in range(args.repeat)), key=lambda m: m["total"])
        print(f"scaling at width {args.scale_width}: {s['nodes']} nodes {s['total']:.3f}s vs {d['nodes']} nodes "
              f"{d['total']:.3f}s -> ratio {d['total'] / s['total']:.1f}x for {d['nodes'] / s['nodes']:.1f}x nodes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
