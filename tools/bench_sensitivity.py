"""How much faster is Gram-scored sensitivity than measuring every candidate on the whole model, and does
it rank groups the same way?

For each model, times :func:`onnxprune.recovery.sensitivity.sensitivity` with ``method="model"`` (every
candidate pruned, run by onnxruntime and compared, today's path) and ``method="gram"`` (one calibration
pass, Gram-scored curves anchored by one whole-model run per group, the default), and reports the Spearman
rank correlation of the per-group scores (mean error over the ratios). With ``--budget`` it also times the
``--target-macs`` budget (sensitivity at 9 ratios plus the greedy allocation, :func:`allocate_budget`)
both ways and, where the model ships a labelled test split, prunes with each allocation through
:func:`onnxprune.prune` and reports top-1 on it.

With ``--baseline-src DIR`` (a copy of an older ``onnxprune`` package, e.g. ``git archive main onnxprune | tar
-x -C DIR``), the same sensitivity and budget are also timed with that code in a subprocess: "today's path"
before this change (every candidate cut, counted and run on the whole model).

With ``--scaling 1,2`` the whole-model path is also timed on 1 and 2 workers of each ``--executors``
(``processes``: a pool of worker processes; ``ray``: one local cluster of ``--ray-cpus`` CPUs, default the
largest width, started once and timed at each width by bounding the candidates in flight, or the cluster at
``--ray-address``); every result must equal the local one, and the row reports the speedup from 1 worker.
On a bigger box: ``--scaling 1,2,4,8,16 --ray-cpus 16``.

With ``--final --baseline-src DIR`` (DIR: ``git archive 33d7b19 | tar -x -C DIR``, old main), the one table
the issue asks for, each protocol run in fresh processes, alternating old and new (timings on a shared machine
are ratios within one run), see :data:`FINAL_PROTOCOLS`: RegNetX-400MF (256 seeded N(0,1) samples, the 7 default
ratios, ``sensitivity`` and the ``--target-macs 0.5`` budget, 1 pair, Spearman of the group scores against this
tree's ``method="model"``) and a full-size ResNet-50 (``tools/resnet50.py``, seed 0) at the same protocol, where
old main's ``sensitivity`` is timed on 2 fixed groups (first and last) against the new tree on the same groups,
and the new tree also runs every group (old main's time for that, and both trees' budgets, are not measured,
and not estimated); then ``prune --target-macs 0.5`` on digits_cnn's test split with both trees (top-1, and whether the
two files are the same bytes).

Calibration: the model's ``<name>_calib.npz`` where shipped, else ``--samples`` seeded standard-normal
inputs (written to a temporary npz). Run on an idle machine: the figures are wall times.

Usage:
  .venv/bin/python tools/bench_sensitivity.py [--models models/digits_cnn.onnx ...] [--samples 256]
                                              [--recover none] [--ratios 0.1,0.5] [--anchor-samples 64,32,all]
                                              [--budget] [--target-macs 0.5]
                                              [--json out.json]
                                              [--baseline-src DIR] [--scaling 1,2] [--executors processes,ray]
                                              [--ray-cpus N] [--ray-address ADDRESS] [--scaling-only]
  .venv/bin/python tools/bench_sensitivity.py --final --baseline-src DIR [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onnxprune.config import PruneConfig  # noqa: E402
from onnxprune.core.io import load_model  # noqa: E402
from onnxprune.recovery.budget import allocate_budget  # noqa: E402
from onnxprune.recovery.sensitivity import (  # noqa: E402
    DEFAULT_ANCHOR_SAMPLES,
    DEFAULT_RATIOS,
    sensitivity,
    spearman,
)
from onnxprune.runtime.feeds import input_specs  # noqa: E402
from onnxprune.structured.analysis import analyze  # noqa: E402

DEFAULT_MODELS = ("models/digits_cnn.onnx", "models/tv_regnet_x_400mf.onnx")


def calibration(model_path: Path, samples: int, tmp: Path) -> tuple[str, str]:
    """(npz path, description): the shipped calibration set, or seeded random inputs saved to ``tmp``."""
    shipped = model_path.with_name(model_path.stem + "_calib.npz")
    if shipped.exists():
        return str(shipped), f"{shipped.name}"
    m = load_model(model_path)
    rng = np.random.default_rng(0)
    arrays = {}
    for spec in input_specs(m):
        dims = [samples] + [d if isinstance(d, int) else 1 for d in (spec.shape or ())[1:]]
        arrays[spec.name] = rng.standard_normal(dims).astype(spec.dtype)
    path = tmp / f"{model_path.stem}_random.npz"
    np.savez(path, **arrays)
    return str(path), f"{samples} seeded N(0,1) samples"


def whole_model_runs(report) -> int:  # type: ignore[no-untyped-def]
    """Distinct candidates run on the whole model (an uncut one is the original, and a group's ratios that keep
    the same number of channels keep the same channels: one run)."""
    return len({(g.group, k) for g in report.groups for k, e in zip(g.kept, g.exact, strict=True)
                if e and k < g.size})


def timed(fn):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


_BASELINE = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
from onnxprune.recovery.sensitivity import sensitivity
path, calib, recover, samples, budget, target = sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), \\
    sys.argv[6] == "1", float(sys.argv[7])
t = time.perf_counter()
rep = sensitivity(path, calib, recover=recover, max_samples=samples)
out = {"sensitivity_s": time.perf_counter() - t, "scores": {g.group: g.score for g in rep.groups}}
if budget:
    from onnxprune.config import PruneConfig
    from onnxprune.core.io import load_model
    from onnxprune.recovery.budget import allocate_budget
    from onnxprune.structured.analysis import analyze
    m = load_model(path)
    dg = analyze(m)
    t = time.perf_counter()
    ratios = allocate_budget(m, dg, PruneConfig(target_macs=target, calib=calib))
    out["budget_s"] = time.perf_counter() - t
    out["ratios"] = ratios
    if sys.argv[8]:
        import onnxprune
        res = onnxprune.prune(path, PruneConfig(target_macs=target, calib=calib, eval_data=sys.argv[8]))
        out["top1"] = res.report["accuracy"]["after"]["top1"]
print("BASELINE " + json.dumps(out))
"""


def test_split(path: Path) -> str:
    """The model's shipped labelled test split, or "" when there is none."""
    test = path.with_name(path.stem + "_test.npz")
    return str(test) if test.exists() else ""


def run_baseline(src: str, path: Path, calib: str, args: argparse.Namespace) -> dict[str, object]:
    """Time the older package in ``src`` on the same model and data (a subprocess, so imports do not mix)."""
    import subprocess

    proc = subprocess.run([sys.executable, "-c", _BASELINE, src, str(path), calib, args.recover, str(args.samples),
                           "1" if args.budget else "0", str(args.target_macs), test_split(path)],
                          capture_output=True, text=True, check=True)
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("BASELINE "))
    return json.loads(line[len("BASELINE "):])


def scaling(path: Path, calib: str, expected: dict[str, object], args: argparse.Namespace) -> dict[str, object]:
    """Whole-model sensitivity on each width of ``args.scaling`` for each executor; results must equal ``expected``."""
    from onnxprune.recovery.sensitivity import OutputErrorMeter

    meter = OutputErrorMeter(load_model(path), calib, max_samples=args.samples)
    state = path.stat().st_size + sum(a.nbytes for d in (*meter.batches, *meter.reference) for a in d.values())
    out: dict[str, object] = {"worker_state_mb": round(state / 2**20, 1)}  # what each worker holds: model + data
    for executor in args.executors:
        if executor == "ray":
            try:
                import ray
            except ImportError:
                out["ray"] = 'not installed (pip install -e ".[distributed]")'
                continue
            cpus = None if args.ray_address else args.ray_cpus or max(args.scaling)
            _, t_init = timed(lambda c=cpus: ray.init(address=args.ray_address, num_cpus=c, include_dashboard=False,
                                                      log_to_driver=False, configure_logging=False))
            out["ray_init_s"] = round(t_init, 1)
            out["ray_cluster_cpus"] = int(ray.cluster_resources().get("CPU", 0))
        times = {}
        try:
            for w in args.scaling:
                scaled, t_w = timed(lambda w=w, e=executor: sensitivity(
                    str(path), calib, recover=args.recover, method="model", max_samples=args.samples,
                    ratios=args.ratios, executor=e, workers=w, ray_address=args.ray_address))
                assert scaled.to_dict() == expected, f"{executor} on {w} workers changed the result"
                times[w] = t_w
                out[f"sensitivity_model_{executor}_{w}_s"] = round(t_w, 1)
        finally:
            if executor == "ray":
                ray.shutdown()
        base = min(times)
        for w in times:
            if w != base:
                out[f"speedup_{executor}_{base}_to_{w}"] = round(times[base] / times[w], 2)
    return out


def bench_model(path: Path, args: argparse.Namespace, tmp: Path) -> dict[str, object]:
    calib, calib_desc = calibration(path, args.samples, tmp)
    row: dict[str, object] = {"model": path.name, "calib": calib_desc, "recover": args.recover}
    exact, t_model = timed(lambda: sensitivity(str(path), calib, recover=args.recover, method="model",
                                               max_samples=args.samples, ratios=args.ratios))
    row.update(groups=len(exact.groups), sensitivity_model_s=round(t_model, 1),
               candidates=sum(len(g.ratios) for g in exact.groups), whole_model_runs_model=whole_model_runs(exact))
    if not args.scaling_only:
        for i, anchors in enumerate(args.anchor_samples):  # the first is the headline "gram" row
            fast_a, t_a = timed(lambda a=anchors: sensitivity(str(path), calib, recover=args.recover, method="gram",
                                                              max_samples=args.samples, ratios=args.ratios,
                                                              anchor_samples=a))
            rho = round(spearman([g.score for g in fast_a.groups], [g.score for g in exact.groups]), 4)
            if i == 0:
                fast, t_gram = fast_a, t_a
                row.update(anchor_samples=anchors, sensitivity_gram_s=round(t_gram, 1),
                           sensitivity_speedup=round(t_model / t_gram, 2), spearman=rho,
                           whole_model_runs_gram=whole_model_runs(fast))
            else:
                row[f"sensitivity_gram_anchors_{anchors or 'all'}_s"] = round(t_a, 1)
                row[f"spearman_anchors_{anchors or 'all'}"] = rho
    if args.scaling:
        row.update(scaling(path, calib, exact.to_dict(), args))
    if args.scaling_only:
        return row
    if args.baseline_src:
        base = run_baseline(args.baseline_src, path, calib, args)
        today = base["scores"]
        assert isinstance(today, dict)
        row.update(sensitivity_today_s=round(float(base["sensitivity_s"]), 1),  # type: ignore[arg-type]
                   speedup_vs_today=round(float(base["sensitivity_s"]) / t_gram, 2),  # type: ignore[arg-type]
                   spearman_vs_today=round(spearman([g.score for g in fast.groups],
                                                    [today[str(g.group)] for g in fast.groups]), 4))
        if args.budget:
            row.update(budget_today_s=round(float(base["budget_s"]), 1),  # type: ignore[arg-type]
                       budget_top1_today=base.get("top1"))
    if args.budget:
        m = load_model(path)
        dg = analyze(m)
        cfg = PruneConfig(target_macs=args.target_macs, calib=calib)
        ratios_model, tb_model = timed(lambda: allocate_budget(m, dg, cfg.with_(sensitivity_method="model")))
        ratios_gram, tb_gram = timed(lambda: allocate_budget(m, dg, cfg.with_(sensitivity_method="gram")))
        row.update(budget_model_s=round(tb_model, 1), budget_gram_s=round(tb_gram, 1),
                   budget_speedup=round(tb_model / tb_gram, 2), same_allocation=ratios_model == ratios_gram)
        test = test_split(path)
        if test:
            import onnxprune

            for name, method in (("model", "model"), ("gram", "gram")):
                res = onnxprune.prune(str(path), PruneConfig(target_macs=args.target_macs, calib=calib,
                                                             eval_data=str(test), sensitivity_method=method))
                row[f"budget_top1_{name}"] = res.report["accuracy"]["after"]["top1"]
    return row


@dataclass(frozen=True)
class Protocol:
    """One row of ``--final``.

    Attributes:
        name / model: the row's name and model path ("resnet50": built by ``tools/resnet50.py``, seed 0).
        samples / ratios: calibration samples and sensitivity ratios (the budget uses its own 9).
        budget: also time the ``--target-macs 0.5`` budget.
        pairs: old/new alternations.
        old_groups: ``None``: old main runs the whole protocol; a number ``k``: old main's sensitivity runs on
            ``k`` fixed groups only (the first, then evenly spaced, then the last prunable group by id), and
            the new tree on the same groups, so that pair is like for like; the new tree also runs the whole
            protocol (every group, and the budget), whose old-main time is not measured (it is not estimated
            either).
        reference: compute the Spearman reference (``method="model"``, every candidate on the whole model).
    """

    name: str
    model: str
    samples: int
    ratios: tuple[float, ...]
    budget: bool
    pairs: int
    old_groups: int | None = None
    reference: bool = True


#: The ``--final`` rows, sized to run in about 12 minutes on the 2-core development machine. ResNet-50 at 256
#: samples: old main runs each of its anchors on the whole model over every sample and its Grams over every sample
#: (about 40 CPU-seconds per 32-sample batch here), so it is timed on 2 fixed groups; its whole-model Spearman
#: reference (37 groups x 7 ratios on the whole model) would take hours, and so would old main's budget.
FINAL_PROTOCOLS = (
    Protocol("RegNetX-400MF", "models/tv_regnet_x_400mf.onnx", 256, DEFAULT_RATIOS, True, 1),
    Protocol("ResNet-50", "resnet50", 256, DEFAULT_RATIOS, False, 1, old_groups=2, reference=False),
)
FINAL_REPEATS = 2

_RUN = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
from onnxprune.recovery.sensitivity import sensitivity
path, calib, samples, ratios, what = sys.argv[2], sys.argv[3], int(sys.argv[4]), \\
    tuple(float(r) for r in sys.argv[5].split(",")), sys.argv[6]
groups = None if sys.argv[7] == "all" else [int(g) for g in sys.argv[7].split(",")]
out = {}
if what in ("sensitivity", "model"):
    t = time.perf_counter()
    kw = {"method": "model"} if what == "model" else {}
    rep = sensitivity(path, calib, ratios=ratios, max_samples=samples, groups=groups, **kw)
    out = {"s": time.perf_counter() - t, "scores": {str(g.group): g.score for g in rep.groups}}
else:
    from onnxprune.config import PruneConfig
    from onnxprune.core.io import load_model
    from onnxprune.recovery.budget import allocate_budget
    from onnxprune.structured.analysis import analyze
    m = load_model(path)
    dg = analyze(m)
    t = time.perf_counter()
    ratios = allocate_budget(m, dg, PruneConfig(target_macs=0.5, calib=calib))
    out = {"s": time.perf_counter() - t, "ratios": {str(k): v for k, v in ratios.items()}}
print("RESULT " + json.dumps(out))
"""


def _fresh(src: str, path: str, calib: str, samples: int, ratios: tuple[float, ...], what: str,
           groups: list[int] | None = None) -> dict:
    """One measurement in a fresh process with the package in ``src`` first on the path."""
    import subprocess

    proc = subprocess.run([sys.executable, "-c", _RUN, src, path, calib, str(samples),
                           ",".join(f"{r:g}" for r in ratios), what,
                           "all" if groups is None else ",".join(map(str, groups))], capture_output=True, text=True)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not line:
        raise SystemExit(f"{what} with {src} failed:\n{proc.stderr[-3000:]}")
    return dict(json.loads(line[0][len("RESULT "):]))


def _digits_top1(src: str, tmp: Path) -> tuple[float, str]:
    """``prune models/digits_cnn.onnx --target-macs 0.5 --calib ... --eval-data ...`` with ``src``: top-1 after,
    and the SHA-256 of the file written."""
    import hashlib
    import subprocess

    code = ("import sys; sys.path.insert(0, sys.argv[1]); from onnxprune.cli.main import main; "
            "raise SystemExit(main(sys.argv[2:]))")
    out = tmp / f"digits_{abs(hash(src))}.onnx"
    report = tmp / f"digits_{abs(hash(src))}.json"
    subprocess.run([sys.executable, "-c", code, src, "prune", "models/digits_cnn.onnx", "-o", str(out),
                    "--target-macs", "0.5", "--calib", "models/digits_cnn_calib.npz", "--eval-data",
                    "models/digits_cnn_test.npz", "--report", str(report), "--quiet"], check=True, cwd=ROOT)
    return (float(json.loads(report.read_text())["accuracy"]["after"]["top1"]),
            hashlib.sha256(out.read_bytes()).hexdigest())


def _subset(path: Path, k: int) -> list[int]:
    """``k`` fixed prunable groups of the model: the first, evenly spaced ones, and the last (by id)."""
    ids = sorted(g.id for g in analyze(load_model(path)).prunable_groups if g.size > 1)
    picks = np.linspace(0, len(ids) - 1, k).round().astype(int) if k > 1 else [0]
    return [ids[i] for i in dict.fromkeys(int(p) for p in picks)]


def final(args: argparse.Namespace, tmp: Path) -> list[dict[str, object]]:
    """The ``--final`` table: see the module doc."""
    old, new = str(Path(args.baseline_src).resolve()), str(ROOT)
    rows: list[dict[str, object]] = []
    for proto in FINAL_PROTOCOLS:
        if proto.model == "resnet50":
            from tools.resnet50 import resnet50

            path = tmp / "resnet50.onnx"
            import onnx

            onnx.save(resnet50(seed=0), path)
        else:
            path = ROOT / proto.model
        name, samples, ratios = proto.name, proto.samples, proto.ratios
        calib, _ = calibration(path, samples, tmp)
        row: dict[str, object] = {"model": name, "samples": samples, "ratios": list(ratios), "pairs": proto.pairs}
        subset = None if proto.old_groups is None else _subset(path, proto.old_groups)
        # (label, what, groups, trees): a like-for-like old/new pair, or the new tree alone on the whole protocol
        plan: list[tuple[str, str, list[int] | None, tuple[str, ...]]] = []
        plan.append(("sensitivity", "sensitivity", subset, ("old", "new")))
        if subset is not None:
            row["old_groups"] = subset
            plan.append(("sensitivity_all", "sensitivity", None, ("new",)))
        if proto.budget:
            plan.append(("budget", "budget", None, ("old", "new") if subset is None else ("new",)))
        runs: dict[tuple[str, str], list[dict]] = {}
        for _ in range(proto.pairs):
            for label, what, groups, trees in plan:
                for tree in trees:
                    r = _fresh(old if tree == "old" else new, str(path), calib, samples, ratios, what, groups)
                    runs.setdefault((tree, label), []).append(r)
                    print(f"  {name} {label} {tree}: {r['s']:.1f} s (load {os.getloadavg()[0]:.1f})", flush=True)
        for label, _, _, trees in plan:
            for tree in trees:
                row[f"{label}_{tree}_s"] = [round(r["s"], 1) for r in runs[(tree, label)]]
            if len(trees) == 2:
                row[f"{label}_speedup"] = round(sum(r["s"] for r in runs[("old", label)])
                                                / sum(r["s"] for r in runs[("new", label)]), 2)
        if proto.budget and subset is None:
            row["same_allocation"] = all(r["ratios"] == runs[("old", "budget")][0]["ratios"]
                                         for r in runs[("new", "budget")] + runs[("old", "budget")])
        s_new, s_old = runs[("new", "sensitivity")][0]["scores"], runs[("old", "sensitivity")][0]["scores"]
        if proto.reference:
            ref = _fresh(new, str(path), calib, samples, ratios, "model")
            row["reference_model_s"] = round(ref["s"], 1)
            groups = sorted(ref["scores"], key=int)
            row["groups"] = len(groups)
            s_ref = ref["scores"]
            for a, b, key in ((s_new, s_ref, "new_vs_model"), (s_old, s_ref, "old_vs_model"),
                              (s_new, s_old, "new_vs_old")):
                row[f"spearman_{key}"] = round(spearman([a[g] for g in groups], [b[g] for g in groups]), 4)
        else:
            row["groups"] = len(runs[("new", "sensitivity_all" if subset else "sensitivity")][0]["scores"])
        rows.append(row)
        print(json.dumps(row), flush=True)
    (top_old, sha_old), (top_new, sha_new) = _digits_top1(old, tmp), _digits_top1(new, tmp)
    digits = {"model": "digits_cnn prune --target-macs 0.5", "top1_old": top_old, "top1_new": top_new,
              "same_file": sha_old == sha_new}
    rows.append(digits)
    print(json.dumps(digits), flush=True)
    print()
    print("| model | protocol | sensitivity old / new (s) | speedup | budget old / new (s) | speedup | Spearman new vs "
          "model / old vs model / new vs old |")
    print("|---|---|---|---:|---|---:|---|")
    for row in rows[:-1]:
        sub = f" (old main on groups {row['old_groups']} only)" if "old_groups" in row else ""
        budget_cells = (f"{row['budget_old_s']} / {row['budget_new_s']} | {row['budget_speedup']}x"
                        if "budget_old_s" in row else
                        f"- / {row['budget_new_s']} | -" if "budget_new_s" in row else "- | -")
        sens = (f"{row['sensitivity_old_s']} / {row['sensitivity_new_s']}{sub}"
                + (f"; all {row['groups']} groups: new {row['sensitivity_all_new_s']}"
                   if "sensitivity_all_new_s" in row else ""))
        rho = (f"{row['spearman_new_vs_model']} / {row['spearman_old_vs_model']} / {row['spearman_new_vs_old']}"
               if "spearman_new_vs_model" in row else "not measured")
        print(f"| {row['model']} | {row['samples']} samples, ratios {row['ratios']} | {sens} | "
              f"{row['sensitivity_speedup']}x | {budget_cells} | {rho} |")
    print(f"digits_cnn --target-macs 0.5 top-1 after: old {digits['top1_old']:.2%}, new {digits['top1_new']:.2%}, "
          f"same file: {digits['same_file']}")
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    p.add_argument("--samples", type=int, default=256)
    p.add_argument("--recover", default="none", choices=("none", "bias", "lstsq"))
    p.add_argument("--ratios", type=lambda t: tuple(float(x) for x in t.split(",")), default=DEFAULT_RATIOS,
                   help="sensitivity ratios (default: the 7 default ones)")
    p.add_argument("--anchor-samples", type=lambda t: [None if x == "all" else int(x) for x in t.split(",")],
                   default=[DEFAULT_ANCHOR_SAMPLES], metavar="N,N",
                   help="samples of the gram path's anchors, each timed ('all': every sample; the first is the "
                        f"headline row; default {DEFAULT_ANCHOR_SAMPLES})")
    p.add_argument("--budget", action="store_true", help="also time --target-macs budgets both ways")
    p.add_argument("--target-macs", type=float, default=0.5)
    p.add_argument("--json", help="write the rows here")
    p.add_argument("--baseline-src", help="folder holding an older onnxprune package to time as today's path")
    p.add_argument("--scaling", type=lambda t: [int(x) for x in t.split(",")], default=[],
                   metavar="W,W", help="also time the whole-model path on W workers (results must match)")
    p.add_argument("--executors", type=lambda t: [x for x in t.split(",") if x], default=["processes", "ray"],
                   metavar="E,E", help="executors --scaling times (default processes,ray)")
    p.add_argument("--ray-cpus", type=int, help="CPUs of the local Ray cluster (default: the largest --scaling)")
    p.add_argument("--ray-address", help="time on the Ray cluster at this address instead of a local one")
    p.add_argument("--scaling-only", action="store_true", help="time only the whole-model path and --scaling")
    p.add_argument("--final", action="store_true",
                   help="the issue's table (RegNetX-400MF and ResNet-50, old vs new alternating, Spearman; needs "
                        "--baseline-src): see the module doc")
    args = p.parse_args()
    if args.final and not args.baseline_src:
        p.error("--final needs --baseline-src DIR (old main's tree: git archive 33d7b19 | tar -x -C DIR)")
    import onnx
    import onnxruntime

    machine = (f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
               f"onnx {onnx.__version__}, onnxruntime {onnxruntime.__version__}")
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {machine}")
    print("command: .venv/bin/python tools/bench_sensitivity.py " + " ".join(sys.argv[1:]))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.final:
            start = time.perf_counter()
            rows = final(args, Path(tmp))
            print(f"--final took {time.perf_counter() - start:.0f} s")
        for model in [] if args.final else args.models:
            row = bench_model(Path(model), args, Path(tmp))
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
