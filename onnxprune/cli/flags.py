"""How the CLI spells each option, its help defaults, and old spellings kept for one version.

Why here: ``PruneConfig`` names its parameters (``ratio``); the CLI names flags (``--ratio``). Messages raised
while the CLI runs are spelled with :data:`PRUNE_FLAGS` (see :func:`onnxprune.config_rules.option_spelling`),
and every default shown in ``--help`` is read from ``PruneConfig`` itself, so help and behaviour cannot drift.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from typing import Any

from onnxprune.config import PruneConfig

#: ``PruneConfig`` parameter -> ``onnxprune prune`` flag.
PRUNE_FLAGS: dict[str, str] = {
    "mode": "--mode", "sparsity": "--sparsity", "scope": "--scope", "layer_sparsity": "--layer-sparsity",
    "min_size": "--min-size", "nm": "--nm", "sparse_storage": "--sparse-storage", "ratio": "--ratio",
    "global_rank": "--scope global", "round_to": "--round-to", "min_channels": "--min-channels",
    "grouped_conv": "--grouped-conv", "remove_blocks": "--remove-blocks",
    "importance": "--importance", "seed": "--seed", "plan_in": "--plan-in", "plan_out": "--plan-out",
    "exclude": "--exclude", "calib": "--calib", "recover": "--recover", "target_macs": "--target-macs",
    "target_params": "--target-params", "max_error": "--max-error", "eval_data": "--eval-data",
    "labels": "--labels", "validate": "--no-validate", "atol": "--atol", "rtol": "--rtol", "dims": "--dim",
    "providers": "--providers", "validation_data": "--data", "bench": "--bench", "bench_batches": "--batches",
    "bench_runs": "--runs", "bench_warmup": "--warmup", "threads": "--threads",
    "external_data": "--external-data", "allow_slower": "--allow-slower",
    "target_speedup": "--target-speedup", "target_latency": "--target-latency", "latency_cache": "--no-cache",
    "latency_budget": "--latency-budget",
    "sensitivity_method": "--exact-sensitivity", "executor": "--executor",
    "workers": "--workers", "ray_address": "--ray-address", "sequential": "--sequential",
    "untie_embeddings": "--untie-embeddings",
    "keep_tokens": "--keep-tokens", "unknown_token": "--unknown-token",
    "anchor_samples": "--anchor-samples",
}

#: Where parsed arguments keep the deprecation notes of old spellings, for ``main`` to log.
DEPRECATED_DEST = "_deprecated_spellings"


def default_of(param: str) -> Any:
    """The default of ``PruneConfig.param``, as shown in ``--help``."""
    f = next(f for f in dataclasses.fields(PruneConfig) if f.name == param)
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


class _OldSpelling(argparse.Action):
    """An old flag that still works for one version: it stores like the new one and leaves a deprecation note."""

    def __init__(self, option_strings: Sequence[str], dest: str, *, new: str, const: Any = None,
                 **kwargs: Any) -> None:
        self.new = new
        super().__init__(option_strings, dest, const=const, default=argparse.SUPPRESS, help=argparse.SUPPRESS,
                         **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        notes = list(getattr(namespace, DEPRECATED_DEST, []))
        note = (f"{option_string} is deprecated and will be removed in the next version; "
                f"use {self.new}")
        if note not in notes:
            notes.append(note)
        setattr(namespace, DEPRECATED_DEST, notes)
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)


def add_old_spelling(p: argparse.ArgumentParser | Any, old: str, *, new: str, dest: str, const: Any = None,
                     flag: bool = False, **kwargs: Any) -> None:
    """Keep ``old`` working as ``new`` (hidden from ``--help``), with a deprecation warning when used.

    Args:
        p: the parser (or argument group).
        old: the old flag, e.g. ``--global``.
        new: what to use instead, as the warning says it, e.g. ``--scope global``.
        dest: the destination the new flag stores to.
        const: the value a flag (``flag=True``) stores.
        flag: the old spelling takes no value.
        kwargs: ``type`` and the like, as the new flag has them.
    """
    if flag:
        kwargs["nargs"] = 0
    p.add_argument(old, dest=dest, action=_OldSpelling, new=new, const=const, **kwargs)
