"""Which :class:`~onnxprune.config.PruneConfig` option applies to which mode, and how messages name options.

Why a table: an option the chosen mode does not read used to be dropped without a word (``--mode unstructured
--ratio 0.9`` ran at sparsity 0.5, ``--plan-in P --ratio 0.5`` ignored the ratio). Each option now says which
modes read it and what else it needs; an option set where it does not apply is an error naming it, and the one
safe inference (an option that only one mode reads, with no ``mode`` given, selects that mode) is applied and
said.

Why a spelling switch: the same check serves the API, whose messages must name the parameter (``ratio``), and
the CLI, whose messages must name the flag (``--ratio``). The CLI runs under :func:`option_spelling` with its
flag table; everything else gets parameter names.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
import numbers
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from onnxprune.core.errors import ConfigError

log = logging.getLogger(__name__)

MODES = ("structured", "unstructured", "nm", "width", "depth")

#: The modes that read each mode-specific option (options not listed apply to every mode).
MODES_OF: dict[str, tuple[str, ...]] = {
    "sparsity": ("unstructured",),
    "layer_sparsity": ("unstructured",),
    "scope": ("structured", "unstructured", "depth"),
    "min_size": ("unstructured", "nm"),
    "nm": ("nm",),
    "sparse_storage": ("unstructured", "nm"),
    "ratio": ("structured", "width", "depth"),
    "global_rank": ("structured", "depth"),
    "round_to": ("structured", "depth"),
    "min_channels": ("structured", "depth"),
    "grouped_conv": ("structured", "depth"),
    "remove_blocks": ("structured", "depth"),
    "plan_in": ("structured",),
    "plan_out": ("structured",),
    "target_macs": ("structured", "depth"),
    "target_params": ("structured",),
    "max_error": ("structured",),
    "target_speedup": ("structured",),
    "target_latency": ("structured",),
    "sensitivity_method": ("structured",),
    "executor": ("structured",),
    "workers": ("structured",),
    "ray_address": ("structured",),
    "anchor_samples": ("structured",),
    "sequential": ("unstructured", "nm"),
    "untie_embeddings": ("width",),
}

#: What to use instead, when an option is set for a mode that does not read it.
_INSTEAD: dict[tuple[str, str], str] = {
    ("ratio", "unstructured"): "sparsity", ("ratio", "nm"): "nm",
    ("sparsity", "structured"): "ratio", ("sparsity", "nm"): "nm",
    ("global_rank", "unstructured"): "scope",
}

#: Options a saved plan decides: with ``plan_in`` they would be ignored.
PLAN_DECIDES = ("ratio", "scope", "global_rank", "round_to", "min_channels", "grouped_conv", "importance",
                "target_macs", "target_params", "max_error", "sensitivity_method", "executor", "workers",
                "ray_address", "anchor_samples", "target_speedup", "target_latency")

#: Options read only when another one is set: option -> (the options, any of which enables it).
NEEDS: dict[str, tuple[str, ...]] = {
    "labels": ("eval_data",),
    "max_error": ("target_macs", "target_params"),
    "sensitivity_method": ("target_macs", "target_params"),
    "executor": ("target_macs", "target_params"),
    "workers": ("target_macs", "target_params"),
    "ray_address": ("target_macs", "target_params"),
    "anchor_samples": ("target_macs", "target_params", "target_speedup", "target_latency"),
    "bench_batches": ("bench",),
    "bench_runs": ("bench",),
    "bench_warmup": ("bench",),
    "sequential": ("calib",),
    "unknown_token": ("keep_tokens",),
}

#: Criteria of the sparse modes that read only the weights (all three mean |w|).
SPARSE_WEIGHT_CRITERIA = ("magnitude", "l1", "l2")
#: Data-aware criteria of the sparse modes only (they update weights, so they have no channel score).
SPARSE_DATA_CRITERIA = ("sparsegpt",)

_SPELLING: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar("onnxprune_spelling",
                                                                                      default=None)


@contextlib.contextmanager
def option_spelling(flags: Mapping[str, str]) -> Iterator[None]:
    """Within this block, messages name options by ``flags`` (parameter -> flag), e.g. ``ratio -> --ratio``."""
    token = _SPELLING.set(flags)
    try:
        yield
    finally:
        _SPELLING.reset(token)


def opt(param: str) -> str:
    """The name of option ``param`` in messages: the parameter for the API, the flag under the CLI."""
    flags = _SPELLING.get()
    return flags.get(param, param) if flags else param


def setting(param: str, value: object) -> str:
    """An option with its value as the user would write it: ``mode='nm'`` (API) or ``--mode nm`` (CLI)."""
    flags = _SPELLING.get()
    if not flags:
        return f"{param}={value!r}"
    if param == "global_rank":
        return opt(param)
    return opt(param) if value is True else f"{opt(param)} {value}"


def _modes_text(modes: Iterable[str]) -> str:
    return " or ".join(setting("mode", m) for m in modes)


# -- types ------------------------------------------------------------------------------------------
def coerce(param: str, annotation: str, value: Any) -> Any:
    """Check ``value`` against the field's annotation (as written in the class); normalize the forms the API
    accepts. Annotations other than those below pass the value through unchanged.

    A single string where a sequence of strings is expected is one item (``exclude="conv1*"`` is one
    pattern, not one per character); ``providers="cpu,cuda"`` is split at commas; paths may be
    ``os.PathLike``.

    Raises:
        ConfigError: naming the option, the expected type and the value given.
    """
    optional = annotation.endswith("| None")
    base = annotation.removesuffix("| None").strip()
    if value is None and optional:
        return None

    def fail(expected: str) -> ConfigError:
        return ConfigError(f"{opt(param)} must be {expected}, got {type(value).__name__} {value!r}")

    if base == "bool":
        if not isinstance(value, bool):
            raise fail("True or False")
        return value
    if base in ("float", "int"):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise fail("a number" if base == "float" else "an integer")
        if base == "int":
            if isinstance(value, numbers.Integral):
                return int(value)
            if not (math.isfinite(float(value)) and float(value).is_integer()):
                raise fail("an integer")
            return int(float(value))
        return float(value)
    if base == "str":
        if optional and isinstance(value, os.PathLike):
            return os.fspath(value)
        if not isinstance(value, str):
            raise fail("a string")
        return value
    if base in ("tuple[str, ...]", "tuple[int, ...]"):
        item = "int" if base.startswith("tuple[int") else "str"
        if isinstance(value, str) and item == "str":
            value = [v.strip() for v in value.split(",") if v.strip()] if param == "providers" else [value]
        elif isinstance(value, numbers.Integral) and item == "int":
            value = [value]
        if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
            raise fail(f"a sequence of {'integers' if item == 'int' else 'strings'}")
        return tuple(coerce(param, item, v) for v in value)
    if base in ("dict[str, float]", "dict[str, int]"):
        if not isinstance(value, Mapping):
            raise fail("a mapping (dict)")
        kind = "int" if base.endswith("int]") else "float"
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise fail("a mapping with string keys")
            out[k] = coerce(param, kind, v)
        return out
    return value  # any other annotation: passed on as given (its own parser checks it)


# -- modes -----------------------------------------------------------------------------------------
def resolve_mode(given: Iterable[str], mode: str) -> tuple[str, str | None]:
    """The mode to run, and a note when it was inferred.

    With ``mode`` given, it is the mode. Without, the options given choose it: each mode-specific option
    narrows the modes that could read them all; if structured (the default) remains it is used, if one
    other mode remains it is used and said, and if none or several remain that is an error naming the options.

    Raises:
        ConfigError: options of different modes together, or options that leave the mode ambiguous.
    """
    given = list(given)
    if "mode" in given:
        return mode, None
    possible = set(MODES)
    chosen_by: list[str] = []
    for param in given:
        modes = MODES_OF.get(param)
        if modes is None:
            continue
        if not possible & set(modes):
            first = next(p for p in chosen_by if not set(MODES_OF[p]) & set(modes))
            raise ConfigError(
                f"{opt(first)} ({_modes_text(MODES_OF[first])}) and {opt(param)} ({_modes_text(modes)}) "
                f"cannot be used together; set {opt('mode')} and keep the options of that mode")
        possible &= set(modes)
        chosen_by.append(param)
    if "structured" in possible:
        return "structured", None
    if len(possible) == 1:
        inferred = next(iter(possible))
        options = ", ".join(opt(p) for p in chosen_by)
        return inferred, f"{options} given without {opt('mode')}: pruning with {setting('mode', inferred)}"
    options = ", ".join(opt(p) for p in chosen_by)
    raise ConfigError(f"{options} applies to {_modes_text(sorted(possible, key=MODES.index))}; "
                      f"set {opt('mode')} to choose")


def check_applicable(given: Iterable[str], values: Mapping[str, Any]) -> None:
    """Refuse options the run would ignore: another mode's, a plan's, or one whose enabling option is unset.

    Raises:
        ConfigError: naming the option, why it does not apply, and what to do.
    """
    given = set(given)
    mode = values["mode"]
    for param in [p for p in MODES_OF if p in given]:
        modes = MODES_OF[param]
        if mode not in modes:
            instead = _INSTEAD.get((param, mode))
            hint = f"; for {setting('mode', mode)} use {opt(instead)}" if instead else ""
            raise ConfigError(f"{opt(param)} does not apply to {setting('mode', mode)} "
                              f"(it is read by {_modes_text(modes)}){hint}")
    if values.get("plan_in"):
        for param in [p for p in PLAN_DECIDES if p in given]:
            raise ConfigError(f"{opt(param)} does not apply with {opt('plan_in')}: the saved plan fixes the "
                              f"channels kept; drop one of the two")
    for param, enablers in NEEDS.items():
        # bench None is "automatic": a structured prune may time (onnxprune/speed.py), the other modes do not
        auto = values.get("bench") is None and mode == "structured"
        if param in given and not any(values.get(e) or (e == "bench" and auto) for e in enablers):
            needed = " or ".join(opt(e) for e in enablers)
            raise ConfigError(f"{opt(param)} applies only with {needed}; add it or drop {opt(param)}")
    if mode == "depth" and bool(values.get("remove_blocks")) == (values.get("target_macs") is not None):
        raise ConfigError(f"{setting('mode', 'depth')} removes whole residual blocks: give {opt('remove_blocks')} N "
                          f"or {opt('target_macs')} F (one of the two)")
    if mode == "width" and not values.get("calib"):
        raise ConfigError(f"{setting('mode', 'width')} is not exact and re-fits the stream's readers on calibration "
                          f"data; pass {opt('calib')} data.npz")
    if values.get("max_error") is not None and not values.get("calib"):
        raise ConfigError(f"{opt('max_error')} is measured on calibration data; pass {opt('calib')}")


def check_importance(name: str, mode: str, *, has_calib: bool, weight_criteria: Iterable[str],
                     data_criteria: Iterable[str]) -> None:
    """Refuse a criterion that does not exist, or does not apply to ``mode``, listing the valid ones.

    Args:
        name: the criterion asked for.
        mode: the resolved mode.
        has_calib: whether calibration data is given (data-aware criteria need it).
        weight_criteria: the registered weight-only criteria of structured mode.
        data_criteria: the data-aware criteria (every mode).

    Raises:
        ConfigError: unknown, not for this mode, or data-aware without calibration data.
    """
    structured = mode in ("structured", "width", "depth")
    data = tuple(data_criteria) + (() if structured else SPARSE_DATA_CRITERIA)
    weights = tuple(c for c in weight_criteria if c not in data) if structured else SPARSE_WEIGHT_CRITERIA
    valid = f"{', '.join(weights)} (weights only) or {', '.join(data)} (with {opt('calib')})"
    if name in SPARSE_DATA_CRITERIA and not has_calib and not structured:
        raise ConfigError(f"{setting('importance', name)} chooses zeros and updates weights from each layer's input "
                          f"on calibration data; pass {opt('calib')} data.npz, or use one of {', '.join(weights)}")
    if name in data:
        if mode == "width":
            raise ConfigError(f"{setting('mode', 'width')} ranks stream channels by weights; "
                              f"choose {', '.join(weights)}")
        if not has_calib:
            raise ConfigError(f"{setting('importance', name)} ranks by activations and needs calibration data; "
                              f"pass {opt('calib')} data.npz, or use one of {', '.join(weights)}")
        return
    if name in weights:
        return
    every = set(weight_criteria) | set(SPARSE_WEIGHT_CRITERIA) | set(data) | set(SPARSE_DATA_CRITERIA)
    if name in every:
        raise ConfigError(f"{setting('importance', name)} does not apply to {setting('mode', mode)}; "
                          f"choose {valid}")
    lower = f" (names are lower-case: did you mean '{name.lower()}'?)" if name.lower() in every else ""
    raise ConfigError(f"unknown {opt('importance')} criterion '{name}'{lower}; for {setting('mode', mode)} "
                      f"choose {valid}")


def check_sequential(values: Mapping[str, Any]) -> None:
    """Refuse ``sequential`` and ``sparsegpt`` where they would mean nothing (or a different thing).

    Both prune each layer to its own exact count, so a global threshold is refused; ``sequential`` re-measures
    statistics, so it needs a criterion or a re-fit that reads them.

    Raises:
        ConfigError: naming the options and the way out.
    """
    if values.get("mode") not in ("unstructured", "nm"):
        return
    global_scope = values.get("mode") == "unstructured" and values.get("scope") == "global"
    if values.get("importance") in SPARSE_DATA_CRITERIA and global_scope:
        raise ConfigError(f"{setting('importance', values['importance'])} prunes each layer to its own exact count; "
                          f"use {setting('scope', 'layer')}")
    if not values.get("sequential"):
        return
    if global_scope:
        raise ConfigError(f"{opt('sequential')} prunes stage by stage, each layer to its own count; "
                          f"use {setting('scope', 'layer')}")
    if values.get("importance") in SPARSE_WEIGHT_CRITERIA and values.get("recover") != "lstsq":
        raise ConfigError(f"{opt('sequential')} re-measures calibration statistics for the data-aware methods; "
                          f"add {setting('importance', 'sparsegpt')} (or wanda, activation, apoz) or "
                          f"{setting('recover', 'lstsq')}")
