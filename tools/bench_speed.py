"""Never slower? Speedup of pruned models with default widths (``--round-to auto``) against fixed widths.

For each model and ratio, prunes with the default flags (``round_to="auto"``: widths chosen by measured
layer latency, 2 s budget, cached), with no rounding (``--round-to 1``, the old default) and with
``--round-to 8``; then times the original and every pruned model alternately (``runtime.bench.benchmark``)
per thread count and batch. The table gives each variant's speedup over the original and its share of the
MAC-ideal speedup (speedup / ideal), and the latency model's predicted speedup for the default variant
with its error (predicted latency / measured latency - 1). Predictions are calibrated
(``latency_model(..., calibrate=True)``: the original and two fixed reference cuts timed whole, see
``onnxprune.runtime.prediction``); a row whose plan is one of those cuts is marked "(ref)", being a
calibration point rather than a prediction.

Usage:
  .venv/bin/python tools/bench_speed.py [--models digits_cnn,digits_mlp,...,resnet50] [--ratios 0.3,0.5]
                                        [--batches 1,8] [--threads 1,2] [--runs 20] [--resnet-runs 5]
                                        [--markdown table.md]

``resnet50`` is ``tools/resnet50.py`` (224x224, random weights); other names are ``models/NAME.onnx``.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from onnxprune import PruneConfig, prune  # noqa: E402
from onnxprune.core.io import load_model  # noqa: E402
from onnxprune.runtime.bench import benchmark  # noqa: E402
from onnxprune.speed import keep_counts, latency_model  # noqa: E402
from onnxprune.structured.analysis import analyze  # noqa: E402

VARIANTS = (("auto", "auto"), ("none", 1), ("r8", 8))


def _list(kind: type, text: str) -> list:
    return [kind(v) for v in text.split(",") if v.strip()]


def _source(name: str):
    if name == "resnet50":
        from tools.resnet50 import resnet50

        return resnet50(seed=0)
    return load_model(Path("models") / f"{name}.onnx")


def run_model(name: str, ratios: list[float], batches: list[int], threads: list[int], runs: int,
              budget: float, target: float | None = None) -> list[dict]:
    original = _source(name)
    rows = []
    pruned, predicted = {}, {}
    extra_names, extra_models = [], []
    if target:  # --target-speedup on the largest batch and the first thread count
        cfg = PruneConfig(target_speedup=target, validate=False, bench_batches=(max(batches),),
                          threads=threads[0], latency_budget=budget)
        result = prune(original, cfg)
        extra_names, extra_models = ["target"], [result.model]
        target_info = result.report["latency_target"]
    for ratio in ratios:
        for label, round_to in VARIANTS:
            cfg = PruneConfig(ratio=ratio, round_to=round_to, validate=False,
                              bench_batches=tuple(batches), threads=threads[0], latency_budget=budget)
            result = prune(original, cfg)
            pruned[(ratio, label)] = result.model
            if label == "auto":
                dg = analyze(original, dims=cfg.dims or None)
                for t in threads:
                    predicted[(ratio, t)] = (latency_model(original, dg, cfg.with_(threads=t), calibrate=True),
                                            result.plan)
    names = ["original"] + [f"{r}-{label}" for r in ratios for label, _ in VARIANTS] + extra_names
    models = [original] + [pruned[(r, label)] for r in ratios for label, _ in VARIANTS] + extra_models
    for t in threads:
        report = benchmark(models, names=names, batches=batches, threads=t, runs=runs, warmup=2, memory=False)
        for ratio in ratios:
            for batch in batches:
                row = {"model": name, "ratio": ratio, "threads": t, "batch": batch}
                base = report.result("original", "cpu", batch)
                row["original_ms"] = base.p50_ms
                for label, _ in VARIANTS:
                    r = report.result(f"{ratio}-{label}", "cpu", batch)
                    row[f"{label}_speedup"] = r.speedup
                    row["ideal"] = r.ideal_speedup if label == "auto" else row.get("ideal")
                    row[f"{label}_of_ideal"] = r.efficiency
                lm, plan = predicted[(ratio, t)]
                p = lm.predict_speedup(keep_counts(plan), {batch: base.p50_ms}).get(batch)
                row["predicted"] = p
                cut = {g: k for g, k in keep_counts(plan).items() if k < lm.dg.groups[g].size}
                row["reference"] = cut in lm.reference_keeps()
                if p and row["auto_speedup"]:
                    row["error"] = (base.p50_ms / p) / (base.p50_ms / row["auto_speedup"]) - 1
                rows.append(row)
        if target and t == threads[0]:
            r = report.result("target", "cpu", max(batches))
            cut = list(target_info["group_ratios"].values())
            rows.append({"model": name, "target": target, "threads": t, "batch": max(batches),
                         "ratio": f"{len(cut)} groups, {min(cut):g}-{max(cut):g}" if cut else "-",
                         "allocation": target_info.get("allocation", "-"),
                         "predicted": target_info["predicted_speedup"], "check": target_info.get("measured_speedup"),
                         "measured": r.speedup, "ideal": r.ideal_speedup})
    return rows


def _f(x, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def markdown(rows: list[dict], command: str, seconds: float) -> str:
    import onnxruntime as ort

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    head = (f"Measured {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC on {cpu} "
            f"({platform.system()}, onnxruntime {ort.__version__}, shared machine), {seconds:.0f} s: `{command}`\n\n"
            "| model | ratio | threads | batch | ideal | auto speedup (of ideal) | no rounding | round-to 8 | "
            "predicted (error) |\n|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    targets = [r for r in rows if "target" in r]
    rows = [r for r in rows if "target" not in r]
    for r in rows:
        err = r.get("error")
        lines.append(
            f"| {r['model']} | {r['ratio']} | {r['threads']} | {r['batch']} | {_f(r['ideal'])} | "
            f"{_f(r['auto_speedup'])} ({_f(r['auto_of_ideal'])}) | {_f(r['none_speedup'])} "
            f"({_f(r['none_of_ideal'])}) | {_f(r['r8_speedup'])} ({_f(r['r8_of_ideal'])}) | "
            f"{_f(r['predicted'])} ({_f(None if err is None else 100 * err, '+.0f')}%)"
            f"{' (ref)' if r.get('reference') else ''} |")
    text = head + "\n".join(lines) + "\n"
    if targets:
        text += ("\n| model | --target-speedup | threads | batch | groups cut (ratios) | ranked by | predicted | "
                 "measured by its check | measured here | ideal |\n|---|---|---|---|---|---|---|---|---|---|\n")
        text += "\n".join(f"| {r['model']} | {r['target']} | {r['threads']} | {r['batch']} | {r['ratio']} | "
                          f"{r['allocation']} | {_f(r['predicted'])} | {_f(r['check'])} | {_f(r['measured'])} | "
                          f"{_f(r['ideal'])} |" for r in targets) + "\n"
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="digits_cnn,digits_mlp,digits_transformer,resnet50")
    p.add_argument("--ratios", type=lambda s: _list(float, s), default=[0.3, 0.5])
    p.add_argument("--batches", type=lambda s: _list(int, s), default=[1, 8])
    p.add_argument("--threads", type=lambda s: _list(int, s), default=[1, 2])
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--resnet-runs", type=int, default=5)
    p.add_argument("--latency-budget", type=float, default=2.0, help="seconds of layer timing per prune")
    p.add_argument("--target-speedup", type=float, help="also prune each --target-models model to this speedup")
    p.add_argument("--target-models", default="resnet50")
    p.add_argument("--markdown", help="also write the table here")
    args = p.parse_args(argv)
    started = time.perf_counter()
    rows = []
    for name in _list(str, args.models):
        runs = args.resnet_runs if name == "resnet50" else args.runs
        target = args.target_speedup if name in _list(str, args.target_models) else None
        rows += run_model(name, args.ratios, args.batches, args.threads, runs, args.latency_budget, target)
    text = markdown(rows, "python tools/bench_speed.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
                    time.perf_counter() - started)
    sys.stdout.write(text)
    if args.markdown:
        Path(args.markdown).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
