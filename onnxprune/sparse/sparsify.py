"""Unstructured and N:M magnitude sparsity: zero the least important weights, touch nothing else.

Why it is built this way:

* **Exact.** A weight of ``numel`` elements at sparsity ``s`` gets exactly ``k = round(s * numel)`` zeros
  (layer scope), and global scope gets exactly ``round(s * total)`` zeros over all the weights it covers,
  so reports and papers can quote the number without "about". Entries that are already zero count as
  pruned first (they are the least important), so sparsity only exceeds the target when the model already
  had more zeros than asked for.
* **Deterministic.** Ties are broken by flat index, as a stable argsort of ``(score, index)`` would (in
  global scope: by weight order, then flat index), so the same model and options always give the same
  file. The selection uses ``np.partition`` plus a tie pass instead of a full sort, which keeps 100 MB
  models fast.
* **Lossless for survivors.** Surviving weights keep their exact bits and dtype (float32, float16,
  bfloat16, double); only the chosen entries become ``+0.0``.
* **Quantized weights stay quantized.** An int8/uint8 weight behind ``DequantizeLinear`` (a QDQ model) is
  scored by the magnitude of its dequantized value ``(q - zero_point) * scale`` and zeroed by setting the
  chosen entries to their zero point (per tensor, or per channel along the DequantizeLinear ``axis``): the
  dtype, the scale, the zero point and every Q/DQ node stay as they are, and "zero" means "equal to the
  zero point" in counts and reports.
* **A hook for data-aware criteria.** ``scores`` replaces ``|W|`` by any array of the weight's shape
  (e.g. wanda's ``|W| * ||X||``); weights are found by :mod:`onnxprune.core.weights`, which the calibration
  code reuses, so both sides agree on names and reduction axes.
* **A hook for methods that also update weights.** ``update`` (see :class:`WeightUpdate`) lets a method such
  as SparseGPT choose each layer's zeros itself and change the surviving weights, while this module keeps
  the selection of weights, the exact counts, the reports and the writing in one place. The count it is
  given is the one magnitude sparsity would use, so the exactness promise is the same.

The input model is never modified; a new ``ModelProto`` is returned in a :class:`SparsifyResult`.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from onnx import ModelProto, helper

from onnxprune.core.errors import ConfigError
from onnxprune.core.io import load_model
from onnxprune.core.ir import GraphIndex, matches_any
from onnxprune.core.quant import dequantize, zero_point
from onnxprune.core.weights import (
    PrunableWeight,
    SkippedWeight,
    copy_model_without_weights,
    get_weight,
    little_endian_bytes,
    scan_weights,
    set_weight_bytes,
)

log = logging.getLogger(__name__)

SCOPES = ("layer", "global")


@dataclass(frozen=True)
class LayerTarget:
    """What one weight must reach, as :data:`WeightUpdate` is told it.

    Attributes:
        zeros: unstructured: the exact number of entries to zero (already-zero entries count first).
        nm: N:M: ``(n, m)``, keep ``n`` of every ``m`` consecutive entries along the reduction axes.
    """

    zeros: int | None = None
    nm: tuple[int, int] | None = None


#: ``update(pw, w, target) -> (mask, values)`` or ``None``: a method that picks the entries to zero (``mask``,
#: True = zero; already-zero entries of ``w`` must be in it) and returns the new values of the others
#: (``values``, in ``w``'s dtype and shape). ``None`` means "not for this weight": the ``scores`` (or ``|W|``)
#: decide as usual.
WeightUpdate = Callable[[PrunableWeight, np.ndarray, LayerTarget], "tuple[np.ndarray, np.ndarray] | None"]



@dataclass(frozen=True)
class LayerReport:
    """What sparsity did to one weight tensor.

    Attributes:
        name: the weight (storage tensor) name.
        readers: the nodes that use it as their weight.
        shape: its shape.
        numel: its number of elements.
        zeros_before: zero entries before (``-0.0`` included).
        zeros_after: zero entries after.
        target: the sparsity asked for this tensor (``(m - n) / m`` for N:M; the global target in global
            scope, where single tensors may end up above or below it).
    """

    name: str
    readers: tuple[str, ...]
    shape: tuple[int, ...]
    numel: int
    zeros_before: int
    zeros_after: int
    target: float

    @property
    def sparsity(self) -> float:
        """Achieved sparsity, ``zeros_after / numel``."""
        return self.zeros_after / self.numel if self.numel else 0.0


@dataclass(frozen=True, eq=False)
class SparsifyResult:
    """The sparsified model and a per-layer account of what changed.

    Attributes:
        model: a new ``ModelProto``; the input model is untouched.
        mode: ``"layer"``, ``"global"`` or ``"n:m"`` as ``"2:4"``.
        layers: one report per weight that was sparsified, in graph order.
        skipped: weights left alone, each with the reason (excluded, too small, not a pure weight, N:M
            reduction size not a multiple of M, ...).
        unmatched_exclude: ``exclude`` patterns that matched no prunable weight or reader (likely typos).
        unmatched_layer_sparsity: ``layer_sparsity`` patterns that matched no prunable weight or reader.
    """

    model: ModelProto
    mode: str
    layers: tuple[LayerReport, ...]
    skipped: tuple[SkippedWeight, ...]
    unmatched_exclude: tuple[str, ...] = ()
    unmatched_layer_sparsity: tuple[str, ...] = field(default=())

    @property
    def numel(self) -> int:
        """Elements of all sparsified weights."""
        return sum(r.numel for r in self.layers)

    @property
    def zeros_before(self) -> int:
        """Zeros in the sparsified weights before."""
        return sum(r.zeros_before for r in self.layers)

    @property
    def zeros_after(self) -> int:
        """Zeros in the sparsified weights after."""
        return sum(r.zeros_after for r in self.layers)

    @property
    def sparsity(self) -> float:
        """Overall achieved sparsity of the sparsified weights."""
        return self.zeros_after / self.numel if self.numel else 0.0

    @property
    def unmatched_patterns(self) -> tuple[str, ...]:
        """``exclude`` and ``layer_sparsity`` patterns that matched nothing (warn the user about these)."""
        return self.unmatched_exclude + self.unmatched_layer_sparsity

    def report(self) -> dict[str, Any]:
        """A JSON-ready account for prune reports: ``sparsity`` (overall figures), ``layers``, ``skipped``
        (each ``{"name", "reason"}``) and the unmatched patterns."""
        return {
            "sparsity": {
                "mode": self.mode,
                "overall": self.sparsity,
                "numel": self.numel,
                "zeros_before": self.zeros_before,
                "zeros_after": self.zeros_after,
            },
            "layers": [
                {"name": r.name, "readers": list(r.readers), "shape": list(r.shape), "numel": r.numel,
                 "zeros_before": r.zeros_before, "zeros_after": r.zeros_after, "target": r.target,
                 "sparsity": r.sparsity}
                for r in self.layers
            ],
            "skipped": [{"name": s.name, "reason": s.reason} for s in self.skipped],
            "unmatched_exclude": list(self.unmatched_exclude),
            "unmatched_layer_sparsity": list(self.unmatched_layer_sparsity),
        }


# -- option parsing and validation -----------------------------------------------------------------
def _check_fraction(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{what} must be a number in [0, 1), got {value!r}")
    out = float(value)
    if not math.isfinite(out) or not 0.0 <= out < 1.0:
        raise ConfigError(f"{what} must be in [0, 1) (fraction of weights set to zero), got {value!r}")
    return out


def _check_patterns(patterns: object, what: str) -> tuple[str, ...]:
    if isinstance(patterns, (str, bytes)) or not isinstance(patterns, Iterable):
        raise ConfigError(f"{what} must be a list of shell-style patterns, e.g. ['conv1', 'head.*'], "
                          f"got {patterns!r}")
    out = tuple(patterns)
    for p in out:
        if not isinstance(p, str) or not p.strip():
            raise ConfigError(f"{what} pattern {p!r} is not a non-empty string")
    return out


def _check_min_size(min_size: object) -> int:
    if isinstance(min_size, bool) or not isinstance(min_size, numbers.Integral) or int(min_size) < 0:
        raise ConfigError(f"min_size must be an integer >= 0 (elements), got {min_size!r}")
    return int(min_size)


def parse_layer_sparsity(specs: Iterable[str]) -> dict[str, float]:
    """Parse ``'pattern=fraction'`` strings (as given on the command line) into a pattern→sparsity dict.

    Args:
        specs: e.g. ``["conv1=0.2", "head.*=0.0"]``. A later spec for the same pattern replaces the earlier.

    Returns:
        ``{"conv1": 0.2, "head.*": 0.0}``, in the order given.

    Raises:
        ConfigError: a spec lacks ``=``, has an empty pattern, or a value outside ``[0, 1)``.

    Example:
        >>> parse_layer_sparsity(["conv1=0.2"])
        {'conv1': 0.2}
    """
    if isinstance(specs, str):
        specs = [specs]
    out: dict[str, float] = {}
    for spec in specs:
        pattern, sep, value = str(spec).rpartition("=")
        if not sep or not pattern.strip():
            raise ConfigError(f"--layer-sparsity {spec!r} is not of the form 'pattern=fraction', e.g. 'conv1=0.3'")
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(
                f"--layer-sparsity {spec!r}: {value!r} is not a number; write e.g. '{pattern}=0.3'"
            ) from None
        out[pattern.strip()] = _check_fraction(number, f"--layer-sparsity '{pattern.strip()}'")
    return out


def parse_nm(spec: str) -> tuple[int, int]:
    """Parse an N:M pattern such as ``"2:4"`` into ``(2, 4)``.

    Raises:
        ConfigError: not two integers separated by ``:``, or not ``0 < n < m``.

    Example:
        >>> parse_nm("2:4")
        (2, 4)
    """
    parts = str(spec).strip().split(":")
    try:
        if len(parts) != 2:
            raise ValueError
        n, m = int(parts[0]), int(parts[1])
    except ValueError:
        raise ConfigError(f"N:M pattern {spec!r} must be two integers as 'N:M', e.g. '2:4'") from None
    return _check_nm(n, m)


def _check_nm(n: object, m: object) -> tuple[int, int]:
    for name, v in (("n", n), ("m", m)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise ConfigError(f"N:M {name} must be an integer, got {v!r}")
    if not 0 < int(n) < int(m):  # type: ignore[call-overload]
        raise ConfigError(f"N:M pattern needs 0 < n < m (keep n of every m weights), got {n}:{m}; try 2:4")
    return int(n), int(m)  # type: ignore[call-overload]


# -- scores and selection --------------------------------------------------------------------------
def _magnitude(w: np.ndarray) -> np.ndarray:
    """``|w|`` in a dtype numpy can partition exactly (bfloat16 widens to float32 losslessly)."""
    if w.dtype in (np.float16, np.float32, np.float64):
        return np.abs(w)
    return np.abs(w.astype(np.float32))


class _Zeros:
    """What "zero" means for each weight of one model: ``0``, or the zero point of a quantized weight."""

    def __init__(self, model: ModelProto) -> None:
        self._model = model
        self._index: GraphIndex | None = None

    def _idx(self) -> GraphIndex:
        if self._index is None:
            self._index = GraphIndex(self._model)
        return self._index

    def zero(self, pw: PrunableWeight, w: np.ndarray) -> np.ndarray:
        """The zero of ``pw``, shaped to broadcast against ``w``, in ``w``'s dtype."""
        if pw.quant is None:
            return np.zeros((), dtype=w.dtype)
        return zero_point(self._idx(), pw.quant, w.ndim)

    def values(self, pw: PrunableWeight, w: np.ndarray) -> np.ndarray:
        """The values whose magnitude ranks entries: ``w``, or ``(q - zero_point) * scale`` when quantized."""
        return w if pw.quant is None else dequantize(self._idx(), pw.quant, w)


def _score_key(pw: PrunableWeight, w: np.ndarray, scores: Mapping[str, np.ndarray] | None,
               zeros: _Zeros) -> np.ndarray:
    """The array whose smallest entries are pruned: ``|w|`` (dequantized), or the caller's scores with zeros
    first."""
    if scores is None:
        return _magnitude(zeros.values(pw, w))
    if pw.name not in scores:
        raise ConfigError(f"scores has no entry for weight '{pw.name}'; give one for every prunable weight "
                          f"or exclude it")
    s = np.asarray(scores[pw.name])
    if s.shape != w.shape:
        raise ConfigError(f"scores for weight '{pw.name}' have shape {s.shape}, expected {w.shape}")
    if s.dtype.kind not in "fiu":
        raise ConfigError(f"scores for weight '{pw.name}' must be real numbers, got dtype {s.dtype}")
    key = s.astype(np.float64, copy=True)
    if np.isnan(key).any():
        raise ConfigError(f"scores for weight '{pw.name}' contain NaN; fix the scoring (e.g. empty calibration)")
    key[w == zeros.zero(pw, w)] = -np.inf  # already-zero weights are pruned first, whatever the criterion says
    return key


def _kth_smallest(values: np.ndarray, k: int) -> np.generic:
    """The ``k``-th smallest entry (1-based) of a flat array, as a scalar of its dtype; NaN sorts last."""
    part = values.copy()
    part.partition(k - 1)
    return part[k - 1]


def _count_below(flat: np.ndarray, threshold: np.generic) -> int:
    """Entries strictly before ``threshold`` in ``(value, index)`` order, NaN counting as largest."""
    if np.isnan(threshold):
        return int(np.count_nonzero(~np.isnan(flat)))
    return int(np.count_nonzero(flat < threshold))


def _smallest_mask(flat: np.ndarray, threshold: np.generic, budget: int) -> tuple[np.ndarray, int]:
    """Mask of entries below ``threshold`` plus the first ``budget`` entries equal to it (by index).

    Returns the mask and the number of tie entries taken, so global scope can spend one budget across
    weights in order. ``flat`` must have the dtype of ``threshold`` (comparisons stay exact).
    """
    if np.isnan(threshold):
        mask = ~np.isnan(flat)
        ties = np.flatnonzero(~mask)[:budget]
    else:
        mask = flat < threshold
        ties = np.flatnonzero(flat == threshold)[:budget]
    mask[ties] = True
    return mask, len(ties)


def _lowest_k(flat: np.ndarray, k: int) -> np.ndarray:
    """Mask of the ``k`` entries smallest by ``(value, index)``, without sorting everything."""
    if k <= 0:
        return np.zeros(flat.size, dtype=bool)
    if k >= flat.size:
        return np.ones(flat.size, dtype=bool)
    threshold = _kth_smallest(flat, k)
    mask, _ = _smallest_mask(flat, threshold, k - _count_below(flat, threshold))
    return mask


#: Largest M for which N:M ranks are computed by pairwise comparisons (m*(m-1)/2 vector passes).
_PAIRWISE_MAX_M = 8


def _nm_mask(pw: PrunableWeight, key: np.ndarray, n: int, m: int) -> np.ndarray:
    """Mask pruning the ``m - n`` smallest of every ``m`` consecutive entries along the reduction axes.

    The reduction axes are contiguous, so ``key`` is viewed without copying as ``[pre, R/m, m, post]``
    and groups run along axis 2. The rank of an entry in its group is the number of entries that come
    before it in ``(score, index)`` order; the ``m - n`` lowest ranks are pruned. For small ``m`` ranks come
    from pairwise comparisons (several times faster than ``argsort`` on millions of 4-element groups);
    otherwise, or when scores contain NaN, from a stable ``argsort``.
    """
    axes = pw.reduction_axes
    if list(axes) != list(range(axes[0], axes[-1] + 1)):  # weights.py never makes these
        raise ConfigError(f"weight '{pw.name}': reduction axes {list(axes)} are not contiguous")
    pre = int(np.prod(key.shape[: axes[0]], dtype=np.int64))
    post = int(np.prod(key.shape[axes[-1] + 1 :], dtype=np.int64))
    groups = key.reshape(pre, -1, m, post)
    if m <= _PAIRWISE_MAX_M and not (key.dtype.kind == "f" and np.isnan(key).any()):
        rank = np.zeros(groups.shape, dtype=np.uint8)
        for i in range(m):
            for j in range(i + 1, m):
                j_first = groups[:, :, j, :] < groups[:, :, i, :]  # ties: the lower index comes first
                rank[:, :, i, :] += j_first
                rank[:, :, j, :] += ~j_first
        mask = rank < (m - n)
    else:
        order = np.argsort(groups, axis=2, kind="stable")[:, :, : m - n, :]
        mask = np.zeros(groups.shape, dtype=bool)
        np.put_along_axis(mask, order, True, axis=2)
    return mask.reshape(key.shape)


# -- common driver ---------------------------------------------------------------------------------
def _matches(pattern: str, pw: PrunableWeight) -> bool:
    return matches_any([pw.name, *pw.readers], (pattern,))


@dataclass(frozen=True)
class _Selection:
    weights: tuple[PrunableWeight, ...]
    skipped: tuple[SkippedWeight, ...]
    unmatched_exclude: tuple[str, ...]


def _select(model: ModelProto, exclude: tuple[str, ...], min_size: int,
            scores: Mapping[str, np.ndarray] | None) -> _Selection:
    """Prunable weights minus excluded and too-small ones; everything left out is reported."""
    scan = scan_weights(model)
    skipped = list(scan.skipped)
    chosen: list[PrunableWeight] = []
    used: set[str] = set()
    for pw in scan.weights:
        hit = [p for p in exclude if _matches(p, pw)]
        used.update(hit)
        if hit:
            skipped.append(SkippedWeight(pw.name, f"excluded by pattern '{hit[0]}'"))
        elif pw.numel < min_size:
            skipped.append(SkippedWeight(pw.name, f"{pw.numel} elements, fewer than min_size={min_size}"))
        else:
            chosen.append(pw)
    if scores is not None:
        extra = sorted(set(scores) - {pw.name for pw in scan.weights})
        if extra:
            log.warning("scores given for %d tensors that are not prunable weights (ignored): %s",
                        len(extra), ", ".join(extra[:5]))
    return _Selection(tuple(chosen), tuple(skipped), tuple(p for p in exclude if p not in used))


def _source(model: str | os.PathLike[str] | ModelProto) -> ModelProto:
    """The model to read from: the caller's ModelProto as is (never written), or the loaded file."""
    return model if isinstance(model, ModelProto) else load_model(model)


def _output(source: ModelProto, weights: Sequence[PrunableWeight]) -> ModelProto:
    """The output model: a copy of ``source`` whose to-be-sparsified initializers are filled later, so
    the result costs one model of memory, not two (see ``copy_model_without_weights``)."""
    return copy_model_without_weights(source, [pw.name for pw in weights if pw.kind == "initializer"])


def _apply(out: ModelProto, pw: PrunableWeight, w: np.ndarray, mask: np.ndarray, target: float,
           zero_value: np.ndarray, values: np.ndarray | None = None) -> LayerReport:
    """Write ``w`` with the ``mask``ed entries set to ``zero_value`` into ``out`` (``w`` is not modified).

    Entries that are already zero are left as they are (a ``-0.0`` keeps its sign bit), so a weight that
    needs no new zeros comes out bit-identical. ``mask`` is consumed (edited in place). ``zero_value`` is
    ``0`` for a float weight and the (per-channel) zero point of a quantized one. ``values`` (from a
    :data:`WeightUpdate`) replaces the surviving entries; the zeros after are then counted on what is written.
    """
    flat = w.reshape(-1)
    fill = zero_value.reshape(-1) if zero_value.size == 1 else np.broadcast_to(zero_value, w.shape).reshape(-1)
    zero = flat == fill
    before = int(np.count_nonzero(zero))
    hit = mask.reshape(-1)
    if values is not None:  # masked entries keep their old bits here (so a -0.0 stays), then hit zeroes them
        flat = np.where(hit, flat, values.reshape(-1).astype(w.dtype, copy=False))
    hit &= ~zero
    del zero
    written = np.where(hit, fill[0] if fill.size == 1 else fill, flat)
    after = before + int(np.count_nonzero(hit)) if values is None else int(np.count_nonzero(written == fill))
    data = little_endian_bytes(written)
    del written
    set_weight_bytes(out, pw, data)  # the zeroed array is already freed when protobuf copies the bytes
    del data
    return LayerReport(pw.name, pw.readers, pw.shape, pw.numel, before, after, target)


def _restrict(sel: _Selection, only: Collection[str] | None) -> _Selection:
    """``sel`` limited to the weights named in ``only`` (all of them for ``None``); the others are not
    reported at all, so a caller pruning a model in several calls (stage by stage) reports each weight once."""
    if only is None:
        return sel
    wanted = set(only)
    return _Selection(tuple(pw for pw in sel.weights if pw.name in wanted), sel.skipped, sel.unmatched_exclude)


def _updated(update: WeightUpdate | None, pw: PrunableWeight, w: np.ndarray, target: LayerTarget
             ) -> tuple[np.ndarray, np.ndarray] | None:
    """Run ``update`` on one weight and check what it gives back: a bool mask and values of ``w``'s shape."""
    if update is None:
        return None
    got = update(pw, w, target)
    if got is None:
        return None
    mask, values = np.asarray(got[0]), np.asarray(got[1])
    if mask.shape != w.shape or values.shape != w.shape or mask.dtype != np.bool_:
        raise ConfigError(f"weight update for '{pw.name}' returned mask {mask.shape} ({mask.dtype}) and values "
                          f"{values.shape}, expected a bool mask and values of shape {w.shape}")
    return mask.copy(), values


def sparsify(
    model: str | os.PathLike[str] | ModelProto,
    *,
    sparsity: float,
    scope: str = "layer",
    layer_sparsity: Mapping[str, float] | None = None,
    exclude: Sequence[str] = (),
    min_size: int = 0,
    scores: Mapping[str, np.ndarray] | None = None,
    update: WeightUpdate | None = None,
    only: Collection[str] | None = None,
) -> SparsifyResult:
    """Zero the lowest-scoring weights of every prunable layer (unstructured sparsity).

    Args:
        model: a path or a ``ModelProto`` (never modified).
        sparsity: fraction of weights to zero, in ``[0, 1)``.
        scope: ``"layer"``: every weight gets exactly ``round(sparsity * numel)`` zeros. ``"global"``:
            one threshold over all covered weights, exactly ``round(sparsity * total)`` zeros in total
            (layers with small scores lose more). Weights with a ``layer_sparsity`` override are pruned at
            their own rate in both scopes and are not part of the global total.
        layer_sparsity: shell-style pattern → sparsity, matched against weight names and reader node
            names; the first matching pattern wins. Parse CLI strings with :func:`parse_layer_sparsity`.
        exclude: shell-style patterns (weight or node names) of weights to leave dense.
        min_size: weights with fewer elements are left dense (small layers are cheap and sensitive).
        scores: optional weight name → importance array of the weight's shape (higher = keep); default
            ``|W|``. Every covered weight needs an entry. Zero weights are pruned first regardless.
        update: optional :data:`WeightUpdate` (layer scope only) that zeroes exactly the count it is given
            and may change the surviving weights (SparseGPT); weights it declines fall back to ``scores``.
        only: prune only the weights of these names (the others are left as they are and not reported).

    Returns:
        A :class:`SparsifyResult` with the new model and a per-layer report.

    Raises:
        ConfigError: an option is out of range or malformed, or ``scores`` lacks or mis-shapes a weight.
        ModelLoadError: ``model`` is a path that cannot be loaded.

    Example:
        >>> result = sparsify("model.onnx", sparsity=0.5, exclude=["classifier*"])  # doctest: +SKIP
        >>> round(result.sparsity, 3)  # doctest: +SKIP
        0.5
    """
    sparsity = _check_fraction(sparsity, "sparsity")
    if scope not in SCOPES:
        raise ConfigError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    overrides = dict(layer_sparsity or {})
    for pattern, value in overrides.items():
        _check_patterns([pattern], "layer_sparsity")
        _check_fraction(value, f"layer sparsity for '{pattern}'")
    exclude = _check_patterns(exclude, "exclude")
    min_size = _check_min_size(min_size)

    if update is not None and scope != "layer":
        raise ConfigError("a weight update (sparsegpt) prunes each layer to its own exact count; use scope 'layer'")
    source = _source(model)
    sel = _restrict(_select(source, exclude, min_size, scores), only)
    targets: dict[str, float | None] = {}
    used: set[str] = set()
    for pw in sel.weights:
        hit = next((p for p in overrides if _matches(p, pw)), None)
        if hit is not None:
            used.add(hit)
        targets[pw.name] = float(overrides[hit]) if hit is not None else (sparsity if scope == "layer" else None)

    pooled = [pw for pw in sel.weights if targets[pw.name] is None]
    zeros = _Zeros(source)
    threshold, budget = _global_threshold(source, pooled, sparsity, scores, zeros)
    out = _output(source, sel.weights)
    reports: list[LayerReport] = []
    for pw in sel.weights:
        w = get_weight(source, pw, copy=False)
        target = targets[pw.name]
        got = _updated(update, pw, w, LayerTarget(zeros=round(target * pw.numel))) if target is not None else None
        if got is not None:
            reports.append(_apply(out, pw, w, got[0], target, zeros.zero(pw, w), got[1]))  # type: ignore[arg-type]
            del w, got
            continue
        key = _score_key(pw, w, scores, zeros).ravel()
        if target is not None:
            mask = _lowest_k(key, round(target * pw.numel))
        elif threshold is None:
            mask = np.zeros(key.size, dtype=bool)
        else:
            mask, used_ties = _smallest_mask(key.astype(threshold.dtype, copy=False), threshold, budget)
            budget -= used_ties
        del key  # free the scores before _apply allocates the new tensor: peak memory is what users feel
        reports.append(_apply(out, pw, w, mask, sparsity if target is None else target, zeros.zero(pw, w)))
        del w, mask
    result = SparsifyResult(
        model=out,
        mode=scope,
        layers=tuple(reports),
        skipped=sel.skipped,
        unmatched_exclude=sel.unmatched_exclude,
        unmatched_layer_sparsity=tuple(p for p in overrides if p not in used),
    )
    log.info("sparsified %d weights (%s scope): %d of %d entries zero (%.4f)", len(reports), scope,
             result.zeros_after, result.numel, result.sparsity)
    return result


def _key_dtype(pw: PrunableWeight, scores: Mapping[str, np.ndarray] | None) -> np.dtype:
    """The dtype :func:`_score_key` returns for ``pw`` (float64 for caller scores)."""
    if scores is not None:
        return np.dtype(np.float64)
    if pw.quant is not None:
        return np.dtype(np.float32)  # the magnitude of the dequantized value
    return _magnitude(np.zeros(1, dtype=helper.tensor_dtype_to_np_dtype(pw.data_type))).dtype


def _global_threshold(
    model: ModelProto, pooled: list[PrunableWeight], sparsity: float, scores: Mapping[str, np.ndarray] | None,
    zeros: _Zeros,
) -> tuple[np.generic | None, int]:
    """Threshold and tie budget that give exactly ``round(sparsity * total)`` zeros over ``pooled``.

    The scores of all pooled weights are packed into one buffer (the weights' own float dtype for
    ``|W|``; mixed dtypes widen exactly), partitioned in place and freed before the output is written,
    so the peak stays near the models plus one score buffer. Callers compare each weight's scores in the
    threshold's dtype. ``None`` means nothing is pruned.
    """
    total = sum(pw.numel for pw in pooled)
    k = round(sparsity * total)
    if k <= 0:
        return None, 0
    buffer = np.empty(total, dtype=np.result_type(*[_key_dtype(pw, scores) for pw in pooled]))
    offset = 0
    for pw in pooled:
        key = _score_key(pw, get_weight(model, pw), scores, zeros).ravel()
        buffer[offset : offset + key.size] = key
        offset += key.size
        del key
    buffer.partition(k - 1)
    threshold = buffer[k - 1]
    budget = k - _count_below(buffer, threshold)
    del buffer
    return threshold, budget


def sparsify_nm(
    model: str | os.PathLike[str] | ModelProto,
    *,
    n: int,
    m: int,
    exclude: Sequence[str] = (),
    min_size: int = 0,
    scores: Mapping[str, np.ndarray] | None = None,
    update: WeightUpdate | None = None,
    only: Collection[str] | None = None,
) -> SparsifyResult:
    """Semi-structured N:M sparsity: in every group of ``m`` consecutive weights along the reduction axis,
    keep the ``n`` with the largest score.

    Groups run along :attr:`PrunableWeight.reduction_axes` (Conv: input channels × kernel of each output
    channel; Gemm: the K axis, respecting ``transB``; MatMul: axis -2). Layers whose reduction size is not
    a multiple of ``m`` (or that have no single reduction axis) are skipped and reported. Ties go as a
    stable argsort of ``(score, index in group)`` would order them: the lower index is pruned first.

    Args:
        model: a path or a ``ModelProto`` (never modified).
        n: weights kept per group; parse ``"2:4"`` with :func:`parse_nm`.
        m: group length.
        exclude: shell-style patterns (weight or node names) of weights to leave dense.
        min_size: weights with fewer elements are left dense.
        scores: optional weight name → importance array (higher = keep); default ``|W|``.
        update: optional :data:`WeightUpdate` that picks each group's zeros itself and may change the
            surviving weights (SparseGPT); weights it declines fall back to ``scores``.
        only: prune only the weights of these names (the others are left as they are and not reported).

    Returns:
        A :class:`SparsifyResult` (``mode`` is ``"n:m"`` spelled as ``"2:4"``).

    Raises:
        ConfigError: not ``0 < n < m``, malformed patterns, bad ``min_size`` or ``scores``.

    Example:
        >>> n, m = parse_nm("2:4")
        >>> result = sparsify_nm("model.onnx", n=n, m=m)  # doctest: +SKIP
    """
    n, m = _check_nm(n, m)
    exclude = _check_patterns(exclude, "exclude")
    min_size = _check_min_size(min_size)
    source = _source(model)
    sel = _restrict(_select(source, exclude, min_size, scores), only)
    skipped = list(sel.skipped)
    chosen: list[PrunableWeight] = []
    for pw in sel.weights:
        if not pw.reduction_axes:
            skipped.append(SkippedWeight(pw.name, f"no N:M reduction axis: {pw.reduction_note}"))
        elif pw.reduction_size % m:
            skipped.append(SkippedWeight(
                pw.name, f"reduction size {pw.reduction_size} (axes {list(pw.reduction_axes)} of shape "
                         f"{list(pw.shape)}) is not a multiple of M={m}"))
        else:
            chosen.append(pw)
    out = _output(source, chosen)
    zeros = _Zeros(source)
    reports: list[LayerReport] = []
    for pw in chosen:
        w = get_weight(source, pw, copy=False)
        got = _updated(update, pw, w, LayerTarget(nm=(n, m)))
        if got is not None:
            reports.append(_apply(out, pw, w, got[0], (m - n) / m, zeros.zero(pw, w), got[1]))
            del w, got
            continue
        mask = _nm_mask(pw, _score_key(pw, w, scores, zeros), n, m)
        reports.append(_apply(out, pw, w, mask, (m - n) / m, zeros.zero(pw, w)))
        del w, mask
    result = SparsifyResult(
        model=out,
        mode=f"{n}:{m}",
        layers=tuple(reports),
        skipped=tuple(skipped),
        unmatched_exclude=sel.unmatched_exclude,
    )
    log.info("%d:%d sparsity on %d weights: %d of %d entries zero", n, m, len(reports), result.zeros_after,
             result.numel)
    return result
