"""Prove a pruned model still is the model: checker, strict shape inference, and outputs in onnxruntime.

Why this module exists: a pruned model that loads is not yet a correct one. ``validate_models`` runs
``onnx.checker`` (full check), strict shape inference, then runs the original and the candidate in
onnxruntime on the same inputs, per provider, and compares every output. Like Polygraphy, the result
says not only pass/fail but the smallest tolerance that would have passed, so a user can tell a
rounding difference from a broken model at a glance.

Tolerance rule (numpy's ``isclose``, ``scale="element"``, the default): an element passes when
``|cand - ref| <= atol + rtol * |ref|``. With ``scale="output"`` each output is judged against its own scale:
it passes when ``max|cand - ref| <= atol + rtol * max|ref|`` over the output. Why: float32 rounding of an exact
computation is relative to the magnitudes the computation went through, not to each element's own value; a
detection head that concatenates pixel box coordinates (~600) with near-zero scores rounds its scores by
~1e-2 absolute, which the element rule, relative to a score of ~0, calls a failure. The pipeline proves
exactness with the output rule. NaN matches NaN and an infinity matches the same infinity, any other
non-finite difference fails.
Reported metrics (over finite elements): max abs diff, max rel diff ``|cand - ref| / |ref|`` (``inf`` where
``ref`` is 0 and the diff is not), mean abs diff, cosine similarity; for outputs that look like class
scores (2-D ``[N, C]`` float, ``C >= 2``) top-1 agreement (same arg-max) and, when ``C > 5``, top-5
agreement (the original's top-1 class is among the candidate's top 5). Top-k is reported, never enforced.

``compare_outputs``/``Comparer`` are the reusable core: calibration and recovery compare outputs with
``report_only=True``, which computes every metric but never makes the comparison a failure.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import ModelProto

from onnxprune.core.errors import (
    CalibrationError,
    ConfigError,
    ModelLoadError,
    OnnxPruneError,
    ValidationError,
    first_line,
)
from onnxprune.core.io import PROTOBUF_LIMIT, checker_view, file_size, load_model, load_structure, model_nbytes
from onnxprune.core.ir import dim_key, shape_skeleton
from onnxprune.core.progress import progress
from onnxprune.core.shapefold import infer_shapes
from onnxprune.runtime.feeds import (
    InputSpec,
    fixed_batch_size,
    input_specs,
    iter_batches,
    load_npz_feeds,
    num_samples,
    random_feeds,
)

log = logging.getLogger(__name__)

DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-3
#: Samples generated when no ``--data`` is given.
DEFAULT_SAMPLES = 4
#: How each tolerance rule reads, for reports.
SCALE_RULES = {"element": "|diff| <= atol + rtol * |original| per element",
               "output": "max|diff| <= atol + rtol * max|original| per output"}


def json_number(x: float | int | None) -> float | int | str | None:
    """A number JSON can hold: ``inf``/``nan`` become the strings ``"inf"``, ``"-inf"``, ``"nan"``."""
    if x is None or isinstance(x, (int, np.integer)):
        return None if x is None else int(x)
    x = float(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return x


def _fmt(x: float | None) -> str:
    if x is None:
        return "-"
    if math.isinf(x) or math.isnan(x):
        return str(x)
    return f"{x:.3g}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _ceil_fmt(x: float) -> str:
    """``x`` rounded *up* to 3 significant digits, so a suggested tolerance really passes."""
    if x <= 0 or not math.isfinite(x):
        return _fmt(x)
    scale = 10.0 ** (math.floor(math.log10(x)) - 2)
    return f"{math.ceil(x / scale * (1 - 1e-12)) * scale:.3g}"


def check_tolerances(atol: float, rtol: float) -> None:
    """Raise ConfigError for a negative or non-finite tolerance."""
    for name, value in (("atol", atol), ("rtol", rtol)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}; e.g. --{name} 1e-4")


def check_scale(scale: str) -> None:
    """Raise ConfigError for a tolerance scale other than ``element`` or ``output``."""
    if scale not in SCALE_RULES:
        raise ConfigError(f"tolerance scale must be one of {', '.join(SCALE_RULES)}, got {scale!r}")


@dataclass(frozen=True)
class OutputComparison:
    """How one output of the candidate compares with the original's, over all compared samples.

    Attributes:
        name: output name.
        shape: shape of the original's output in the first batch.
        elements: number of elements compared.
        max_abs / max_rel / mean_abs / cosine: the metrics of the module doc.
        top1 / top5: agreement fractions for class-score outputs, ``None`` when not applicable.
        passed: within tolerance (see the module doc's two rules) and no structural problem.
        needed_atol: smallest atol that would pass with the given rtol.
        needed_rtol: smallest rtol that would pass with the given atol (``inf``: no rtol would).
        problem: a structural mismatch (missing output, shape, dtype, NaN/Inf), empty if none.
        nonfinite: elements where either output was NaN or infinite (in both, at the same places: a
            NaN/Inf that differs is a ``problem``). When there are any, the metrics cannot be computed and
            are NaN, never a perfect score; a row of class scores holding one makes top-1/top-5 NaN.
        dtype: the original's output dtype (``"float32"``, ``"int64"``, ...); drift is a measure of
            floating outputs only (a class label's max|diff| means nothing).
    """

    name: str
    shape: tuple[int, ...]
    elements: int
    max_abs: float
    max_rel: float
    mean_abs: float
    cosine: float
    top1: float | None
    top5: float | None
    passed: bool
    needed_atol: float
    needed_rtol: float
    problem: str = ""
    nonfinite: int = 0
    dtype: str = ""

    def to_dict(self) -> dict[str, object]:
        """JSON-able dict (non-finite numbers as strings)."""
        return {
            "name": self.name, "dtype": self.dtype, "shape": list(self.shape), "elements": self.elements,
            "max_abs": json_number(self.max_abs), "max_rel": json_number(self.max_rel),
            "mean_abs": json_number(self.mean_abs), "cosine": json_number(self.cosine),
            "top1": json_number(self.top1), "top5": json_number(self.top5), "passed": self.passed,
            "needed_atol": json_number(self.needed_atol), "needed_rtol": json_number(self.needed_rtol),
            "problem": self.problem, "nonfinite": self.nonfinite,
        }


@dataclass(frozen=True)
class Comparison:
    """Per-output comparisons of a candidate against a reference; ``bool(c)`` is ``c.passed``.

    ``passed`` is ``within_tolerance`` unless ``report_only``, where it is always True (the metrics are
    still all there).
    """

    outputs: tuple[OutputComparison, ...]
    atol: float
    rtol: float
    report_only: bool = False
    scale: str = "element"

    @property
    def within_tolerance(self) -> bool:
        """True when every output passed the tolerance check (whatever ``report_only`` says)."""
        return all(o.passed for o in self.outputs)

    @property
    def passed(self) -> bool:
        """The verdict: within tolerance, or True in report-only mode."""
        return self.report_only or self.within_tolerance

    def __bool__(self) -> bool:
        return self.passed

    @property
    def failed(self) -> tuple[OutputComparison, ...]:
        """The outputs outside tolerance."""
        return tuple(o for o in self.outputs if not o.passed)

    @property
    def needed_atol(self) -> float:
        """Smallest atol (with this rtol) under which every output would pass."""
        return max((o.needed_atol for o in self.outputs), default=0.0)

    @property
    def needed_rtol(self) -> float:
        """Smallest rtol (with this atol) under which every output would pass (``inf``: none)."""
        return max((o.needed_rtol for o in self.outputs), default=0.0)

    def output(self, name: str) -> OutputComparison:
        """The comparison of output ``name``.

        Raises:
            KeyError: no such output.
        """
        for o in self.outputs:
            if o.name == name:
                return o
        raise KeyError(name)

    def summary(self) -> str:
        """One line: verdict, tolerances, and the worst output with the tolerance that would pass."""
        verdict = "PASS" if self.within_tolerance else ("OUTSIDE TOLERANCE (report only)" if self.report_only
                                                       else "FAIL")
        head = f"{verdict}: {len(self.outputs)} output(s), atol={self.atol:g} rtol={self.rtol:g}"
        if self.scale == "output":
            head += " of each output's max|original|"
        if not self.outputs:
            return head
        if self.within_tolerance:
            worst = max(self.outputs, key=lambda o: (math.isnan(o.max_abs), o.max_abs))  # NaN is the worst
            return f"{head}; worst '{worst.name}' max|diff|={_fmt(worst.max_abs)}"
        bad = self.failed
        parts = []
        for o in bad[:3]:
            if o.problem:
                parts.append(f"'{o.name}': {o.problem}")
            else:
                parts.append(f"'{o.name}' max|diff|={_fmt(o.max_abs)} max rel={_fmt(o.max_rel)}")
        more = f" (+{len(bad) - 3} more)" if len(bad) > 3 else ""
        hint = ""
        if not any(o.problem for o in bad):
            hint = f"; would pass with --atol {_ceil_fmt(self.needed_atol)}"
            if math.isfinite(self.needed_rtol):
                hint += f" or --rtol {_ceil_fmt(self.needed_rtol)}"
        return f"{head}; {'; '.join(parts)}{more}{hint}"

    def to_dict(self) -> dict[str, object]:
        """JSON-able dict."""
        return {
            "passed": self.passed, "within_tolerance": self.within_tolerance, "report_only": self.report_only,
            "atol": self.atol, "rtol": self.rtol, "scale": self.scale, "rule": SCALE_RULES[self.scale],
            "needed_atol": json_number(self.needed_atol),
            "needed_rtol": json_number(self.needed_rtol), "outputs": [o.to_dict() for o in self.outputs],
        }


@dataclass
class _OutputAccumulator:
    """Running sums for one output over batches (internal; ``Comparer`` owns these)."""

    name: str
    shape: tuple[int, ...] | None = None
    dtype: str = ""
    elements: int = 0
    max_abs: float = 0.0
    max_ref: float = 0.0
    max_rel: float = 0.0
    sum_abs: float = 0.0
    dot: float = 0.0
    ref_sq: float = 0.0
    cand_sq: float = 0.0
    rows: int = 0
    top1_hits: int = 0
    top5_rows: int = 0
    top5_hits: int = 0
    nonfinite: int = 0
    nonfinite_rows: int = 0
    outside: int = 0
    needed_atol: float = 0.0
    needed_rtol: float = 0.0
    problems: list[str] = field(default_factory=list)

    def add(self, ref: np.ndarray | None, cand: np.ndarray | None, atol: float, rtol: float) -> None:
        if self.problems:
            return
        if cand is None:
            self.problems.append("missing in the candidate")
            return
        if ref is None:
            self.problems.append("missing in the original")
            return
        ref, cand = np.asarray(ref), np.asarray(cand)
        if self.shape is None:
            self.shape = tuple(int(d) for d in ref.shape)
            self.dtype = str(ref.dtype)
        if ref.shape != cand.shape:
            self.problems.append(f"shape {tuple(cand.shape)} differs from the original's {tuple(ref.shape)}")
            return
        if ref.dtype != cand.dtype:
            self.problems.append(f"dtype {cand.dtype} differs from the original's {ref.dtype}")
            return
        if ref.dtype.kind not in "fiub":
            if not np.array_equal(ref, cand):
                self.problems.append(f"{ref.dtype} values differ")
            self.elements += int(ref.size)
            return
        a = ref.astype(np.float64).ravel()
        b = cand.astype(np.float64).ravel()
        same = (a == b) | (np.isnan(a) & np.isnan(b))
        finite = np.isfinite(a) & np.isfinite(b)
        nonfinite_bad = int(np.count_nonzero(~same & ~finite))
        if nonfinite_bad:
            self.problems.append(f"NaN/Inf differs from the original at {nonfinite_bad} element(s)")
            return
        self.nonfinite += int(a.size - np.count_nonzero(finite))
        a_f, b_f = a[finite], b[finite]
        d = np.abs(b_f - a_f)
        mag = np.abs(a_f)
        self.elements += int(a.size)
        if d.size:
            self.max_abs = max(self.max_abs, float(d.max()))
            self.max_ref = max(self.max_ref, float(mag.max()))
            with np.errstate(divide="ignore", invalid="ignore"):
                rel = np.where(d == 0, 0.0, d / mag)
                need_r = np.where(d <= atol, 0.0, (d - atol) / mag)
            self.max_rel = max(self.max_rel, float(rel.max()))
            self.needed_rtol = max(self.needed_rtol, float(need_r.max()))
            self.needed_atol = max(self.needed_atol, float(np.maximum(d - rtol * mag, 0.0).max()))
            self.sum_abs += float(d.sum())
            self.dot += float(a_f @ b_f)
            self.ref_sq += float(a_f @ a_f)
            self.cand_sq += float(b_f @ b_f)
            self.outside += int(np.count_nonzero(d > atol + rtol * mag))
        if ref.ndim == 2 and ref.shape[1] >= 2 and ref.dtype.kind == "f" and ref.shape[0] > 0:
            # argmax of a row holding NaN is meaningless (NaN rows all "agree" on class 0)
            self.nonfinite_rows += int(np.count_nonzero(~finite.reshape(ref.shape).all(axis=1)))
            ref_top = np.argmax(ref, axis=1)
            self.rows += ref.shape[0]
            self.top1_hits += int(np.count_nonzero(ref_top == np.argmax(cand, axis=1)))
            if ref.shape[1] > 5:
                cand_top5 = np.argpartition(-cand, 5, axis=1)[:, :5]
                self.top5_rows += ref.shape[0]
                self.top5_hits += int(np.count_nonzero((cand_top5 == ref_top[:, None]).any(axis=1)))

    def result(self, scale: str = "element", atol: float = 0.0, rtol: float = 0.0) -> OutputComparison:
        if self.ref_sq == 0.0 and self.cand_sq == 0.0:
            cosine = 1.0
        elif self.ref_sq == 0.0 or self.cand_sq == 0.0:
            cosine = 0.0
        else:
            cosine = self.dot / math.sqrt(self.ref_sq * self.cand_sq)
        top1 = self.top1_hits / self.rows if self.rows else None
        top5 = self.top5_hits / self.top5_rows if self.top5_rows else None
        max_abs, max_rel, mean_abs = self.max_abs, self.max_rel, self.sum_abs / self.elements if self.elements else 0.0
        if self.nonfinite:  # cannot be computed: never report it as a perfect match
            cosine = max_abs = max_rel = mean_abs = math.nan
        if self.nonfinite_rows:
            top1 = math.nan if top1 is not None else None
            top5 = math.nan if top5 is not None else None
        problem = "; ".join(self.problems)
        within, needed_atol, needed_rtol = self.outside == 0, self.needed_atol, self.needed_rtol
        if scale == "output":
            within = self.max_abs <= atol + rtol * self.max_ref
            needed_atol = max(self.max_abs - rtol * self.max_ref, 0.0)
            over = self.max_abs - atol
            needed_rtol = 0.0 if over <= 0 else over / self.max_ref if self.max_ref > 0 else math.inf
        return OutputComparison(
            name=self.name,
            shape=self.shape or (),
            elements=self.elements,
            max_abs=max_abs,
            max_rel=max_rel,
            mean_abs=mean_abs,
            cosine=cosine,
            top1=top1,
            top5=top5,
            passed=not problem and within,
            needed_atol=math.inf if problem else needed_atol,
            needed_rtol=math.inf if problem else needed_rtol,
            problem=problem,
            nonfinite=self.nonfinite,
            dtype=self.dtype,
        )


class Comparer:
    """Accumulates output comparisons over many batches; ``result()`` gives the :class:`Comparison`.

    Example:
        >>> c = Comparer(atol=1e-4, rtol=1e-3)
        >>> c.add({"y": np.ones(3)}, {"y": np.ones(3)})
        >>> bool(c.result())
        True
    """

    def __init__(self, *, atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL, report_only: bool = False,
                 outputs: Sequence[str] | None = None, scale: str = "element") -> None:
        check_tolerances(atol, rtol)
        check_scale(scale)
        self.atol, self.rtol, self.report_only, self.scale = float(atol), float(rtol), bool(report_only), scale
        self._acc: dict[str, _OutputAccumulator] = {n: _OutputAccumulator(n) for n in outputs or ()}

    def add(self, ref: Mapping[str, np.ndarray], cand: Mapping[str, np.ndarray]) -> None:
        """Compare one batch: every output of ``ref`` against the same-named one of ``cand``."""
        for name in ref:
            self._acc.setdefault(name, _OutputAccumulator(name))
        for name, acc in self._acc.items():
            acc.add(ref.get(name), cand.get(name), self.atol, self.rtol)

    def result(self) -> Comparison:
        """The comparison over everything added so far."""
        return Comparison(tuple(a.result(self.scale, self.atol, self.rtol) for a in self._acc.values()), self.atol,
                          self.rtol, self.report_only, self.scale)


def compare_outputs(
    ref: Mapping[str, np.ndarray],
    cand: Mapping[str, np.ndarray],
    *,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    report_only: bool = False,
    scale: str = "element",
) -> Comparison:
    """Compare every output of ``ref`` with the same-named output of ``cand`` (extra outputs ignored).

    Args:
        ref: reference outputs (the original model's).
        cand: candidate outputs.
        atol: absolute tolerance.
        rtol: relative tolerance.
        report_only: compute the metrics but never fail (``passed`` is then always True).
        scale: ``"element"`` (each element against its own magnitude) or ``"output"`` (each output's
            largest difference against that output's largest magnitude); see the module doc.

    Returns:
        A :class:`Comparison`; ``bool()`` of it is the verdict.

    Raises:
        ConfigError: a negative tolerance.

    Example:
        >>> c = compare_outputs({"y": np.array([1.0, 2.0])}, {"y": np.array([1.0, 2.5])}, atol=0.1, rtol=0)
        >>> bool(c), c.output("y").needed_atol
        (False, 0.5)
    """
    comparer = Comparer(atol=atol, rtol=rtol, report_only=report_only, scale=scale)
    comparer.add(ref, cand)
    return comparer.result()


@dataclass(frozen=True)
class CheckResult:
    """One structural check of the candidate (``checker``, ``shape_inference``, ``interface``)."""

    name: str
    passed: bool
    message: str = ""

    def to_dict(self) -> dict[str, object]:
        """JSON-able dict."""
        return {"name": self.name, "passed": self.passed, "message": self.message}


@dataclass(frozen=True)
class ValidationReport:
    """Everything ``validate_models`` found; ``bool(report)`` is ``report.passed``.

    Attributes:
        original / candidate: how the two models are named (paths, or graph names).
        checks: structural checks of the candidate, in order; a failed one skips the comparison.
        comparisons: ``(provider, Comparison)`` pairs, one per provider run.
        inputs: where the inputs came from (``.npz`` path, or the generator's seed/batch/dims).
        samples / batch_size: how many samples were compared, in batches of this size.
    """

    original: str
    candidate: str
    checks: tuple[CheckResult, ...]
    comparisons: tuple[tuple[str, Comparison], ...]
    inputs: str
    samples: int
    batch_size: int
    atol: float
    rtol: float
    report_only: bool = False
    scale: str = "element"

    @property
    def passed(self) -> bool:
        """All checks passed and every provider's comparison passed."""
        return all(c.passed for c in self.checks) and all(cmp.passed for _, cmp in self.comparisons)

    def __bool__(self) -> bool:
        return self.passed

    def comparison(self, provider: str) -> Comparison:
        """The comparison run on ``provider`` (short name such as ``cpu``).

        Raises:
            KeyError: that provider was not run.
        """
        for p, cmp in self.comparisons:
            if p == provider:
                return cmp
        raise KeyError(provider)

    def summary(self) -> str:
        """One line saying pass/fail and why."""
        for c in self.checks:
            if not c.passed:
                return f"validation FAILED: {c.name} of {self.candidate}: {c.message}"
        parts = [f"{p}: {cmp.summary()}" for p, cmp in self.comparisons]
        verdict = "report" if self.report_only else ("passed" if self.passed else "FAILED")
        return f"validation {verdict} ({self.samples} sample(s), {self.inputs}): " + " | ".join(parts)

    def to_text(self) -> str:
        """A small human table: one row per provider and output."""
        lines = [f"original:  {self.original}", f"candidate: {self.candidate}",
                 f"inputs:    {self.inputs}; {self.samples} sample(s) in batches of {self.batch_size}"]
        for c in self.checks:
            lines.append(f"check {c.name:<16} {'ok' if c.passed else 'FAILED: ' + c.message}")
        if self.comparisons:
            head = (f"{'provider':<9} {'output':<20} {'max|diff|':>10} {'max rel':>10} {'mean|diff|':>10} "
                    f"{'cosine':>9} {'top1':>6} {'top5':>6} {'needs atol':>10} {'needs rtol':>10}  result")
            lines += ["", head, "-" * len(head)]
            for p, cmp in self.comparisons:
                for o in cmp.outputs:
                    result = "ok" if o.passed else ("FAIL: " + o.problem if o.problem else "FAIL")
                    lines.append(
                        f"{p:<9} {o.name[:20]:<20} {_fmt(o.max_abs):>10} {_fmt(o.max_rel):>10} "
                        f"{_fmt(o.mean_abs):>10} {o.cosine:>9.6f} {_pct(o.top1):>6} {_pct(o.top5):>6} "
                        f"{_fmt(o.needed_atol):>10} {_fmt(o.needed_rtol):>10}  {result}"
                    )
        lines += ["", self.summary()]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, object]:
        """JSON-able dict."""
        return {
            "passed": self.passed, "original": self.original, "candidate": self.candidate,
            "inputs": self.inputs, "samples": self.samples, "batch_size": self.batch_size,
            "atol": self.atol, "rtol": self.rtol, "scale": self.scale, "rule": SCALE_RULES[self.scale],
            "report_only": self.report_only, "checks": [c.to_dict() for c in self.checks],
            "comparisons": {p: cmp.to_dict() for p, cmp in self.comparisons},
            "summary": self.summary(),
        }

    def raise_if_failed(self) -> None:
        """Raise :class:`ValidationError` with the one-line summary when validation failed.

        In report-only mode only a failed structural check raises.
        """
        if not self.passed:
            raise ValidationError(self.summary())


def _label(source: str | os.PathLike[str] | ModelProto) -> str:
    if isinstance(source, ModelProto):
        return f"<{source.graph.name or 'model'}>"
    return str(source)


def check_structure(model: ModelProto, *, path: str | os.PathLike[str] | None = None,
                    dims: Mapping[str, int] | None = None) -> tuple[CheckResult, CheckResult]:
    """``onnx.checker`` with ``full_check`` and strict shape inference, as results instead of raises.

    Shape inference runs on a weightless skeleton (``ir.shape_skeleton``) with dynamic dims fixed from
    ``dims``, so it is cheap and works above the 2 GB protobuf limit; the checker runs on the model, its
    file when it is too big to serialize, or else on the skeleton.
    """
    try:
        # The checker serializes what it gets (two more copies of every weight): give it a view in which
        # large weights are typed inputs, their raw sizes checked without copying (io.checker_view).
        # A model read from ``path`` had its external data files checked by load_model (present, sizes).
        view = checker_view(model, f"model '{model.graph.name or '<in memory>'}'", external_checked=path is not None)
        if view.ByteSize() < PROTOBUF_LIMIT:
            onnx.checker.check_model(view, full_check=True)
        elif path is not None:
            onnx.checker.check_model(str(path), full_check=True)
        else:
            onnx.checker.check_model(shape_skeleton(model, dict(dims or {})), full_check=True)
        checker = CheckResult("checker", True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, ModelLoadError) as exc:
        checker = CheckResult("checker", False, first_line(exc))
    try:
        infer_shapes(model, dict(dims or {}), strict=True)
        shapes = CheckResult("shape_inference", True)
    except OnnxPruneError as exc:
        shapes = CheckResult("shape_inference", False, first_line(exc))
    return checker, shapes


def _check_interface(orig: Sequence[InputSpec], cand: Sequence[InputSpec], orig_outputs: Iterable[str],
                     cand_outputs: Iterable[str]) -> CheckResult:
    """Same inputs (names, dtypes) and every original output present in the candidate."""
    o = {s.name: s for s in orig}
    c = {s.name: s for s in cand}
    if set(o) != set(c):
        return CheckResult("interface", False,
                           f"inputs {sorted(c)} differ from the original's {sorted(o)}; outputs cannot be compared")
    for name, spec in o.items():
        other = c[name]
        if spec.dtype != other.dtype:
            return CheckResult("interface", False, f"input '{name}' is {other.dtype}, the original's is {spec.dtype}")
        if spec.shape is not None and other.shape is not None and (
            len(spec.shape) != len(other.shape)
            or any(isinstance(a, int) and isinstance(b, int) and a != b
                   for a, b in zip(spec.shape, other.shape, strict=True))
        ):
            return CheckResult("interface", False,
                               f"input {other.describe()} does not fit the original's {spec.describe()}")
    missing = [n for n in orig_outputs if n not in set(cand_outputs)]
    if missing:
        return CheckResult("interface", False, f"outputs {missing} of the original are missing")
    return CheckResult("interface", True)


def _batches(
    model: ModelProto, specs: Sequence[InputSpec], *, data: str | os.PathLike[str] | None, seed: int,
    samples: int | None, batch_size: int, dims: Mapping[str, int],
) -> tuple[list[dict[str, np.ndarray]], str, int, int]:
    """The input batches, a description of their source, the sample count and the batch size used."""
    fixed = fixed_batch_size(specs)
    if fixed is not None and batch_size != fixed:
        log.info("the model's batch dim is fixed to %d; using batches of %d instead of %d", fixed, fixed, batch_size)
        batch_size = fixed
    if data is not None:
        feeds = load_npz_feeds(data, model)
        n = num_samples(feeds)
        if samples is not None:
            n = min(n, samples)
            feeds = {k: v[:n] for k, v in feeds.items()}
        if fixed is not None and n % fixed:
            raise CalibrationError(
                f"input data {data} has {n} samples, not a multiple of the model's fixed batch {fixed}; "
                f"use --samples {n - n % fixed or fixed}"
            )
        return list(iter_batches(feeds, batch_size)), f"data {data}", n, batch_size
    from onnxprune.runtime.dims import resolve_dims

    res = resolve_dims(model, dims=dims, seed=seed)  # sizes for dynamic axes without --dim (runtime/dims.py)
    dims = res.dims
    count = DEFAULT_SAMPLES if samples is None else samples
    if fixed is not None:
        count = math.ceil(count / fixed) * fixed
    sizes = [min(batch_size, count - start) for start in range(0, count, batch_size)]
    batches = [random_feeds(model, seed=seed + i, batch=b, dims=dims) for i, b in enumerate(sizes)]
    dims_text = "".join(sorted({f" {c.label}={c.value}" for c in res.chosen if c.axis > 0}))  # axis 0: the batch
    return batches, f"random seed={seed}{dims_text}", count, batch_size


def _batch_dims(specs: Sequence[InputSpec], batch: Mapping[str, np.ndarray], dims: Mapping[str, int]) -> dict[str, int]:
    """Dynamic dims as the first batch really has them (for strict shape inference), by name and by axis."""
    out = dict(dims)
    for spec in specs:
        for axis, d in enumerate(spec.shape or ()):
            if not isinstance(d, int) and spec.name in batch and np.ndim(batch[spec.name]) > axis:
                size = int(np.shape(batch[spec.name])[axis])
                out[dim_key(spec.name, axis)] = size
                if isinstance(d, str) and d:
                    out.setdefault(d, size)
    return out


def validate_models(
    original: str | os.PathLike[str] | ModelProto,
    candidate: str | os.PathLike[str] | ModelProto,
    *,
    data: str | os.PathLike[str] | None = None,
    providers: Sequence[str] = ("cpu",),
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    dims: Mapping[str, int] | None = None,
    seed: int = 0,
    samples: int | None = None,
    batch_size: int = 1,
    report_only: bool = False,
    threads: int | None = None,
    scale: str = "element",
) -> ValidationReport:
    """Check ``candidate`` structurally and compare its outputs with ``original``'s in onnxruntime.

    Both models run on each provider on the same inputs: from ``data`` (an ``.npz``; see
    :mod:`onnxprune.runtime.feeds`) or generated from ``seed`` (``samples`` of them, default
    ``DEFAULT_SAMPLES``). Nothing is raised for a mismatch: read ``report.passed`` or call
    ``report.raise_if_failed()``.

    Args:
        original: the reference model (path or ``ModelProto``, not modified).
        candidate: the pruned model.
        data: optional ``.npz`` of inputs (keys = input names, axis 0 = samples).
        providers: short provider names, each run separately (``("cpu", "cuda")``).
        atol: absolute tolerance.
        rtol: relative tolerance.
        dims: values of named dynamic dims for generated inputs.
        seed: seed of generated inputs (batch ``i`` uses ``seed + i``).
        samples: at most this many samples (default: all of ``data``, or ``DEFAULT_SAMPLES``).
        batch_size: samples per run; a model with a fixed batch dim uses that instead.
        report_only: compute everything but never fail on tolerance.
        threads: onnxruntime intra-op threads.
        scale: ``"element"`` or ``"output"``: which magnitude ``rtol`` is relative to (see the module doc).

    Returns:
        A :class:`ValidationReport`.

    Raises:
        ModelLoadError: a model file is missing or unreadable.
        CalibrationError: ``data`` does not fit the model's inputs.
        ConfigError: a bad option, an unavailable provider, or a dynamic dim without a value.
        UnsupportedModelError: onnxruntime cannot load or run a model.

    Example:
        >>> report = validate_models("model.onnx", "pruned.onnx", atol=1e-4, rtol=1e-3)  # doctest: +SKIP
        >>> report.raise_if_failed()  # doctest: +SKIP
    """
    from onnxprune.runtime.session import SESSION_FILE_BYTES, create_session, parse_providers, run_session

    check_tolerances(atol, rtol)
    check_scale(scale)
    if batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}; pass --batch 1 or more")
    if samples is not None and samples < 1:
        raise ConfigError(f"samples must be at least 1, got {samples}; pass --samples 1 or more")
    provider_names = parse_providers(providers)
    dims = dict(dims or {})
    orig_label, cand_label = _label(original), _label(candidate)
    # Both models are only read: no deep copies (each would cost one more model of memory). The original
    # is only run, never checked: from a path, onnxruntime reads its weights itself (mapped, and returned
    # when the session goes), so they are not loaded here.
    orig_path = None if isinstance(original, ModelProto) else original
    orig_model = load_model(original, copy=False, weights=orig_path is None)
    # A candidate file is checked from its structure (its external data files checked for presence and
    # sizes) and run from the file: its weights are not loaded either.
    cand_path = None if isinstance(candidate, ModelProto) else candidate
    cand_model = load_model(candidate, check=False, copy=False) if cand_path is None else load_structure(cand_path)
    orig_specs, cand_specs = input_specs(orig_model), input_specs(cand_model)
    orig_outputs = [o.name for o in orig_model.graph.output]

    batches, source, n, batch_size = _batches(orig_model, orig_specs, data=data, seed=seed, samples=samples,
                                              batch_size=batch_size, dims=dims)
    checks = list(check_structure(cand_model, path=cand_path, dims=_batch_dims(orig_specs, batches[0], dims)))
    checks.append(_check_interface(orig_specs, cand_specs, orig_outputs, [o.name for o in cand_model.graph.output]))

    def report(comparisons: tuple[tuple[str, Comparison], ...]) -> ValidationReport:
        return ValidationReport(orig_label, cand_label, tuple(checks), comparisons, source, n, batch_size,
                                float(atol), float(rtol), report_only, scale)

    if not all(c.passed for c in checks):
        result = report(())
        log.info("%s", result.summary())
        return result
    # Big models: one session at a time (the original's outputs are kept meanwhile), each mapping its
    # weights from a temporary file without pre-packed copies; small ones run side by side, batch by batch.
    orig_bytes = model_nbytes(orig_model) if orig_path is None else file_size(orig_path)
    cand_bytes = model_nbytes(cand_model) if cand_path is None else file_size(cand_path)
    one_at_a_time = max(orig_bytes, cand_bytes) >= SESSION_FILE_BYTES
    comparisons: list[tuple[str, Comparison]] = []
    for provider in provider_names:
        comparer = Comparer(atol=atol, rtol=rtol, report_only=report_only, outputs=orig_outputs, scale=scale)
        desc = f"validate ({provider})"
        ref_sess = create_session(orig_model if orig_path is None else orig_path, provider=provider,
                                  threads=threads, name=orig_label, low_memory=one_at_a_time)
        if one_at_a_time:
            refs = [run_session(ref_sess, b, label=orig_label) for b in progress(batches, desc=desc)]
            del ref_sess
            cand_sess = create_session(cand_model if cand_path is None else cand_path, provider=provider,
                                       threads=threads, name=cand_label, low_memory=True)
            refs.reverse()  # pop() from the end frees each reference output as soon as it is compared
            for batch in batches:
                comparer.add(refs.pop(), run_session(cand_sess, batch, outputs=orig_outputs, label=cand_label))
        else:
            cand_sess = create_session(cand_model if cand_path is None else cand_path, provider=provider,
                                       threads=threads, name=cand_label)
            for batch in progress(batches, desc=desc, total=len(batches)):
                comparer.add(run_session(ref_sess, batch, label=orig_label),
                             run_session(cand_sess, batch, outputs=orig_outputs, label=cand_label))
            del ref_sess
        del cand_sess
        comparisons.append((provider, comparer.result()))
    result = report(tuple(comparisons))
    log.info("%s", result.summary())
    return result

