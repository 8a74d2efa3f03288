"""``onnxprune eval MODEL --data test.npz``: top-1/top-5 accuracy of a classifier, run in onnxruntime."""

from __future__ import annotations

import argparse
import json


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "eval", help="classification accuracy (top-1, top-5) on labelled .npz data",
        description="Score a classifier on an .npz file holding one array per model input (keyed by the "
                    "input's name, samples on axis 0) and an integer label array.",
    )
    p.add_argument("model", help="the .onnx classifier")
    p.add_argument("--data", required=True, metavar="NPZ", help="labelled data, e.g. models/digits_cnn_test.npz")
    p.add_argument("--labels", default="labels", metavar="KEY", help="key of the label array (default: labels)")
    p.add_argument("--output", default=None, metavar="NAME",
                   help="output holding class scores (default: the first float [N, classes] output)")
    p.add_argument("--batch", type=int, default=256, metavar="B", help="samples per run (default 256)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    return p


def run(args: argparse.Namespace) -> int:
    from onnxprune.runtime.evaluate import evaluate_accuracy

    result = evaluate_accuracy(args.model, args.data, labels=args.labels, output=args.output,
                               batch_size=args.batch)
    if args.json:
        print(json.dumps({"model": args.model, "data": args.data, **result.as_dict()}, indent=2))
        return 0
    if args.quiet:
        return 0
    top5 = f"   top-5 {result.top5:.2%}" if result.top5 is not None else ""
    print(f"{args.model}: top-1 {result.top1:.2%}{top5}   ({result.n} samples, {result.num_classes} classes, "
          f"output '{result.output}')")
    return 0
