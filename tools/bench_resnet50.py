"""Does structured pruning turn saved MACs into saved time? ResNet-50 on onnxruntime, measured.

Builds a full-size ResNet-50 (random weights, 224×224, ``tools/resnet50.py``), prunes it with
``onnxprune.structured.prune.prune_structured`` at each ``--ratios`` value, validates every pruned model
(checker, strict shape inference, onnxruntime drift from the original, report only since pruning changes
the function), and benchmarks everything in one process, alternating the models run by run:

* the original,
* each pruned model,
* each pruned model's *natively narrow twin*: the same generator with every Conv as wide as in the pruned
  model and fresh random weights. A pruned graph should run as fast as its twin (target: within 3%);
  if it does not, the pruned graph carries overhead (leftover ops, odd widths, lost fusions).

The table gives each model's speedup over the original, the ideal speedup (its MAC ratio) and their
quotient. When structured pruning is not available (an older checkout), the twins are built from widths
scaled by ``1 - ratio`` inside every bottleneck and only they are timed, which still shows the speedup
a pruned model could reach.

Usage:
  .venv/bin/python tools/bench_resnet50.py [--ratios 0.3,0.5] [--batches 1,8,32] [--runs 20] [--warmup 2]
                                          [--threads N] [--round-to K] [--json results.json]

On a shared machine, ``--threads 1`` gives far steadier figures than onnxruntime's one thread per core.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from onnxprune.core.io import save_model  # noqa: E402
from onnxprune.core.stats import model_stats  # noqa: E402
from onnxprune.runtime.bench import benchmark, paired_ratio  # noqa: E402
from onnxprune.runtime.validate import validate_models  # noqa: E402
from tools.resnet50 import conv_widths, resnet50  # noqa: E402

TWIN_TARGET = 0.03


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def scaled_widths(model, ratio: float) -> dict[str, int]:
    """Bottleneck inner widths (conv1/conv2 of every block) scaled by ``1 - ratio``; the rest unchanged."""
    widths = conv_widths(model)
    return {k: max(1, round(v * (1 - ratio))) if k.startswith("layer") and k.endswith((".conv1", ".conv2"))
            else v for k, v in widths.items()}


def _prune(model, ratio: float, round_to: int | None):
    """The structurally pruned model, or None when ``onnxprune.structured.prune`` is not there yet."""
    try:
        from onnxprune.structured.prune import prune_structured
    except ImportError:
        return None
    return prune_structured(model, ratio=ratio, round_to=round_to).model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratios", default="0.3,0.5", help="structured pruning ratios (default 0.3,0.5)")
    parser.add_argument("--batches", default="1,8,32", help="batch sizes (default 1,8,32)")
    parser.add_argument("--runs", type=int, default=20, help="timed runs per model and batch (default 20)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs first (default 2)")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default all)")
    parser.add_argument("--round-to", type=int, default=None, help="keep channel counts multiples of this")
    parser.add_argument("--validate-samples", type=int, default=2, help="samples for the drift check (default 2)")
    parser.add_argument("--json", help="also write the raw benchmark report here")
    args = parser.parse_args(argv)
    ratios, batches = _floats(args.ratios), _ints(args.batches)

    started = time.perf_counter()
    original = resnet50(seed=0)
    base_macs = model_stats(original).macs
    models, names = [original], ["original"]
    pairs: list[tuple[float, str | None, str]] = []  # (ratio, pruned name or None, twin name)
    lines: list[str] = []
    for ratio in ratios:
        pruned = _prune(original, ratio, args.round_to)
        if pruned is None:
            lines.append(f"ratio {ratio}: onnxprune.structured.prune is not available; timing the narrow twin only")
            twin = resnet50(seed=1, widths=scaled_widths(original, ratio))
            pairs.append((ratio, None, f"twin-{ratio}"))
        else:
            report = validate_models(original, pruned, report_only=True, samples=args.validate_samples)
            logits = report.comparison("cpu").output("logits")
            lines.append(f"ratio {ratio}: checks {'ok' if report.passed else 'FAILED'}; drift from the original "
                         f"(random weights, {report.samples} samples): cosine {logits.cosine:.4f}, "
                         f"top-1 agreement {logits.top1:.0%}, max|diff| {logits.max_abs:.3g}")
            if not all(c.passed for c in report.checks):
                print("\n".join(lines), file=sys.stderr)
                return 1
            twin = resnet50(seed=1, widths=conv_widths(pruned))
            models.append(pruned)
            names.append(f"pruned-{ratio}")
            pairs.append((ratio, f"pruned-{ratio}", f"twin-{ratio}"))
        models.append(twin)
        names.append(f"twin-{ratio}")

    with tempfile.TemporaryDirectory(prefix="bench-resnet50-") as tmp:
        paths = [save_model(m, Path(tmp) / f"{n}.onnx") for m, n in zip(models, names, strict=True)]
        del models
        report = benchmark(paths, names=names, batches=batches, runs=args.runs, warmup=args.warmup,
                           threads=args.threads)
    data = report.to_dict()
    if args.json:
        Path(args.json).write_text(json.dumps(data, indent=2) + "\n")

    m = data["machine"]
    print(f"date      {m['date']}")
    print(f"machine   {m['cpu']}, {m['cores']} cores, {m['os']}, python {m['python']}, "
          f"onnxruntime {m['onnxruntime']}")
    print(f"command   {shlex.join([Path(sys.executable).name, *sys.argv])}")
    print(f"original  {base_macs / 1e9:.3f} GMACs, {model_stats(original).params:,} params")
    print(f"wall time {time.perf_counter() - started:.0f} s")
    for line in lines:
        print(line)
    print()
    print(report.to_text())
    print()
    print("speedup = original p50 / model p50; MAC ratio = ideal speedup; vs twin = median over rounds of")
    print("(pruned latency / twin latency) in the same round, minus 1 (negative: the pruned model is faster)")
    print(f"{'ratio':>5} {'batch':>5} {'model':<12} {'MAC ratio':>9} {'speedup':>8} {'sp/ideal':>8} "
          f"{'vs twin':>8}  within {TWIN_TARGET:.0%} of twin")
    for ratio, pruned_name, twin_name in pairs:
        for batch in batches:
            twin = report.result(twin_name, "cpu", batch)
            shown = [twin] if pruned_name is None else [report.result(pruned_name, "cpu", batch), twin]
            for r in shown:
                vs = paired_ratio(r, twin) - 1.0
                verdict = "" if r is twin else ("yes" if abs(vs) <= TWIN_TARGET else "NO")
                print(f"{ratio:>5} {batch:>5} {r.model:<12} {r.ideal_speedup:>9.2f} {r.speedup:>8.2f} "
                      f"{r.efficiency:>8.2f} {vs:>+8.1%}  {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
