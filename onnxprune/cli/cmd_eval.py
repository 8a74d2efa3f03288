"""``onnxprune eval MODEL --eval-data test.npz | --perplexity ids.npz``: accuracy or perplexity, in onnxruntime."""

from __future__ import annotations

import argparse
import json

from onnxprune.cli.flags import add_old_spelling


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "eval", help="classification accuracy (top-1, top-5) on labelled .npz data, or LM perplexity",
        description="Score a classifier on an .npz file holding one array per model input (keyed by the "
                    "input's name, samples on axis 0) and an integer label array; or, with --perplexity, a "
                    "causal language model's next-token perplexity on an .npz of token ids.",
    )
    p.add_argument("model", help="the .onnx classifier (or language model, with --perplexity)")
    p.add_argument("--eval-data", metavar="NPZ",
                   help="labelled data (required), e.g. models/digits_cnn_test.npz; the name prune and "
                        "sensitivity use too")
    add_old_spelling(p, "--data", new="--eval-data", dest="eval_data")
    p.add_argument("--perplexity", metavar="NPZ",
                   help="instead of accuracy: next-token perplexity on token ids (input_ids int [N, T], "
                        "optional attention_mask [N, T], 0 = padding)")
    p.add_argument("--ids-input", default=None, metavar="NAME",
                   help="with --perplexity: the input taking token ids (default input_ids, else the only "
                        "integer input)")
    p.add_argument("--labels", default="labels", metavar="KEY", help="key of the label array (default: labels)")
    p.add_argument("--output-name", default=None, metavar="NAME",
                   help="output holding class scores (default: the first float [N, classes] output) or, with "
                        "--perplexity, the logits (default: logits, else the first float rank-3 output)")
    add_old_spelling(p, "--output", new="--output-name", dest="output_name")
    p.add_argument("--batch-size", type=int, default=None, metavar="N",
                   help="samples per run (default 256; 16 sequences with --perplexity)")
    add_old_spelling(p, "--batch", new="--batch-size", dest="batch_size", type=int)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    return p


def run(args: argparse.Namespace) -> int:
    from onnxprune.core.errors import ConfigError
    from onnxprune.runtime.evaluate import evaluate_accuracy

    if args.perplexity is not None:
        return _run_perplexity(args)
    if args.ids_input is not None:
        raise ConfigError("--ids-input is read only with --perplexity ids.npz")
    if args.eval_data is None:
        raise ConfigError("eval needs labelled data: --eval-data test.npz (inputs keyed by input name, plus "
                          "labels), or token ids for a language model's --perplexity ids.npz")
    result = evaluate_accuracy(args.model, args.eval_data, labels=args.labels, output=args.output_name,
                               batch_size=256 if args.batch_size is None else args.batch_size)
    top5 = f"   top-5 {result.top5:.2%}" if result.top5 is not None else ""
    return _show(args, args.eval_data, result.as_dict(),
                 f"{args.model}: top-1 {result.top1:.2%}{top5}   ({result.n} samples, {result.num_classes} "
                 f"classes, output '{result.output}')")


def _show(args: argparse.Namespace, data: str, result: dict, line: str) -> int:
    """Print a result as ``--json`` asks (model, data and the result's fields), or one line unless ``-q``."""
    if args.json:
        print(json.dumps({"model": args.model, "data": data, **result}, indent=2))
    elif not args.quiet:
        print(line)
    return 0


def _run_perplexity(args: argparse.Namespace) -> int:
    """``eval --perplexity``: token-level next-token perplexity of a causal language model."""
    from onnxprune.core.errors import ConfigError
    from onnxprune.runtime.perplexity import evaluate_perplexity

    if args.eval_data is not None:
        raise ConfigError("--perplexity and --eval-data are two different measures; pass one of them")
    if args.labels != "labels":
        raise ConfigError("--labels is read only with --eval-data, not with --perplexity")
    result = evaluate_perplexity(args.model, args.perplexity, output=args.output_name, ids_input=args.ids_input,
                                 batch_size=16 if args.batch_size is None else args.batch_size)
    return _show(args, args.perplexity, result.as_dict(),
                 f"{args.model}: perplexity {result.perplexity:.4f}   (mean NLL {result.nll:.4f} nats/token, "
                 f"{result.tokens:,} tokens in {result.sequences} sequences, output '{result.output}')")
