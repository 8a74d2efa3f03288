"""``onnxprune eval MODEL --eval-data test.npz``: top-1/top-5 accuracy of a classifier, run in onnxruntime."""

from __future__ import annotations

import argparse
import json

from onnxprune.cli.flags import add_old_spelling


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "eval", help="classification accuracy (top-1, top-5) on labelled .npz data",
        description="Score a classifier on an .npz file holding one array per model input (keyed by the "
                    "input's name, samples on axis 0) and an integer label array.",
    )
    p.add_argument("model", help="the .onnx classifier")
    p.add_argument("--eval-data", metavar="NPZ",
                   help="labelled data (required), e.g. models/digits_cnn_test.npz; the name prune and "
                        "sensitivity use too")
    add_old_spelling(p, "--data", new="--eval-data", dest="eval_data")
    p.add_argument("--labels", default="labels", metavar="KEY", help="key of the label array (default: labels)")
    p.add_argument("--output-name", default=None, metavar="NAME",
                   help="output holding class scores (default: the first float [N, classes] output)")
    add_old_spelling(p, "--output", new="--output-name", dest="output_name")
    p.add_argument("--batch-size", type=int, default=256, metavar="N", help="samples per run (default 256)")
    add_old_spelling(p, "--batch", new="--batch-size", dest="batch_size", type=int)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    return p


def run(args: argparse.Namespace) -> int:
    from onnxprune.core.errors import ConfigError
    from onnxprune.runtime.evaluate import evaluate_accuracy

    if args.eval_data is None:
        raise ConfigError("eval needs labelled data: --eval-data test.npz (inputs keyed by input name, plus labels)")
    result = evaluate_accuracy(args.model, args.eval_data, labels=args.labels, output=args.output_name,
                               batch_size=args.batch_size)
    if args.json:
        print(json.dumps({"model": args.model, "data": args.eval_data, **result.as_dict()}, indent=2))
        return 0
    if args.quiet:
        return 0
    top5 = f"   top-5 {result.top5:.2%}" if result.top5 is not None else ""
    print(f"{args.model}: top-1 {result.top1:.2%}{top5}   ({result.n} samples, {result.num_classes} classes, "
          f"output '{result.output}')")
    return 0
