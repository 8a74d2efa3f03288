"""CUDA tables: pruned full-size ImageNet CNNs against the dense model on the CUDA execution provider.

For each model (``resnet50`` from ``tools/resnet50.py``; ``mobilenet_v2``, ``efficientnet_b0`` and
``densenet121`` exported from torchvision at 224x224 with random weights and a dynamic batch, no download) and
each ratio: prunes with ``round_to="auto"`` (widths chosen by layer latency measured on the provider, at the
benchmarked batches), with no rounding (``round_to=1``) and with ``round_to=8``; a model whose prune with no
width flag is not ``auto`` (over 64 MB of weights) is listed with the fixed rule it gets ("default").
Then times the dense model and every pruned one alternately on the provider (``runtime.bench.benchmark``:
inputs and outputs resident on the GPU through I/O binding, no host copy timed) at each batch, and again
replayed as CUDA graphs (``cuda_graph=True``) for the dense model and the auto prunes. A speedup is the
median of per-round ratios (``runtime.speed_verdict``); "of ideal" divides it by the MAC-ideal speedup. With
``--fp16 NAME,...`` those models are also converted to float16 (onnxruntime's ``float16`` converter, inputs
and outputs kept float32) and pruned and timed the same way.

Everything is written to ``--out`` after each model (``cuda_table.md``, ``cuda_table.json``), so a run cut
short still leaves the models it finished; ``--deadline-s`` stops starting new models after that many seconds.

Usage:
  python tools/bench_cuda.py --out DIR [--provider cuda] [--models resnet50,mobilenet_v2,efficientnet_b0,densenet121]
                             [--ratios 0.3,0.5] [--batches 1,32] [--runs 100] [--fp16 resnet50] [--deadline-s 400]

``--provider cpu`` runs the same table on the CPU (how the script is tested on a machine without a GPU).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shlex
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from onnxprune import PruneConfig, prune  # noqa: E402
from onnxprune.core.io import load_model, model_nbytes  # noqa: E402
from onnxprune.runtime.bench import benchmark  # noqa: E402
from onnxprune.runtime.dims import resolve_dims  # noqa: E402
from onnxprune.runtime.speed_verdict import speed_verdict  # noqa: E402
from onnxprune.speed import default_widths, keep_counts, latency_model  # noqa: E402
from onnxprune.structured.analysis import analyze  # noqa: E402
from tools.bench_speed import cell, parse_csv  # noqa: E402

TORCHVISION = ("mobilenet_v2", "efficientnet_b0", "densenet121")
FIXED = (("none", 1), ("r8", 8))


def export_torchvision(name: str, path: Path) -> Path:
    """torchvision's ``name`` (random weights, eval mode) exported at 224x224 with a dynamic batch, opset 17."""
    if path.is_file():
        return path
    import torch
    import torchvision

    net = getattr(torchvision.models, name)(weights=None).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.onnx.export(net, (x,), str(path), input_names=["input"], output_names=["logits"], opset_version=17,
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
    return path


def source(name: str, folder: Path):
    if name == "resnet50":
        from tools.resnet50 import resnet50

        return resnet50(seed=0)
    if name in TORCHVISION:
        return load_model(export_torchvision(name, folder / f"{name}.onnx"))
    return load_model(Path("models") / f"{name}.onnx")


def to_fp16(model):
    """The model in float16 with float32 inputs and outputs (what a user converting for a GPU gets)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    return convert_float_to_float16(model, keep_io_types=True)


def run_model(name: str, original, *, provider: str, ratios: list[float], batches: list[int], runs: int,
              budget: float) -> list[dict]:
    """The rows of one model: per ratio and batch, each variant's speedup, its ideal, and the prediction."""
    dims = resolve_dims(original).dims
    providers = (provider,)
    default = default_widths(PruneConfig(ratio=ratios[0], dims=dims, providers=providers),
                             model_nbytes(original), original).round_to
    variants = [("auto", "auto"), *FIXED] + ([("default", default)] if default not in ("auto", 1, 8) else [])
    dg = analyze(original)
    pruned, predicted, seconds = {}, {}, {}
    for ratio in ratios:
        for label, round_to in variants:
            cfg = PruneConfig(ratio=ratio, round_to=round_to, validate=False, bench_batches=tuple(batches),
                              dims=dims, providers=providers, latency_budget=budget)
            started = time.perf_counter()
            result = prune(original, cfg)
            seconds[(ratio, label)] = time.perf_counter() - started
            pruned[(ratio, label)] = result.model
            if label == "auto":
                lm = latency_model(original, dg, cfg, calibrate=True)
                predicted[ratio] = (lm, keep_counts(result.plan))
            log(f"{name} {ratio} {label}: pruned in {seconds[(ratio, label)]:.1f} s")
    names = ["original"] + [f"{r}-{label}" for r in ratios for label, _ in variants]
    models = [original] + [pruned[(r, label)] for r in ratios for label, _ in variants]
    report = benchmark(models, names=names, providers=providers, batches=batches, runs=runs, warmup=5,
                       memory=False, dims=dims)
    log(f"{name}: benchmarked")
    graphs, graph_error = None, None
    if provider == "cuda":
        try:
            graphs = benchmark([original] + [pruned[(r, "auto")] for r in ratios],
                               names=["original"] + [f"{r}-auto" for r in ratios], providers=providers,
                               batches=batches, runs=runs, warmup=5, memory=False, dims=dims, cuda_graph=True)
            log(f"{name}: benchmarked as CUDA graphs")
        except Exception as exc:  # noqa: BLE001  # a refusal is a result of the table, with its reason
            graph_error = str(exc).splitlines()[0][:200]
            log(f"{name}: no CUDA graph ({graph_error})")
    rows = []
    for ratio in ratios:
        for batch in batches:
            base = report.result("original", provider, batch)
            row: dict = {"model": name, "ratio": ratio, "batch": batch, "default": default,
                         "original_ms": base.p50_ms}
            for label, _ in variants:
                r = report.result(f"{ratio}-{label}", provider, batch)
                verdict = speed_verdict(provider, batch, base.times_ms, r.times_ms)
                row[f"{label}_ideal"] = r.ideal_speedup
                row["ideal"] = r.ideal_speedup if label == "auto" else row["ideal"]  # the auto prune's MAC ideal
                row[f"{label}_speedup"] = verdict.speedup
                row[f"{label}_interval"] = (verdict.low, verdict.high)
                row[f"{label}_of_ideal"] = verdict.speedup / r.ideal_speedup if r.ideal_speedup else None
                row[f"{label}_prune_s"] = round(seconds[(ratio, label)], 1)
            lm, keep = predicted[ratio]
            p = lm.predict_speedup(keep, {batch: base.p50_ms}).get(batch)
            row["predicted"] = p
            if p and row["auto_speedup"]:
                row["error"] = row["auto_speedup"] / p - 1
            if graphs is not None:
                g_base = graphs.result("original", provider, batch)
                g = graphs.result(f"{ratio}-auto", provider, batch)
                row["graph_original_ms"] = g_base.p50_ms
                row["graph_auto_speedup"] = speed_verdict(provider, batch, g_base.times_ms, g.times_ms).speedup
            elif graph_error:
                row["graph_error"] = graph_error
            rows.append(row)
    return rows


def markdown(rows: list[dict], failures: list[dict], command: str, seconds: float, provider: str) -> str:
    import onnxruntime as ort

    device = platform.processor() or platform.machine()
    if provider == "cuda":
        try:
            import subprocess

            device = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                                    capture_output=True, text=True, timeout=30).stdout.strip() or device
        except (OSError, subprocess.SubprocessError):
            pass
    head = (f"Measured {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC on {device}, provider "
            f"{provider} (onnxruntime {ort.__version__}), {seconds:.0f} s: `{command}`\n\n"
            "| model | default widths | ratio | batch | dense ms | ideal | auto (of ideal; 95%) | no rounding | "
            "round-to 8 | predicted auto (error) | CUDA graph: dense ms / auto |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for r in rows:
        err = r.get("error")
        low, high = r["auto_interval"]
        graph = (f"{cell(r['graph_original_ms'], '.3f')} / {cell(r['graph_auto_speedup'])}" if "graph_original_ms" in r
                 else ("refused" if r.get("graph_error") else "-"))
        lines.append(f"| {r['model']} | {r['default']} | {r['ratio']} | {r['batch']} | "
                     f"{cell(r['original_ms'], '.3f')} | {cell(r['ideal'])} | "
                     f"{cell(r['auto_speedup'])} ({cell(r['auto_of_ideal'])}; {low:.2f}-{high:.2f}) | "
                     f"{cell(r['none_speedup'])} ({cell(r['none_of_ideal'])}) | {cell(r['r8_speedup'])} "
                     f"({cell(r['r8_of_ideal'])}) | {cell(r['predicted'])} "
                     f"({cell(None if err is None else 100 * err, '+.0f')}%) | {graph} |")
    text = head + "\n".join(lines) + "\n"
    refused = {r["model"]: r["graph_error"] for r in rows if r.get("graph_error")}
    for model, why in refused.items():
        text += f"\n- {model}: CUDA graph refused: {why}"
    for f in failures:
        text += f"\n- {f['model']}: not measured: {f['error']}"
    return text + ("\n" if refused or failures else "")


def log(message: str) -> None:
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for cuda_table.md / cuda_table.json (and exports)")
    p.add_argument("--provider", default="cuda")
    p.add_argument("--models", default="resnet50,mobilenet_v2,efficientnet_b0,densenet121")
    p.add_argument("--ratios", type=lambda s: parse_csv(float, s), default=[0.3, 0.5])
    p.add_argument("--batches", type=lambda s: parse_csv(int, s), default=[1, 32])
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--latency-budget", type=float, default=2.0, help="seconds of layer timing per prune")
    p.add_argument("--fp16", default="", help="models also converted to float16 and measured")
    p.add_argument("--deadline-s", type=float, default=0.0, help="start no new model after this many seconds")
    p.add_argument("--exports", help="folder of torchvision exports (default: --out)")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    exports = Path(args.exports) if args.exports else out
    exports.mkdir(parents=True, exist_ok=True)
    command = "python tools/bench_cuda.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    started = time.perf_counter()
    jobs = [(n, False) for n in parse_csv(str, args.models)] + [(n, True) for n in parse_csv(str, args.fp16)]
    rows: list[dict] = []
    failures: list[dict] = []
    for name, half in jobs:
        label = f"{name}-fp16" if half else name
        if args.deadline_s and time.perf_counter() - started > args.deadline_s:
            failures.append({"model": label, "error": f"not started: past the {args.deadline_s:g} s deadline"})
            continue
        log(f"{label}: start")
        try:
            original = source(name, exports)
            if half:
                original = to_fp16(original)
            rows += run_model(label, original, provider=args.provider, ratios=args.ratios, batches=args.batches,
                              runs=args.runs, budget=args.latency_budget)
        except Exception as exc:  # noqa: BLE001  # one model's failure is reported; the others still run
            failures.append({"model": label, "error": str(exc).splitlines()[0][:300] if str(exc) else repr(exc)})
            traceback.print_exc()
        text = markdown(rows, failures, command, time.perf_counter() - started, args.provider)
        (out / "cuda_table.json").write_text(json.dumps({"command": command, "rows": rows, "failures": failures},
                                                        indent=1))
        (out / "cuda_table.md").write_text(text)
    sys.stdout.write(markdown(rows, failures, command, time.perf_counter() - started, args.provider))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
