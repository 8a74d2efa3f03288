"""Never slower? Speedup of pruned models with default widths (``--round-to auto``) against fixed widths.

For each model and ratio, prunes with ``round_to="auto"`` (widths chosen by measured layer latency, 2 s
budget, cached; timed at each thread count benchmarked, so a 2-thread row's widths were chosen at 2
threads), with no rounding (``--round-to 1``, the old default) and with ``--round-to 8``; a model whose
prune with no width flag is not ``auto`` (over 64 MB of weights: the fixed rule of
``speed.default_widths``, 16 for a conv model on an AVX-512 CPU) is also pruned that way ("default flags";
"default widths" says which rule). Then times the original and every pruned model alternately
(``runtime.bench.benchmark``)
per thread count and batch. The table gives each variant's speedup over the original and its share of the
MAC-ideal speedup (speedup / ideal). A speedup is the median of per-round ratios (every round times each model
once, ``runtime.speed_verdict``): a slow phase of a shared machine then slows both sides of a ratio, where a ratio
of the two medians takes them from different rounds (at 2 threads on the 2-core machine, ResNet-50's default
plan and the same plan pruned again read 1.53x and 1.73x that way in one run); the JSON keeps the ratio of
medians too (``*_p50_speedup``). For the default flags the cell also gives that median's 95% interval over the
ideal. "same widths": the auto plan keeps the default rule's widths, so a gap between the two is noise), and the
latency model's predicted speedup for the default variant
with its error (predicted latency / measured latency - 1). Predictions are calibrated
(``latency_model(..., calibrate=True)``: the original and fixed reference cuts timed whole, conv layers cut
off the conv block priced apart, see ``onnxprune.runtime.prediction``); a row whose plan is one of those cuts
is predicted with that cut left out of the fit ("held out"), and also as fitted with it ("fitted"). Below the
table: per model, how many predictions are within 15%.

Usage:
  .venv/bin/python tools/bench_speed.py [--models digits_cnn,digits_mlp,digits_transformer,tv_mobilenet_v2,resnet50]
                                        [--ratios 0.3,0.5]
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
from onnxprune.core.io import load_model, model_nbytes  # noqa: E402
from onnxprune.runtime.bench import benchmark  # noqa: E402
from onnxprune.runtime.dims import resolve_dims  # noqa: E402
from onnxprune.runtime.speed_verdict import speed_verdict  # noqa: E402
from onnxprune.speed import default_widths, keep_counts, latency_model  # noqa: E402
from onnxprune.structured.analysis import analyze  # noqa: E402

VARIANTS = (("auto", "auto"), ("none", 1), ("r8", 8))


def parse_csv(kind: type, text: str) -> list:
    """A comma-separated option as a list of ``kind`` (empty items dropped)."""
    return [kind(v) for v in text.split(",") if v.strip()]


def _source(name: str):
    if name == "resnet50":
        from tools.resnet50 import resnet50

        return resnet50(seed=0)
    return load_model(Path("models") / f"{name}.onnx")


def run_model(name: str, ratios: list[float], batches: list[int], threads: list[int], runs: int,
              budget: float, target: float | None = None) -> list[dict]:
    original = _source(name)
    # every dynamic axis sized once, as a prune resolves it: the prunes, the latency model's calibration and the
    # benchmark then time the same shapes (without it, a token model's calibration had no sequence length)
    dims = resolve_dims(original).dims
    default = default_widths(PruneConfig(ratio=ratios[0], dims=dims), model_nbytes(original), original).round_to
    rows = []
    fixed, auto, predicted, widths = {}, {}, {}, {}
    target_info: dict = {}
    target_model = None
    if target:  # --target-speedup on the largest batch and the first thread count
        cfg = PruneConfig(target_speedup=target, validate=False, bench_batches=(max(batches),),
                          threads=threads[0], latency_budget=budget, dims=dims)
        result = prune(original, cfg)
        target_model = result.model
        target_info = result.report["latency_target"]
    dg = analyze(original)
    variants = VARIANTS + ((("default", default),) if default != "auto" else ())  # no width flag, when not auto
    for ratio in ratios:
        for label, round_to in variants[1:]:  # fixed rules: the widths do not depend on the thread count
            cfg = PruneConfig(ratio=ratio, round_to=round_to, validate=False, bench_batches=tuple(batches), dims=dims)
            result = prune(original, cfg)
            fixed[(ratio, label)], widths[(ratio, label)] = result.model, keep_counts(result.plan)
        for t in threads:  # widths chosen by latency are timed at the thread count they are benchmarked at
            cfg = PruneConfig(ratio=ratio, round_to="auto", validate=False, bench_batches=tuple(batches),
                              threads=t, latency_budget=budget, dims=dims)
            result = prune(original, cfg)
            auto[(ratio, t)], widths[(ratio, "auto", t)] = result.model, keep_counts(result.plan)
            predicted[(ratio, t)] = (latency_model(original, dg, cfg, calibrate=True), result.plan)
    for t in threads:
        names = ["original"] + [f"{r}-{label}" for r in ratios for label, _ in variants]
        models = [original] + [auto[(r, t)] if label == "auto" else fixed[(r, label)]
                               for r in ratios for label, _ in variants]
        if target_model is not None and t == threads[0]:
            names.append("target")
            models.append(target_model)
        report = benchmark(models, names=names, batches=batches, threads=t, runs=runs, warmup=2, memory=False,
                           dims=dims)
        for ratio in ratios:
            for batch in batches:
                row = {"model": name, "ratio": ratio, "threads": t, "batch": batch, "default": default}
                base = report.result("original", "cpu", batch)
                row["original_ms"] = base.p50_ms
                verdicts = {}
                for label, _ in variants:  # speedup: the median of per-round ratios (each round times both)
                    r = report.result(f"{ratio}-{label}", "cpu", batch)
                    verdicts[label] = speed_verdict("cpu", batch, base.times_ms, r.times_ms)
                    paired = verdicts[label].speedup
                    row[f"{label}_speedup"], row[f"{label}_p50_speedup"] = paired, r.speedup
                    row["ideal"] = r.ideal_speedup if label == "auto" else row.get("ideal")
                    row[f"{label}_of_ideal"] = paired / row["ideal"] if row["ideal"] else None
                if default == "auto":
                    row["default_speedup"], row["default_of_ideal"] = row["auto_speedup"], row["auto_of_ideal"]
                else:  # the auto plan may keep the default rule's widths: then any gap between them is noise
                    row["auto_is_default"] = widths[(ratio, "auto", t)] == widths[(ratio, "default")]
                # the spread: 95% interval of the median per-round speedup of the default-flags model, over its ideal
                verdict = verdicts["auto" if default == "auto" else "default"]
                if row["ideal"]:
                    row["default_interval"] = (verdict.low / row["ideal"], verdict.high / row["ideal"])
                lm, plan = predicted[(ratio, t)]
                keep = keep_counts(plan)
                cut = {g: k for g, k in keep.items() if k < lm.dg.groups[g].size}
                row["reference"] = cut in lm.reference_keeps()
                # a plan equal to a reference cut is predicted with that cut left out of the fit (hold-out)
                p = lm.predict_speedup(keep, {batch: base.p50_ms}, holdout=row["reference"]).get(batch)
                row["predicted"] = p
                if p and row["auto_speedup"]:
                    row["error"] = row["auto_speedup"] / p - 1  # predicted latency / measured latency - 1
                if row["reference"]:  # and as the calibration point it also is
                    fitted = lm.predict_speedup(keep, {batch: base.p50_ms}).get(batch)
                    if fitted and row["auto_speedup"]:
                        row["fitted"], row["fitted_error"] = fitted, row["auto_speedup"] / fitted - 1
                rows.append(row)
        if target_model is not None and t == threads[0]:
            r = report.result("target", "cpu", max(batches))
            cut = list(target_info["group_ratios"].values())
            rows.append({"model": name, "target": target, "threads": t, "batch": max(batches),
                         "ratio": f"{len(cut)} groups, {min(cut):g}-{max(cut):g}" if cut else "-",
                         "allocation": target_info.get("allocation", "-"),
                         "predicted": target_info["predicted_speedup"], "check": target_info.get("measured_speedup"),
                         "checks": len(target_info.get("checks", [])),
                         "measured": speed_verdict("cpu", max(batches), report.result("original", "cpu", max(
                             batches)).times_ms, r.times_ms).speedup, "ideal": r.ideal_speedup})
    return rows


def errors_summary(rows: list[dict], limit: float = 0.15) -> str:
    """Per model: how many predictions are within ``limit`` of the measured latency, and the range of errors."""
    lines = []
    for name in dict.fromkeys(r["model"] for r in rows if "target" not in r):
        errs = [r["error"] for r in rows if r["model"] == name and "target" not in r and r.get("error") is not None]
        if errs:
            ok = sum(abs(e) <= limit for e in errs)
            held = sum(1 for r in rows if r["model"] == name and r.get("reference"))
            lines.append(f"- {name}: {ok} of {len(errs)} predictions within {100 * limit:.0f}% "
                         f"({100 * min(errs):+.0f}% to {100 * max(errs):+.0f}%)"
                         f"{f'; {held} judged with their reference cut held out' if held else ''}")
    return "\n".join(lines) + "\n" if lines else ""


def cell(x, spec: str = ".2f") -> str:
    """A table cell: ``x`` formatted, ``-`` when missing."""
    return "-" if x is None else format(x, spec)


def _interval(r: dict) -> str:
    low_high = r.get("default_interval")
    return f"; {low_high[0]:.2f}-{low_high[1]:.2f}" if low_high else ""


def _fitted(r: dict) -> str:
    return f"; fitted {cell(r['fitted'])} ({cell(100 * r['fitted_error'], '+.0f')}%)" if "fitted" in r else ""


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
            "| model | default widths | ratio | threads | batch | ideal | default flags (of its ideal; 95%) | "
            "auto speedup (of ideal) | no rounding | round-to 8 | predicted (error) |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    targets = [r for r in rows if "target" in r]
    rows = [r for r in rows if "target" not in r]
    for r in rows:
        err = r.get("error")
        lines.append(
            f"| {r['model']} | {r['default']} | {r['ratio']} | {r['threads']} | {r['batch']} | {cell(r['ideal'])} | "
            f"{cell(r['default_speedup'])} ({cell(r['default_of_ideal'])}{_interval(r)}) | "
            f"{cell(r['auto_speedup'])} ({cell(r['auto_of_ideal'])})"
            f"{' same widths' if r.get('auto_is_default') else ''} | "
            f"{cell(r['none_speedup'])} "
            f"({cell(r['none_of_ideal'])}) | {cell(r['r8_speedup'])} ({cell(r['r8_of_ideal'])}) | "
            f"{cell(r['predicted'])} ({cell(None if err is None else 100 * err, '+.0f')}%)"
            f"{' held out' if r.get('reference') else ''}"
            f"{_fitted(r)} |")
    text = head + "\n".join(lines) + "\n\n" + errors_summary(rows)
    if targets:
        text += ("\n| model | --target-speedup | threads | batch | groups cut (ratios) | ranked by | predicted | "
                 "measured by its checks (n) | measured here | ideal |\n|---|---|---|---|---|---|---|---|---|---|\n")
        text += "\n".join(f"| {r['model']} | {r['target']} | {r['threads']} | {r['batch']} | {r['ratio']} | "
                          f"{r['allocation']} | {cell(r['predicted'])} | {cell(r['check'])} ({r['checks']}) | "
                          f"{cell(r['measured'])} | "
                          f"{cell(r['ideal'])} |" for r in targets) + "\n"
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="digits_cnn,digits_mlp,digits_transformer,tv_mobilenet_v2,resnet50")
    p.add_argument("--ratios", type=lambda s: parse_csv(float, s), default=[0.3, 0.5])
    p.add_argument("--batches", type=lambda s: parse_csv(int, s), default=[1, 8])
    p.add_argument("--threads", type=lambda s: parse_csv(int, s), default=[1, 2])
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--resnet-runs", type=int, default=5)
    p.add_argument("--latency-budget", type=float, default=2.0, help="seconds of layer timing per prune")
    p.add_argument("--target-speedup", type=float, help="also prune each --target-models model to this speedup")
    p.add_argument("--target-models", default="resnet50")
    p.add_argument("--markdown", help="also write the table here")
    args = p.parse_args(argv)
    started = time.perf_counter()
    rows = []
    for name in parse_csv(str, args.models):
        runs = args.resnet_runs if name == "resnet50" else args.runs
        target = args.target_speedup if name in parse_csv(str, args.target_models) else None
        rows += run_model(name, args.ratios, args.batches, args.threads, runs, args.latency_budget, target)
    text = markdown(rows, "python tools/bench_speed.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
                    time.perf_counter() - started)
    sys.stdout.write(text)
    if args.markdown:
        Path(args.markdown).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
