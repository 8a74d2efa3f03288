"""Bounds a user sets on how far a pruned model may drift from the original (``validate --min-cosine ...``).

Why: pruning changes outputs on purpose, so comparing a pruned model with its original at a float
rounding tolerance fails every time and says nothing. ``onnxprune validate`` therefore measures drift and
passes, unless the user states what is acceptable: an element tolerance (``atol``/``rtol``, applied by the
comparison itself, see :mod:`onnxprune.runtime.validate`), a least cosine similarity per floating output,
or a least top-1 agreement per class-score output. :meth:`DriftBounds.violations` lists every bound that
was crossed, naming provider, output, value and bound; an output that cannot be compared at all (missing,
other shape or dtype, NaN/Inf where the original has none) is always a violation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from onnxprune.core.errors import ConfigError

#: Tolerances used to report "the tolerance that would pass" when the user set none.
REPORT_ATOL = 1e-4
REPORT_RTOL = 1e-3


def _value(x: Any) -> float:
    """A report number as a float (JSON's ``"nan"``/``"inf"`` strings included); ``None`` is NaN."""
    if x is None:
        return math.nan
    try:
        return float(x)
    except ValueError:
        return math.nan


def _floating(o: Mapping[str, Any]) -> bool:
    dtype = str(o.get("dtype") or "")
    return not dtype or "float" in dtype


@dataclass(frozen=True)
class DriftBounds:
    """What the user accepts; ``None`` means no bound of that kind.

    Attributes:
        atol / rtol: element tolerance, every output (``|diff| <= atol + rtol * ...`` as the comparison
            defines it); setting one leaves the other at 0.
        min_cosine: least cosine similarity of every floating output, in ``[-1, 1]``.
        min_top1: least top-1 agreement (same arg-max) of every class-score output, in ``[0, 1]``.
    """

    atol: float | None = None
    rtol: float | None = None
    min_cosine: float | None = None
    min_top1: float | None = None

    def __post_init__(self) -> None:
        for name, value, low, high in (("atol", self.atol, 0.0, math.inf), ("rtol", self.rtol, 0.0, math.inf),
                                       ("min-cosine", self.min_cosine, -1.0, 1.0),
                                       ("min-top1", self.min_top1, 0.0, 1.0)):
            if value is None:
                continue
            if not isinstance(value, (int, float)) or math.isnan(value) or not low <= value <= high \
                    or (name in ("atol", "rtol") and math.isinf(value)):
                span = f">= {low:g}" if math.isinf(high) else f"in [{low:g}, {high:g}]"
                raise ConfigError(f"--{name} must be a finite number {span}, got {value!r}")

    @property
    def tolerance_set(self) -> bool:
        """True when the user bounded the element difference."""
        return self.atol is not None or self.rtol is not None

    @property
    def any(self) -> bool:
        """True when any bound is set."""
        return self.tolerance_set or self.min_cosine is not None or self.min_top1 is not None

    def tolerances(self) -> tuple[float, float]:
        """``(atol, rtol)`` to compare with: the user's (a missing one is 0), else the reporting defaults."""
        if not self.tolerance_set:
            return REPORT_ATOL, REPORT_RTOL
        return float(self.atol or 0.0), float(self.rtol or 0.0)

    def describe(self) -> str:
        """``--atol 0.01 --min-cosine 0.99``, or ``none``."""
        parts = [f"--{n} {v:g}" for n, v in (("atol", self.atol), ("rtol", self.rtol),
                                              ("min-cosine", self.min_cosine), ("min-top1", self.min_top1))
                 if v is not None]
        return " ".join(parts) or "none"

    def violations(self, validation: Mapping[str, Any]) -> list[str]:
        """Every crossed bound of a ``ValidationReport.to_dict()``, one readable phrase each.

        Raises:
            ConfigError: ``min_top1`` is set but no output is a class score (``[N, C]`` floats), so the
                bound cannot be checked.
        """
        out: list[str] = []
        saw_top1 = False
        for provider, cmp in (validation.get("comparisons") or {}).items():
            for o in cmp.get("outputs", []):
                where = f"{provider} '{o['name']}'"
                if o.get("problem"):
                    out.append(f"{where}: {o['problem']}")
                    continue
                if self.tolerance_set and not o.get("passed"):
                    out.append(f"{where}: max|diff| {_value(o.get('max_abs')):.3g} outside --atol "
                               f"{self.tolerances()[0]:g} --rtol {self.tolerances()[1]:g} (would pass with "
                               f"--atol {_value(o.get('needed_atol')):.3g})")
                if not _floating(o):
                    continue
                cosine = _value(o.get("cosine"))
                if self.min_cosine is not None and not cosine >= self.min_cosine:
                    out.append(f"{where}: cosine {cosine:.6f} < --min-cosine {self.min_cosine:g}")
                if o.get("top1") is not None:
                    saw_top1 = True
                    top1 = _value(o.get("top1"))
                    if self.min_top1 is not None and not top1 >= self.min_top1:
                        out.append(f"{where}: top-1 agreement {100 * top1:.2f}% < --min-top1 {self.min_top1:g}")
        if self.min_top1 is not None and not saw_top1 and validation.get("comparisons"):
            raise ConfigError("--min-top1 needs a class-score output ([N, C] floats) and this model has none; "
                              "bound it with --min-cosine or --atol instead")
        return out
