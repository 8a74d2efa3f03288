"""``PruneConfig``: every option of a prune run, shared by the Python API and the CLI.

One dataclass, validated in one place (:meth:`PruneConfig.validate_options`), so the CLI and ``onnxprune.prune``
can never disagree on a default or on what is allowed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from onnxprune.core.errors import ConfigError
from onnxprune.core.ir import matches_any  # noqa: F401 - re-exported: options select layers with it
from onnxprune.sparse.sparsify import parse_nm

MODES = ("structured", "unstructured", "nm")
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

    Raises:
        ConfigError: an item not of the form ``name=value``, or a value that is not a positive integer.
    """
    dims = parse_assignments(list(items or ()), option="--dim", kind=int)
    for name, value in dims.items():
        if value < 1:  # type: ignore[operator]
            raise ConfigError(f"--dim {name}={value}: the value must be a positive integer, e.g. --dim {name}=8")
    return {k: int(v) for k, v in dims.items()}  # type: ignore[call-overload]


def _unit(name: str, value: float | None, *, closed_top: bool = False, open_bottom: bool = False) -> None:
    if value is None:
        return
    ok = math.isfinite(value) and (value > 0 if open_bottom else value >= 0) and (
        value <= 1 if closed_top else value < 1)
    if not ok:
        lo = "(0" if open_bottom else "[0"
        hi = "1]" if closed_top else "1)"
        raise ConfigError(f"{name} must be in {lo}, {hi}, got {value}")


@dataclass(frozen=True)
class PruneConfig:
    """All settings of one prune run. Defaults are the CLI's defaults.

    Attributes are grouped as in ``onnxprune prune --help``: mode, unstructured/N:M, structured, data and
    recovery, budgets, validation, benchmark, output.
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
    round_to: int | None = None
    min_channels: int = 1
    importance: str = "l2"
    seed: int = 0
    plan_in: str | None = None
    plan_out: str | None = None
    # both
    exclude: tuple[str, ...] = ()
    # data-aware pruning and recovery
    calib: str | None = None
    recover: str | None = None  # None: "bias" when calib is given, else "none"
    target_macs: float | None = None
    target_params: float | None = None
    max_error: float | None = None
    sensitivity_method: str = "gram"  # how budgets measure candidates: gram (fast) or model (reference)
    executor: str = "local"  # where whole-model candidate runs go: local, processes or ray
    workers: int | None = None
    ray_address: str | None = None
    eval_data: str | None = None
    labels: str = "labels"
    # validation
    validate: bool = True
    atol: float = 1e-4
    rtol: float = 1e-3
    dims: dict[str, int] = field(default_factory=dict)
    providers: tuple[str, ...] = ("cpu",)
    validation_data: str | None = None
    # benchmark
    bench: bool = False
    bench_batches: tuple[int, ...] = (1, 8)
    bench_runs: int = 20
    bench_warmup: int = 3
    threads: int | None = None
    # output
    external_data: bool | None = None

    @property
    def recovery(self) -> str:
        """The recovery method actually used (``bias`` by default when calibration data is given)."""
        if self.recover is not None:
            return self.recover
        return "bias" if self.calib else "none"

    def with_(self, **changes: object) -> PruneConfig:
        """A copy with some fields changed."""
        return replace(self, **changes)  # type: ignore[arg-type]

    def validate_options(self) -> PruneConfig:
        """Check every option; returns ``self`` so calls chain.

        Raises:
            ConfigError: naming the option, the allowed range and the value given.
        """
        if self.mode not in MODES:
            raise ConfigError(f"--mode must be one of {', '.join(MODES)}, got '{self.mode}'")
        if self.scope not in SCOPES:
            raise ConfigError(f"--scope must be layer or global, got '{self.scope}'")
        _unit("--sparsity", self.sparsity)
        _unit("--ratio", self.ratio)
        for pattern, value in self.layer_sparsity.items():
            _unit(f"--layer-sparsity '{pattern}'", float(value))
        if self.mode == "nm":
            parse_nm(self.nm)
        if self.min_size < 0:
            raise ConfigError(f"--min-size must be >= 0, got {self.min_size}")
        if self.round_to is not None and self.round_to < 1:
            raise ConfigError(f"--round-to must be >= 1, got {self.round_to}")
        if self.min_channels < 1:
            raise ConfigError(f"--min-channels must be >= 1, got {self.min_channels}")
        if self.recover is not None and self.recover not in RECOVERY:
            raise ConfigError(f"--recover must be one of {', '.join(RECOVERY)}, got '{self.recover}'")
        if self.recover in ("bias", "lstsq") and not self.calib and not (
                self.recover == "bias" and self.mode == "structured"):
            raise ConfigError(f"--recover {self.recover} needs calibration data; pass --calib data.npz")
        _unit("--target-macs", self.target_macs, closed_top=True, open_bottom=True)
        _unit("--target-params", self.target_params, closed_top=True, open_bottom=True)
        if self.max_error is not None and not (math.isfinite(self.max_error) and self.max_error > 0):
            raise ConfigError(f"--max-error must be > 0, got {self.max_error}")
        if self.sensitivity_method not in ("gram", "model"):
            raise ConfigError(f"sensitivity method must be gram or model, got '{self.sensitivity_method}'")
        if self.executor not in ("local", "processes", "ray") or (self.workers is not None and self.workers < 1):
            raise ConfigError(f"--executor must be local, processes or ray and --workers >= 1, got "
                              f"'{self.executor}' and {self.workers}")
        if (self.target_macs or self.target_params or self.max_error) and self.mode != "structured":
            raise ConfigError("--target-macs/--target-params/--max-error apply to --mode structured only")
        if not (math.isfinite(self.atol) and self.atol >= 0 and math.isfinite(self.rtol) and self.rtol >= 0):
            raise ConfigError(f"--atol and --rtol must be >= 0, got {self.atol} and {self.rtol}")
        for name, value in self.dims.items():
            if int(value) < 1:
                raise ConfigError(f"--dim {name}={value}: dimensions must be >= 1")
        for b in self.bench_batches:
            if b < 1:
                raise ConfigError(f"--batch must be >= 1, got {b}")
        if self.bench_runs < 1 or self.bench_warmup < 0:
            raise ConfigError(f"--runs must be >= 1 and --warmup >= 0, got {self.bench_runs}, {self.bench_warmup}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {self.threads}")
        for pattern in self.exclude:
            if not pattern:
                raise ConfigError("--exclude needs a non-empty pattern, e.g. --exclude 'conv1*'")
        return self


