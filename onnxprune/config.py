"""``PruneConfig``: every option of a prune run, shared by the Python API and the CLI.

One dataclass, validated in one place when it is made (``__post_init__``), so the CLI and ``onnxprune.prune``
can never disagree on a default or on what is allowed, and a mistake is reported where it is made. Which
option applies to which mode lives in :mod:`onnxprune.config_rules`.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from onnxprune.config_rules import (
    MODES,
    check_applicable,
    check_importance,
    check_sequential,
    coerce,
    opt,
    resolve_mode,
    setting,
)
from onnxprune.core.errors import ConfigError
from onnxprune.core.ir import matches_any  # noqa: F401 - re-exported: options select layers with it
from onnxprune.sparse.sparsify import parse_nm

SCOPES = ("layer", "global")
RECOVERY = ("none", "bias", "lstsq")


def parse_assignments(items: list[str] | tuple[str, ...], *, option: str, kind: type = float) -> dict[str, object]:
    """Parse ``['conv1*=0.3', 'batch=8']`` into a dict; ConfigError names the bad item and the form."""
    out: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            example = "batch=8" if kind is int else "conv1*=0.3"
            raise ConfigError(f"{option} '{item}' is not of the form NAME=VALUE (e.g. {option} '{example}')")
        try:
            out[key.strip()] = kind(value.strip())
        except ValueError as exc:
            raise ConfigError(f"{option} '{item}': '{value}' is not a valid {kind.__name__}") from exc
    return out


def parse_dims(items: Sequence[str] | None) -> dict[str, int]:
    """Parse ``["batch=8", "seq=128"]`` (the CLI's repeated ``--dim``) into ``{"batch": 8, "seq": 128}``.

    A key is a dim name (every axis of that name) or ``INPUT:AXIS`` with the axis' index or name
    (``x:2=320``, ``input_ids:sequence=16``), which addresses unnamed, ``-1`` and ``?`` dims; keys are matched
    against the model by :func:`onnxprune.core.ir.lookup_dim`.

    Raises:
        ConfigError: an item not of the form ``name=value``, or a value that is not a positive integer.
    """
    dims = parse_assignments(list(items or ()), option="--dim", kind=int)
    for name, value in dims.items():
        if value < 1:  # type: ignore[operator]
            raise ConfigError(f"--dim {name}={value}: the value must be a positive integer, e.g. --dim {name}=8")
    return {k: int(v) for k, v in dims.items()}  # type: ignore[call-overload]


def _unit(name: str, value: float | None, *, closed_top: bool = False, open_bottom: bool = False) -> None:
    """Refuse ``value`` outside [0, 1) (or the bounds asked); ``name`` is already spelled for the caller."""
    if value is None:
        return
    ok = math.isfinite(value) and (value > 0 if open_bottom else value >= 0) and (
        value <= 1 if closed_top else value < 1)
    if not ok:
        lo = "(0" if open_bottom else "[0"
        hi = "1]" if closed_top else "1)"
        raise ConfigError(f"{name} must be in {lo}, {hi}, got {value}")


#: Benchmark defaults, the same for ``prune --bench`` and ``onnxprune bench`` (one idea, one default).
BENCH_RUNS = 50
BENCH_WARMUP = 5


@dataclass(frozen=True, kw_only=True)
class PruneConfig:
    """All settings of one prune run. Defaults are the CLI's defaults; every option is keyword-only.

    Attributes are grouped as in ``onnxprune prune --help``: mode, unstructured/N:M, structured, data and
    recovery, budgets, validation, benchmark, output. The config is checked when it is made: a value of the
    wrong type or out of range, an unknown criterion, or an option the chosen mode would ignore raises
    :class:`ConfigError` naming the parameter. Without ``mode``, options only one mode reads select it
    (``PruneConfig(sparsity=0.9)`` is unstructured; :attr:`notes` says so and :func:`onnxprune.prune` logs it).
    ``scope`` ranks per layer/group or under one global threshold in both structured and unstructured mode
    (``global_rank=True`` is the same as ``scope="global"``). Derive configs with :meth:`with_`, which keeps
    track of what was set (``dataclasses.replace`` marks every option as set).

    Example:
        >>> PruneConfig(mode="unstructured", sparsity=0.7).sparsity
        0.7
    """

    mode: str = "structured"
    # unstructured / N:M
    sparsity: float = 0.5
    scope: str = "layer"
    layer_sparsity: dict[str, float] = field(default_factory=dict)
    min_size: int = 0
    nm: str = "2:4"
    sparse_storage: bool = False
    # structured
    ratio: float = 0.3
    global_rank: bool = False
    round_to: int | str | None = "auto"  # "auto": widths chosen by measured latency (onnxprune/speed.py)
    min_channels: int = 1
    importance: str = "l2"
    grouped_conv: str = "within"  # grouped convs: "within" every group (group kept) or "whole" groups
    remove_blocks: int = 0  # residual blocks (y = x + f(x)) removed first, lowest score first (structured.depth)
    seed: int = 0
    plan_in: str | None = None
    plan_out: str | None = None
    # both
    exclude: tuple[str, ...] = ()
    # data-aware pruning and recovery
    calib: str | None = None
    recover: str | None = None  # None: "bias" when calib is given, else "none"
    sequential: bool = False  # sparse modes: each layer's statistics from the model already pruned before it
    untie_embeddings: bool = False  # width: keep a tied LM head's own (untied) weight, the table stored twice
    keep_tokens: str | None = None  # LM vocabulary kept: a file of token ids, or "calib" (recovery/vocabulary.py)
    unknown_token: int | None = None  # with keep_tokens: the id the others are read as (default: smallest kept)
    target_macs: float | None = None
    target_params: float | None = None
    max_error: float | None = None
    target_speedup: float | None = None  # budget by measured latency (onnxprune/speed.py), on the first
    target_latency: float | None = None  # bench batch: a speedup, or a latency in ms
    sensitivity_method: str = "gram"  # how budgets measure candidates: gram (fast) or model (reference)
    executor: str = "local"  # where whole-model candidate runs go: local, processes or ray
    workers: int | None = None
    ray_address: str | None = None
    anchor_samples: int | None = 64  # budgets' Gram anchors: samples each runs on (None: all); sensitivity's default
    eval_data: str | None = None
    labels: str = "labels"
    # validation
    validate: bool = True
    atol: float = 1e-4
    rtol: float = 1e-4  # exactness: of each output's max|original| (rounding seen on real exports: ~1e-5)
    dims: dict[str, int] = field(default_factory=dict)
    providers: tuple[str, ...] = ("cpu",)
    validation_data: str | None = None
    # benchmark
    bench: bool | None = None  # None: on for structured prunes of small models (speed.AUTO_BENCH_MACS)
    bench_batches: tuple[int, ...] = (1, 8)
    bench_runs: int = BENCH_RUNS
    bench_warmup: int = BENCH_WARMUP
    threads: int | None = None
    allow_slower: bool = False  # keep a result the benchmark finds slower than the original
    latency_cache: bool = True  # read and write measured layer latency in the user cache folder
    latency_budget: float = 2.0  # seconds of layer timing per prune for --round-to auto (cached results are free)
    # output
    external_data: bool | None = None

    def __new__(cls, *args: Any, **kwargs: Any) -> PruneConfig:
        """Record which options the caller set (a default and an explicit value can mean different things)."""
        if args:
            raise ConfigError(f"PruneConfig takes keyword arguments only, e.g. PruneConfig(ratio=0.3); "
                              f"got {len(args)} positional")
        unknown = sorted(set(kwargs) - set(_FIELDS))
        if unknown:
            close = difflib.get_close_matches(unknown[0], _FIELDS, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(f"PruneConfig has no option {unknown[0]!r}; {hint}the options are {', '.join(_FIELDS)}")
        self = super().__new__(cls)
        object.__setattr__(self, "_given", tuple(k for k in _FIELDS if k in kwargs))
        return self

    def __post_init__(self) -> None:
        given = getattr(self, "_given", ())
        for f in fields(self):
            object.__setattr__(self, f.name, coerce(f.name, str(f.type), getattr(self, f.name)))
        self.validate_options()  # ranges first: a value out of range is the first thing to say
        mode_before = self.mode
        mode, note = resolve_mode(given, self.mode)
        object.__setattr__(self, "mode", mode)
        object.__setattr__(self, "_notes", (note,) if note else ())
        if self.global_rank and "scope" in given and self.scope != "global":
            raise ConfigError(f"{opt('global_rank')} and {setting('scope', self.scope)} contradict each other; "
                              f"use {setting('scope', 'global')}")
        if mode in ("structured", "depth"):  # one idea, one option: global_rank is scope="global" in structured mode
            scope = "global" if self.global_rank else self.scope
            object.__setattr__(self, "scope", scope)
            object.__setattr__(self, "global_rank", scope == "global")
        if mode != mode_before:
            self.validate_options()  # again for the mode inferred (N:M pattern, recovery without data)
        check_applicable(given, {f.name: getattr(self, f.name) for f in fields(self)})
        if not self.plan_in:
            from onnxprune.recovery.data_criteria import DATA_CRITERIA, GROUP_ONLY_CRITERIA
            from onnxprune.structured.importance import available_criteria

            data = DATA_CRITERIA if mode in ("structured", "depth") else tuple(c for c in DATA_CRITERIA
                                                                    if c not in GROUP_ONLY_CRITERIA)
            check_importance(self.importance, mode, has_calib=bool(self.calib),
                             weight_criteria=available_criteria(), data_criteria=data)
            check_sequential({f.name: getattr(self, f.name) for f in fields(self)})

    @property
    def given(self) -> frozenset[str]:
        """The options the caller set explicitly (by keyword), whatever their value."""
        return frozenset(getattr(self, "_given", ()))

    @property
    def notes(self) -> tuple[str, ...]:
        """What was inferred from the options given (e.g. the mode); :func:`onnxprune.prune` logs these."""
        return tuple(getattr(self, "_notes", ()))

    @property
    def recovery(self) -> str:
        """The recovery method actually used (``bias`` by default when calibration data is given)."""
        if self.recover is not None:
            return self.recover
        return "bias" if self.calib else "none"

    def with_(self, **changes: Any) -> PruneConfig:
        """A copy with some options changed; the options set in ``self`` stay set, ``changes`` are set too."""
        kept = {k: getattr(self, k) for k in self.given if k not in changes}
        if self.global_rank and "global_rank" in kept and "scope" in changes:
            del kept["global_rank"]
        return PruneConfig(**kept, **changes)

    def validate_options(self) -> PruneConfig:
        """Check every option's range; returns ``self`` so calls chain (construction already calls it).

        Raises:
            ConfigError: naming the option, the allowed range and the value given.
        """
        if self.mode not in MODES:
            raise ConfigError(f"{opt('mode')} must be one of {', '.join(MODES)}, got '{self.mode}'")
        if self.scope not in SCOPES:
            raise ConfigError(f"{opt('scope')} must be layer or global, got '{self.scope}'")
        _unit(opt("sparsity"), self.sparsity)
        _unit(opt("ratio"), self.ratio)
        for pattern, value in self.layer_sparsity.items():
            _unit(f"{opt('layer_sparsity')} '{pattern}'", float(value))
        if self.mode == "nm":
            parse_nm(self.nm)
        if self.min_size < 0:
            raise ConfigError(f"{opt('min_size')} must be >= 0, got {self.min_size}")
        if self.round_to is not None and self.round_to != "auto" and (
                isinstance(self.round_to, bool) or not isinstance(self.round_to, int) or self.round_to < 1):
            raise ConfigError(f"{opt('round_to')} must be auto or an integer >= 1, got {self.round_to!r}")
        if self.min_channels < 1:
            raise ConfigError(f"{opt('min_channels')} must be >= 1, got {self.min_channels}")
        if not isinstance(self.remove_blocks, int) or self.remove_blocks < 0:
            raise ConfigError(f"{opt('remove_blocks')} must be an integer >= 0, got {self.remove_blocks!r}")
        if self.grouped_conv not in ("within", "whole"):
            raise ConfigError(f"{opt('grouped_conv')} must be within or whole, got '{self.grouped_conv}'")
        if self.recover is not None and self.recover not in RECOVERY:
            raise ConfigError(f"{opt('recover')} must be one of {', '.join(RECOVERY)}, got '{self.recover}'")
        if self.recover in ("bias", "lstsq") and not self.calib and not (
                self.recover == "bias" and self.mode in ("structured", "depth")):
            raise ConfigError(f"{setting('recover', self.recover)} needs calibration data; "
                              f"pass {opt('calib')} data.npz")
        _unit(opt("target_macs"), self.target_macs, closed_top=True, open_bottom=True)
        _unit(opt("target_params"), self.target_params, closed_top=True, open_bottom=True)
        _check_latency_targets(self)
        if self.max_error is not None and not (math.isfinite(self.max_error) and self.max_error > 0):
            raise ConfigError(f"{opt('max_error')} must be > 0, got {self.max_error}")
        if self.sensitivity_method not in ("gram", "model"):
            raise ConfigError(f"{opt('sensitivity_method')} must be gram or model, got '{self.sensitivity_method}'")
        if self.executor not in ("local", "processes", "ray"):
            raise ConfigError(f"{opt('executor')} must be local, processes or ray, got '{self.executor}'")
        if self.executor == "ray":  # fail before any work when Ray is missing
            from onnxprune.recovery.ray_executor import import_ray

            import_ray()
        if self.anchor_samples is not None and (isinstance(self.anchor_samples, bool)
                                                or not isinstance(self.anchor_samples, int) or self.anchor_samples < 1):
            raise ConfigError(f"{opt('anchor_samples')} must be a positive number of samples or all (None), "
                              f"got {self.anchor_samples!r}")
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"{opt('workers')} must be >= 1, got {self.workers}")
        if not (math.isfinite(self.atol) and self.atol >= 0 and math.isfinite(self.rtol) and self.rtol >= 0):
            raise ConfigError(f"{opt('atol')} and {opt('rtol')} must be >= 0, got {self.atol} and {self.rtol}")
        for name, value in self.dims.items():
            if int(value) < 1:
                raise ConfigError(f"{opt('dims')} {name}={value}: dimensions must be >= 1")
        for b in self.bench_batches:
            if b < 1:
                raise ConfigError(f"{opt('bench_batches')} must be >= 1, got {b}")
        if self.bench_runs < 1 or self.bench_warmup < 0:
            raise ConfigError(f"{opt('bench_runs')} must be >= 1 and {opt('bench_warmup')} >= 0, got "
                              f"{self.bench_runs}, {self.bench_warmup}")
        if not (math.isfinite(self.latency_budget) and self.latency_budget >= 0):
            raise ConfigError(f"{opt('latency_budget')} must be >= 0 seconds, got {self.latency_budget}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"{opt('threads')} must be >= 1, got {self.threads}")
        if self.keep_tokens == "calib" and not self.calib:
            raise ConfigError(f"{setting('keep_tokens', 'calib')} keeps the calibration data's token ids; pass "
                              f"{opt('calib')} data.npz")
        if self.keep_tokens not in (None, "calib") and not Path(self.keep_tokens).is_file():
            raise ConfigError(f"{opt('keep_tokens')}: no file {self.keep_tokens}; give a file of token ids (text, "
                              f".npy or .npz) or calib")
        for pattern in self.exclude:
            if not pattern:
                raise ConfigError(f"{opt('exclude')} needs a non-empty pattern, e.g. {setting('exclude', 'conv1*')}")
        return self


def _check_latency_targets(config: PruneConfig) -> None:
    """A latency budget is one target, > 0 (a speedup >= 1), and no MAC or parameter budget beside it."""
    speedup, latency = config.target_speedup, config.target_latency
    if speedup is not None and not (math.isfinite(speedup) and speedup >= 1):
        raise ConfigError(f"{opt('target_speedup')} must be >= 1, got {speedup}")
    if latency is not None and not (math.isfinite(latency) and latency > 0):
        raise ConfigError(f"{opt('target_latency')} must be > 0 (milliseconds), got {latency}")
    given = [n for n in ("target_speedup", "target_latency", "target_macs", "target_params")
             if getattr(config, n) is not None]
    if len(given) > 1 and any(n in given for n in ("target_speedup", "target_latency")):
        raise ConfigError(f"{opt(given[0])} and {opt(given[1])} cannot be used together; choose one budget")


#: The option names, in declaration order.
_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(PruneConfig))


def as_config(config: PruneConfig | Mapping[str, Any] | None) -> PruneConfig:
    """``config`` as a :class:`PruneConfig`: ``None`` is the defaults, a mapping its keyword arguments.

    Raises:
        ConfigError: anything else, or a mapping with an unknown key or a bad value.
    """
    if config is None:
        return PruneConfig()
    if isinstance(config, PruneConfig):
        return config
    if isinstance(config, Mapping):
        return PruneConfig(**{str(k): v for k, v in config.items()})
    raise ConfigError(f"config must be a PruneConfig or a dict of its options, got {type(config).__name__}")
