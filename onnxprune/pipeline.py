"""``prune()``: the whole prune run, in the one order that never writes a half-made model.

Order: check options and output path → load (a copy) → check data files and providers → measure →
prune (structured, unstructured or N:M) → prove the surgery exact (structured: pruned == original with
dropped channels silenced) → recover accuracy (optional) → check the result (checker, strict shape
inference, onnxruntime) → measure drift, accuracy and speed → only then save atomically. Any failure
before the save leaves no file.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onnx import ModelProto, TensorProto

from onnxprune.config import PruneConfig, as_config
from onnxprune.core.batch_axes import counted_batch
from onnxprune.core.errors import ConfigError, SlowerModelError, ValidationError
from onnxprune.core.io import (
    check_output_path,
    data_files,
    file_size,
    load_model,
    load_structure,
    model_nbytes,
    release_memory,
    save_model,
    write_text_atomic,
)
from onnxprune.core.ir import matches_any
from onnxprune.core.stats import ModelStats, model_stats

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PruneResult:
    """What a prune run produced.

    Attributes:
        model: the pruned model (a new ``ModelProto``).
        report: JSON-able dict (see README, "Reports").
        plan: the structured ``PrunePlan`` (``None`` for unstructured and N:M modes).
        output: where the model was saved, if it was.
    """

    model: ModelProto
    report: dict[str, Any]
    plan: Any = None
    output: Path | None = None
    warnings: tuple[str, ...] = field(default_factory=tuple)

    def save_report(self, path: str | os.PathLike[str]) -> None:
        """Write the JSON report (atomically)."""
        write_text_atomic(Path(path), json.dumps(self.report, indent=2, default=_jsonable) + "\n")


def _jsonable(obj: object) -> object:
    for method in ("to_dict", "as_dict"):
        if hasattr(obj, method):
            return getattr(obj, method)()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def prune(
    source: str | os.PathLike[str] | ModelProto,
    config: PruneConfig | Mapping[str, Any] | None = None,
    *,
    output: str | os.PathLike[str] | None = None,
    timer: Any = None,
) -> PruneResult:
    """Prune a model as ``config`` says, prove the result, and save it if ``output`` is given.

    Args:
        source: a path to an ``.onnx`` file or a ``ModelProto`` (never modified).
        config: all options (default: structured pruning at ratio 0.3 with l2 importance); a dict is taken
            as ``PruneConfig``'s keyword arguments.
        output: where to save the pruned model; nothing is written if any step fails.
        timer: how the original and the result are benchmarked, ``timer(original, pruned, config)`` returning a
            ``BenchReport.to_dict()`` (default: :func:`onnxprune.runtime.bench.benchmark`); for tests and
            custom runtimes.

    Returns:
        A :class:`PruneResult`.

    Raises:
        OnnxPruneError: any user-facing problem, as a typed subclass with a one-line message.

    Example:
        >>> from onnxprune import PruneConfig, prune
        >>> result = prune("models/digits_cnn.onnx", PruneConfig(ratio=0.3), output="cnn-pruned.onnx")  # doctest: +SKIP
    """
    # Scratch files (the structured zeroed reference) live only as long as the run, whatever happens.
    with tempfile.TemporaryDirectory(prefix="onnxprune-run-", ignore_cleanup_errors=True) as scratch:
        return _prune(source, config, output=output, scratch=Path(scratch), timer=timer)


def _prune(source: str | os.PathLike[str] | ModelProto, config: PruneConfig | Mapping[str, Any] | None, *,
           output: str | os.PathLike[str] | None, scratch: Path, timer: Any = None,
           first_try: dict[str, Any] | None = None, budget_ratios: Mapping[int, float] | None = None
           ) -> PruneResult:
    """The body of :func:`prune`; ``scratch`` is an empty temporary folder removed after the run.

    ``first_try``: the speed report of a first attempt found slower (this run is the one retry).
    ``budget_ratios``: that attempt's budget allocation, kept by the retry (see :func:`_run_structured`).
    """
    config = as_config(config).validate_options()
    warnings: list[str] = []
    for note in config.notes:  # e.g. the mode inferred from the options given
        log.warning(note)
        warnings.append(note)
    started = time.perf_counter()
    inputs = (source,) if isinstance(source, (str, os.PathLike)) else ()
    if output is not None:
        check_output_path(output, inputs=inputs)  # refuse before any work
    if config.plan_out:
        check_output_path(config.plan_out, inputs=inputs, stream=True)
    original = load_model(source)
    from onnxprune.preflight import check_run_inputs

    check_run_inputs(original, config)  # every data file, key, shape and provider, before any heavy step
    original, folded = _fold(original, warnings)
    config, dims_assumed = _resolve_dims(original, config, warnings)
    stats_before = model_stats(original, dims=config.dims)
    report: dict[str, Any] = {"mode": config.mode, "settings": _settings(config), "dims_assumed": dims_assumed}
    if folded:
        report["folded_constants"] = folded
    if config.keep_tokens:  # exact on the kept ids and proven there: every later step works on (and is
        from onnxprune.recovery.vocabulary import prune_vocabulary  # proven against) the smaller vocabulary

        original, report["vocab"] = prune_vocabulary(original, config.keep_tokens, unknown=config.unknown_token,
                                                     calib=config.calib, validate=config.validate,
                                                     atol=config.atol, rtol=config.rtol, dims=config.dims)

    plan = None
    from onnxprune.speed import bench_wanted, default_widths

    nbytes = model_nbytes(original)
    config = default_widths(config, nbytes, original)
    bench_on = bench_wanted(config, stats_before.macs, nbytes)
    if config.mode in ("structured", "depth"):  # depth: blocks removed, then channels only at a ratio given
        pruned, exact_reference, plan, extra = _run_structured(original, config, warnings, scratch, bench_on,
                                                               budget_ratios)
    elif config.mode == "width":  # not exact (LayerNorm over fewer channels): drift is measured, not proven
        from onnxprune.recovery.slicegpt import prune_stream_width

        # Unless folding changed it, the source file is this model and what the checks run: our copy is
        # handed over and freed once rotation is known possible, not held (as big as the model) to the end.
        handed, label = [original], f"<{original.graph.name or 'model'}>"
        reread = inputs[0] if inputs and not folded and not config.keep_tokens else None
        if reread is not None:
            original = ModelProto()  # not read again: `baseline` below is the source
        pruned, rotated, width = prune_stream_width(
            handed, ratio=config.ratio, calib=config.calib, refit=config.recovery != "none",
            importance=config.importance if "importance" in config.given else None, dims=config.dims,
            untie=config.untie_embeddings, scratch=scratch)  # the exact rotated model goes there, run from its file
        del handed
        warnings.extend(width.get("untie_notes", []))
        if rotated is not None and config.validate:  # the rewrites before the cut (rotation or not) must be exact
            key = "rotation_check" if width["method"] == "rotate" else "rewrite_check"
            check = _rotation_tolerance(config, rotated) if key == "rotation_check" else config
            width[key] = _compare_exact(original if reread is None else reread, rotated, check,
                                        "rotation exactness" if key == "rotation_check" else "rewrite exactness")
            # the same report whether run from the file or not, and wherever the scratch folder is
            width[key].update(original=label, candidate=label)
        del rotated  # as big as the model: not kept through validation and saving
        exact_reference, extra = None, {"width": width}
    else:
        pruned, exact_reference, extra = _run_sparse(original, config, warnings)
    latency = extra.pop("latency_model", None)
    report.update(extra)
    # One parse of the source file tells both its size on disk and whether its weights live beside it.
    source_data = data_files(inputs[0]) if inputs else []
    report["file_size_before"] = file_size(inputs[0], data=source_data) if inputs else model_nbytes(original)
    # From here on the original is only run (validation, accuracy, speed). Unless folding changed it, the
    # source is the same model: run that (onnxruntime maps a path's weights itself) and drop our copy, so
    # a big model is not held twice while the pruned one runs.
    baseline: str | os.PathLike[str] | ModelProto = original if folded or config.keep_tokens else source
    del original
    release_memory()

    if config.validate:
        report["validation"] = _validate(baseline, pruned, exact_reference, config)

    stats_after = model_stats(pruned, dims=config.dims)
    report.update(_size_report(config, stats_before, stats_after, counted_batch(pruned, config.dims)))
    _check_budget_met(report, config, warnings)

    if config.mode in ("unstructured", "nm") and config.sparse_storage:
        from onnxprune.sparse.storage import to_sparse_storage

        dense = pruned
        pruned = to_sparse_storage(dense)
        if config.validate:
            report["validation"]["sparse_storage"] = _same_outputs(dense, pruned, config)

    if config.eval_data:
        from onnxprune.runtime.evaluate import evaluate_accuracy

        before = evaluate_accuracy(baseline, config.eval_data, labels=config.labels)
        after = evaluate_accuracy(pruned, config.eval_data, labels=config.labels)
        report["accuracy"] = {"before": _jsonable(before), "after": _jsonable(after)}

    if bench_on:
        report["bench"] = dict((timer or _benchmark)(baseline, pruned, config))
        from onnxprune.speed_confirm import confirmed_decision

        decision, confirmation = confirmed_decision(baseline, pruned, report["bench"], config,
                                                    retried=first_try is not None, timer=timer)
        report["speed"] = {"verdicts": [v.to_dict() for v in decision.verdicts], "retried": first_try is not None}
        if confirmation:  # the first verdict said slower: what timing again in alternating order found
            report["speed"]["confirmation"] = confirmation
        if first_try is not None:
            report["speed"]["first_try"] = first_try
        if decision.retry is not None:
            log.warning(decision.message)
            kept = report.get("budget_ratios")
            return _prune(source, decision.retry, output=output, scratch=scratch, timer=timer,
                          first_try=report["speed"],
                          budget_ratios=None if kept is None else {int(g): r for g, r in kept.items()})
        if decision.refuse:
            raise SlowerModelError(str(decision.message))
        from onnxprune.runtime.bench_verdict import slower_warning

        slower = decision.message or slower_warning(report["bench"], round_to=config.round_to, mode=config.mode,
                                                    verdicts=decision.verdicts)
        if slower:
            log.warning(slower)
            warnings.append(slower)
    if latency is not None:
        from onnxprune.speed import keep_counts
        from onnxprune.speed_report import latency_report

        ideal = report["macs_before"] / report["macs_after"] if report.get("macs_after") else None
        report["latency"] = latency_report(latency, keep_counts(plan), report.get("bench"), ideal=ideal,
                                           time_original=not bench_on)

    saved = None
    if output is not None:
        external = config.external_data
        if external is None and source_data:
            external = True
        saved = save_model(pruned, output, external_data=external)
        report["file_size_after"] = file_size(saved)
        if plan is not None and config.plan_out:
            plan.save(config.plan_out)
    else:
        report["file_size_after"] = model_nbytes(pruned)
    report["warnings"] = warnings
    report["seconds"] = round(time.perf_counter() - started, 3)
    return PruneResult(model=pruned, report=report, plan=plan, output=saved, warnings=tuple(warnings))


def _benchmark(baseline: str | os.PathLike[str] | ModelProto, pruned: ModelProto, config: PruneConfig) -> Any:
    """Time the original and the result alternately (``--bench``; by default on small models: fewer runs,
    no memory subprocesses)."""
    from onnxprune.runtime.bench import benchmark
    from onnxprune.speed import AUTO_BENCH_MAX_RUNS, AUTO_BENCH_RUNS, AUTO_BENCH_SECONDS

    auto = config.bench is None
    default_runs = "bench_runs" not in config.given
    return _jsonable(benchmark([baseline, pruned], names=["original", "pruned"], providers=config.providers,
                     batches=config.bench_batches,
                     runs=AUTO_BENCH_RUNS if auto and default_runs else config.bench_runs,
                     warmup=config.bench_warmup, threads=config.threads, dims=config.dims, memory=not auto,
                     min_seconds=AUTO_BENCH_SECONDS if default_runs else 0.0, max_runs=AUTO_BENCH_MAX_RUNS))


def _fold(model: ModelProto, warnings: list[str]) -> tuple[ModelProto, list[str]]:
    """Store run-time-computed weights as initializers (exact); warn about the layers that stay computed."""
    from onnxprune.core.fold import fold_constants
    from onnxprune.runtime.session import run_constant_graph

    result = fold_constants(model, run_constant_graph)
    for item in result.unfolded:
        msg = (f"layer {item.node} is not prunable: its weight '{item.tensor}' is computed at run time "
               f"({item.reason})")
        log.warning(msg)
        warnings.append(msg)
    return result.model, list(result.folded)


def _resolve_dims(model: ModelProto, config: PruneConfig, warnings: list[str]
                  ) -> tuple[PruneConfig, list[dict[str, Any]]]:
    """Give every dynamic input axis a size (``--dim``, data, or chosen and confirmed: runtime/dims.py).

    Returns the config with those sizes as its ``dims`` (so shapes, MACs, checks and benchmarks agree) and
    the report's ``dims_assumed``. Zeroing weights needs no sizes: without validation or benchmark a
    size that cannot be confirmed is kept for the MACs only, and said.
    """
    from onnxprune.runtime.dims import resolve_dims

    res = resolve_dims(model, dims=config.dims, data=(config.validation_data, config.eval_data, config.calib),
                       seed=config.seed, required=config.validate or bool(config.bench))
    for key in res.unused:
        msg = f"--dim {key} names no dynamic axis of the model's inputs; it is ignored"
        log.warning(msg)
        warnings.append(msg)
    if res.confirmed is False:
        msg = "the sizes chosen for dynamic input axes did not run in onnxruntime; MACs rest on them (pass --dim)"
        log.warning(msg)
        warnings.append(msg)
    return config.with_(dims=res.dims), res.report()


def _check_budget_met(report: dict[str, Any], config: PruneConfig, warnings: list[str]) -> None:
    """Say when the written model keeps more than a ``--target-macs``/``--target-params`` budget asked.

    The allocation counts costs at widths rounded by a fixed rule; the widths written may be those the
    latency table found faster, or rounded up by a never-slower retry, and can keep more than asked.
    """
    if config.mode != "structured":
        return
    for key, target in (("macs", config.target_macs), ("params", config.target_params)):
        before = report.get(f"{key}_before") or 0
        if target is None or not before:
            continue
        kept = report[f"{key}_after"] / before
        if kept > target + 0.005:
            name = "--target-" + key
            msg = (f"the model keeps {kept:.1%} of its {'MACs' if key == 'macs' else key}, above {name} "
                   f"{target:g}: widths were rounded up for speed; pass --round-to 1 for the budget's exact widths")
            log.warning(msg)
            warnings.append(msg)


def _settings(config: PruneConfig) -> dict[str, Any]:
    keys = {
        "structured": ("ratio", "importance", "global_rank", "round_to", "min_channels", "seed", "exclude",
                       "plan_in", "target_macs", "target_params", "max_error", "remove_blocks", "target_speedup",
                       "target_latency"),
        "depth": ("remove_blocks", "target_macs", "ratio", "importance", "exclude"),
        "unstructured": ("sparsity", "scope", "layer_sparsity", "min_size", "exclude", "importance", "sequential"),
        "nm": ("nm", "min_size", "exclude", "importance", "sequential"),
        "width": ("ratio", "importance", "untie_embeddings"),
    }[config.mode]
    settings = {k: getattr(config, k) for k in keys}
    if config.mode == "depth" and "ratio" not in config.given:
        settings["ratio"] = 0.0  # depth alone: no channel is cut
    settings["calib"] = config.calib
    settings["recover"] = config.recovery
    if config.keep_tokens:
        settings.update(keep_tokens=config.keep_tokens, unknown_token=config.unknown_token)
    return settings


def _size_report(config: PruneConfig, before: ModelStats, after: ModelStats, macs_batch: int) -> dict[str, Any]:
    nonzero = config.mode not in ("structured", "width", "depth")
    return {
        "params_before": before.nonzero_params if nonzero else before.params,
        "params_after": after.nonzero_params if nonzero else after.params,
        "macs_before": before.macs,
        "macs_after": after.macs,
        "macs_batch": macs_batch,
        "op_histogram_after": after.op_histogram,
    }


# -- modes -----------------------------------------------------------------------------------------
def _warn_unmatched(patterns: list[str] | tuple[str, ...], warnings: list[str], option: str) -> None:
    for pattern in patterns:
        msg = f"{option} '{pattern}' matched no layer; check the name (onnxprune analyze lists them)"
        log.warning(msg)
        warnings.append(msg)


def _run_sparse(original: ModelProto, config: PruneConfig, warnings: list[str]
                ) -> tuple[ModelProto, None, dict[str, Any]]:
    from onnxprune.sparse.sparsify import parse_nm, sparsify, sparsify_nm

    if config.importance == "sparsegpt" or config.sequential:
        return _run_calibrated_sparse(original, config, warnings)
    scores = None
    if config.importance not in ("l1", "l2", "magnitude"):
        scores = _sparse_scores(original, config)
    if config.mode == "unstructured":
        result = sparsify(original, sparsity=config.sparsity, scope=config.scope,
                          layer_sparsity=config.layer_sparsity, exclude=config.exclude,
                          min_size=config.min_size, scores=scores)
    else:
        n, m = parse_nm(config.nm)
        result = sparsify_nm(original, n=n, m=m, exclude=config.exclude, min_size=config.min_size, scores=scores)
    _warn_unmatched(list(result.unmatched_patterns), warnings, "--exclude/--layer-sparsity")
    extra = result.report()
    model = result.model
    if config.recovery in ("lstsq", "bias") and config.calib:  # validate_options() requires calib for both
        from onnxprune.recovery.recover import recover_sparse

        # bias: each sparsified layer's output mean over the calibration data restored by its bias
        model = recover_sparse(original, model, config.calib, method=config.recovery)
        extra["recovery"] = config.recovery
    # The sparse model *is* the original with those entries zeroed: exactness holds by construction and
    # the test suite proves it; validation checks it runs and measures drift.
    return model, None, extra


def _run_calibrated_sparse(original: ModelProto, config: PruneConfig, warnings: list[str]
                           ) -> tuple[ModelProto, None, dict[str, Any]]:
    """SparseGPT and sequential calibration (onnxprune/recovery/sequential.py); weights change, as with lstsq."""
    from onnxprune.recovery.sequential import sparsify_calibrated
    from onnxprune.sparse.sparsify import parse_nm

    assert config.calib is not None  # PruneConfig refuses sparsegpt and sequential without it
    out = sparsify_calibrated(
        original, config.calib, criterion=config.importance, sparsity=config.sparsity,
        nm=parse_nm(config.nm) if config.mode == "nm" else None, scope=config.scope,
        layer_sparsity=config.layer_sparsity, exclude=config.exclude, min_size=config.min_size,
        refit=config.recovery == "lstsq", sequential=config.sequential, provider=config.providers[0])
    _warn_unmatched(list(out.result.unmatched_patterns), warnings, "--exclude/--layer-sparsity")
    extra = out.report()
    if config.recovery == "bias":
        extra["recovery"] = "none"
        extra["recovery_skipped"] = _skip_bias(config, warnings)
    return out.model, None, extra


def _skip_bias(config: PruneConfig, warnings: list[str]) -> str:
    """Why ``--recover bias`` is not applied after SparseGPT or sequential calibration (logged; a warning when
    asked for by name, since the default with ``--calib`` is bias)."""
    if config.importance == "sparsegpt":
        why = ("--recover bias is not applied after --importance sparsegpt: SparseGPT already updates each "
               "layer's remaining weights towards the dense layer's output")
    else:
        why = ("--recover bias is not implemented with --sequential; --recover lstsq re-fits each layer "
               "towards the dense layer's output")
    if "recover" in config.given:
        log.warning(why)
        warnings.append(why)
    else:
        log.info(why)
    return why


def _sparse_scores(original: ModelProto, config: PruneConfig) -> Any:
    if not config.calib:
        raise ConfigError(f"--importance {config.importance} needs calibration data; pass --calib data.npz")
    from onnxprune.recovery.data_criteria import sparse_scores

    return sparse_scores(original, config.calib, criterion=config.importance)


def _run_structured(original: ModelProto, config: PruneConfig, warnings: list[str], scratch: Path,
                    bench_on: bool = False, budget_ratios: Mapping[int, float] | None = None
                    ) -> tuple[ModelProto, ModelProto | Path | _ExactBeforeRecovery | None, Any, dict[str, Any]]:
    from onnxprune.runtime.session import SESSION_FILE_BYTES
    from onnxprune.structured.analysis import analyze
    from onnxprune.structured.oracle import write_zeroed_reference, zeroed_reference
    from onnxprune.structured.plan import PrunePlan
    from onnxprune.structured.prune import prune_structured

    plan_in = PrunePlan.load(config.plan_in) if config.plan_in else None
    depth: dict[str, Any] = {}
    if config.remove_blocks or config.mode == "depth":
        original, depth = _remove_blocks(original, config)
    # A saved plan's groups are those of the grouped-conv mode it was made with.
    grouped_conv = str(plan_in.meta.get("grouped_conv", config.grouped_conv)) if plan_in else config.grouped_conv
    dg = analyze(original, dims=config.dims, grouped_conv=grouped_conv)
    names = [n.name for n in original.graph.node] + [t.name for t in original.graph.initializer]
    _warn_unmatched([p for p in config.exclude if not matches_any(names, (p,))], warnings, "--exclude")
    group_ratios = None
    if (config.target_macs or config.target_params) and config.mode == "structured":  # depth: budgets blocks
        from onnxprune.recovery.budget import allocate_budget

        # A never-slower retry keeps the first attempt's allocation and only rounds its widths up: allocating
        # again at the retry's coarser step can cut a sensitive group twice as deep to meet the budget
        # (digits_cnn: top-1 78.89% -> 16.94%).
        group_ratios = dict(budget_ratios) if budget_ratios is not None else allocate_budget(original, dg, config)
    budget = None if group_ratios is None else dict(group_ratios)
    ratio = 0.0 if group_ratios is not None else config.ratio  # a budget sets every group's ratio itself
    depth_only = config.mode == "depth" and "ratio" not in config.given  # a ratio asks for width pruning too
    ratio = 0.0 if depth_only else ratio
    latency, target = None, None
    targets = config.target_speedup or config.target_latency
    # widths chosen by, predictions from, measured latency (none to choose when only blocks go)
    if (config.round_to == "auto" and not depth_only) or bench_on or targets:
        from onnxprune.speed import latency_model

        latency = latency_model(original, dg, config, calibrate=bool(bench_on or targets))
    statistics = _structured_statistics(original, dg, config)
    if latency is not None and targets and plan_in is None:
        from onnxprune.speed_target import allocate_for_target

        group_ratios, target = allocate_for_target(original, dg, config, latency, statistics=statistics)
        ratio = 0.0
    result = prune_structured(original, ratio=ratio, importance=config.importance,
                              global_rank=config.global_rank, round_to=config.round_to,
                              min_channels=config.min_channels, exclude=config.exclude, seed=config.seed,
                              plan=plan_in, group_ratios=group_ratios, dg=dg, statistics=statistics,
                              width_chooser=None if latency is None or plan_in else latency.choose)
    # The reference is a full copy of the model, needed only to prove exactness (skip it with --no-validate):
    # a big one goes straight to a file, one tensor at a time, from which onnxruntime maps it when it runs
    # (measured on a 0.4 GB model, tools/bench_large.py: validated structured peak 2.96x -> 2.13x its size).
    reference: ModelProto | Path | _ExactBeforeRecovery | None = None
    if config.validate and model_nbytes(original) >= SESSION_FILE_BYTES:
        reference = write_zeroed_reference(original, dg, result.plan, scratch / "zeroed_reference.onnx")
    elif config.validate:
        reference = zeroed_reference(original, dg, result.plan)
    _warn_odd_widths(result.report.get("groups", []), config, warnings)
    for msg in result.plan.warnings():
        log.warning(msg)
        warnings.append(msg)
    model = result.model
    extra = dict(result.report)
    extra["latency_model"] = latency
    if budget is not None:  # the budget's allocation (group id -> ratio): a never-slower retry keeps it
        extra["budget_ratios"] = {str(g): float(r) for g, r in sorted(budget.items())}
    if target is not None:
        extra["latency_target"] = target
    if depth:
        extra["depth"] = depth
    if config.recovery != "none":
        from onnxprune.recovery.recover import recover_structured

        exact = model
        model = recover_structured(original, exact, dg, result.plan, config.calib, method=config.recovery)
        extra["recovery"] = config.recovery
        if isinstance(reference, (ModelProto, Path)):
            reference = _ExactBeforeRecovery(exact, reference)
    return model, reference, result.plan, extra


def _remove_blocks(original: ModelProto, config: PruneConfig) -> tuple[ModelProto, dict[str, Any]]:
    """Remove ``config.remove_blocks`` residual branches (depth mode: or the fewest that meet ``target_macs``),
    proven against their oracle when validating."""
    from onnxprune.structured.depth import (
        choose_branches,
        choose_for_macs,
        depth_reference,
        remove_branches,
        residual_branches,
    )

    branches = residual_branches(original)
    scores = [b.score for b in branches]
    criterion = "norm of the last projection"
    by_macs = config.mode == "depth" and config.target_macs is not None
    if config.calib and branches and (by_macs or 0 < config.remove_blocks <= len(branches)):
        from onnxprune.recovery.block_influence import block_influence

        scores = block_influence(original, branches, config.calib, provider=config.providers[0])
        criterion = "block influence (1 - cosine of the stream before and after, on --calib)"
    if by_macs:
        chosen, _ = choose_for_macs(original, branches, float(config.target_macs or 1.0), scores=scores,
                                    dims=config.dims)
    else:
        chosen = choose_branches(branches, config.remove_blocks, scores=scores)
    model = remove_branches(original, chosen)
    score_of = {b.add: s for b, s in zip(branches, scores, strict=True)}
    report: dict[str, Any] = {"criterion": criterion,
                              "removed_blocks": [{"add": b.add, "last": b.last, "score": score_of[b.add]}
                                                 for b in chosen]}
    if config.validate:
        report["exact"] = _compare_exact(depth_reference(original, chosen), model, config,
                                         "depth (blocks removed == original with their last projections zeroed)")
    log.info("removed %d residual blocks: %s", len(chosen), ", ".join(b.add for b in chosen))
    return model, report


def _warn_odd_widths(groups: list[dict[str, Any]], config: PruneConfig, warnings: list[str]) -> None:
    """Say when pruned widths are not multiples of 8: CPU kernels often run those slower than the original.

    Measured on the digits CNN at ratio 0.3 (README): widths 22/45 ran at 0.64x the original's speed,
    --round-to 8 at 1.09x.
    """
    if config.round_to not in (None, 1):
        return
    odd = sorted({g["size_after"] for g in groups if g["size_after"] != g["size_before"] and g["size_after"] % 8})
    if odd:
        msg = (f"{len(odd)} pruned width(s) are not multiples of 8 (e.g. {', '.join(map(str, odd[:4]))}); "
               f"such widths often run slower on CPU: try --round-to 8 and compare with --bench")
        log.warning(msg)
        warnings.append(msg)


def _structured_statistics(original: ModelProto, dg: Any, config: PruneConfig) -> Any:
    """Calibration statistics for data-aware criteria (``None`` for weight-only criteria)."""
    if config.importance in ("l1", "l2", "fpgm", "bn_scale", "random"):
        return None
    if not config.calib:
        raise ConfigError(f"--importance {config.importance} needs calibration data; pass --calib data.npz")
    from onnxprune.recovery.data_criteria import structured_statistics

    return structured_statistics(original, dg, config.calib)


@dataclass(frozen=True)
class _ExactBeforeRecovery:
    """After recovery the weights change on purpose; exactness is proven on the model before it."""

    pruned: ModelProto
    reference: ModelProto | Path


def _validation_data(config: PruneConfig) -> str | None:
    """Real inputs beat random ones for measuring drift: --data, else --eval-data, else --calib, else seeded."""
    return config.validation_data or config.eval_data or config.calib


# -- proof -----------------------------------------------------------------------------------------
def _compare_exact(a: ModelProto | str | os.PathLike[str], b: ModelProto | str | os.PathLike[str],
                   config: PruneConfig, what: str) -> dict[str, Any]:
    from onnxprune.runtime.validate import validate_models

    # Exact cuts still round: judge each output against its own scale (a detection head's pixel boxes).
    result = validate_models(a, b, data=_validation_data(config), providers=config.providers, atol=config.atol,
                             rtol=config.rtol, dims=config.dims, seed=config.seed, scale="output")
    if not result:
        raise ValidationError(f"{what} check failed: {result.summary()}; no output written. "
                              f"Please report this model (run with --verbose for details)")
    return result.to_dict()


#: Default tolerance of a rotation check on half-precision weights (of each output's max): a rotation
#: rounds every rotated weight to the stored type again, about 8 ulps of float16 (2**-10) after the layers
#: of a small transformer; bfloat16 keeps 3 fewer bits. float32 models keep ``--atol``/``--rtol``'s 1e-4.
_HALF_ROTATION_TOLERANCE = {TensorProto.FLOAT16: 1e-2, TensorProto.BFLOAT16: 8e-2}


def _rotation_tolerance(config: PruneConfig, rotated: ModelProto | str | os.PathLike[str]) -> PruneConfig:
    """``config`` with the rotation check's tolerance widened to the weights' precision, unless the user set
    one: rotating a float16 model is exact in arithmetic, but each rotated weight is rounded once more."""
    if {"atol", "rtol"} & set(config.given):
        return config
    structure = rotated if isinstance(rotated, ModelProto) else load_structure(rotated)
    types = {t.data_type for t in structure.graph.initializer}
    tol = max((v for k, v in _HALF_ROTATION_TOLERANCE.items() if k in types), default=None)
    return config if tol is None else config.with_(atol=max(config.atol, tol), rtol=max(config.rtol, tol))


def _same_outputs(dense: ModelProto, stored: ModelProto, config: PruneConfig) -> dict[str, Any]:
    """Prove the sparse-initializer file computes what the dense model does, in onnxruntime.

    ``validate_models`` cannot be used: onnx's full checker types a sparse initializer read by Conv or
    MatMul as a sparse tensor and refuses it, while onnxruntime densifies it at load and runs it.
    """
    from onnxprune.runtime.feeds import random_feeds
    from onnxprune.runtime.session import create_session, run_session
    from onnxprune.runtime.validate import compare_outputs

    feeds = random_feeds(dense, seed=config.seed, dims=config.dims)
    outputs = []
    for model in (dense, stored):
        outputs.append(run_session(create_session(model, provider=config.providers[0]), feeds))
    # Bit-identical weights must give bit-identical outputs on one provider: zero tolerance.
    result = compare_outputs(outputs[0], outputs[1], atol=0.0, rtol=0.0)
    if not result:
        raise ValidationError(f"sparse storage changed the outputs ({result.summary()}); no output written. "
                              f"Drop --sparse-storage and report this model")
    return result.to_dict()


def _validate(original: str | os.PathLike[str] | ModelProto, pruned: ModelProto, reference: Any,
              config: PruneConfig) -> dict[str, Any]:
    """Prove exactness where it must hold, then measure drift against the original (report only)."""
    from onnxprune.runtime.validate import validate_models

    out: dict[str, Any] = {}
    if reference is not None:
        before_recovery = isinstance(reference, _ExactBeforeRecovery)
        ref, cand = (reference.reference, reference.pruned) if before_recovery else (reference, pruned)
        out["exact"] = _compare_exact(ref, cand, config,
                                      "exactness (pruned == original with dropped channels silenced)")
        # Name the models by role: the reference may live in a scratch file deleted after the run, and a
        # report must not change from run to run.
        out["exact"]["original"] = "original with dropped channels silenced (oracle)"
        out["exact"]["candidate"] = "pruned, before recovery" if before_recovery else "pruned"
    drift = validate_models(original, pruned, data=_validation_data(config), providers=config.providers,
                            atol=config.atol, rtol=config.rtol, dims=config.dims, seed=config.seed,
                            report_only=True)
    out["drift"] = drift.to_dict()
    return out
