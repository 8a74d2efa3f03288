"""``--keep-tokens``: vocabulary pruning in a prune run, with the kept ids read and the result proven.

What it adds to :func:`onnxprune.structured.vocab.prune_vocab`: the ids come from a file (text with ids
separated by spaces, commas or newlines, a ``.npy`` array, or an ``.npz`` whose arrays are all read) or, given
as ``calib``, from the calibration data's token ids (the graph input that feeds the embedding). The result is
proven in onnxruntime: on the calibration inputs (else seeded random ids), each id outside the kept set
replaced by the unknown id, the pruned model's logits must equal the unpruned model's at the kept ids.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from onnx import ModelProto

from onnxprune.core.errors import ConfigError, ValidationError
from onnxprune.structured.vocab import find_vocab, prune_vocab

log = logging.getLogger(__name__)

#: The ``--keep-tokens`` value that means "the ids of the calibration data".
FROM_CALIB = "calib"


def read_token_ids(spec: str | os.PathLike[str], *, calib: str | None, ids_input: str) -> np.ndarray:
    """The ids ``spec`` names (see the module docstring), unique and sorted.

    Raises:
        ConfigError: the file is missing, unreadable or holds something else than integers; ``calib`` asked
            for without calibration data, or that data has no ``ids_input``.
    """
    if str(spec) == FROM_CALIB:
        if calib is None:
            raise ConfigError("--keep-tokens calib keeps the token ids of the calibration data; pass --calib data.npz")
        from onnxprune.runtime.feeds import read_npz

        arrays = read_npz(calib, what="calibration data (--calib)")
        if ids_input not in arrays:
            raise ConfigError(f"--keep-tokens calib: the calibration data {calib} has no '{ids_input}' (the model's "
                              f"token ids); its keys are {', '.join(sorted(arrays))}")
        return np.unique(arrays[ids_input].astype(np.int64))
    path = Path(spec)
    if not path.is_file():
        raise ConfigError(f"--keep-tokens: no file {path}; give a file of token ids (text, .npy or .npz) or 'calib'")
    try:
        if path.suffix == ".npy":
            values = np.load(path, allow_pickle=False)
        elif path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                values = np.concatenate([data[k].reshape(-1) for k in data.files]) if data.files else np.zeros(0)
        else:
            values = np.array(path.read_text(encoding="utf-8").replace(",", " ").split(), dtype=np.int64)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--keep-tokens: {path} is not a list of integer token ids ({exc})") from exc
    if values.size and not np.issubdtype(values.dtype, np.integer):
        raise ConfigError(f"--keep-tokens: {path} holds {values.dtype} values, not integer token ids")
    return np.unique(values.astype(np.int64).reshape(-1))


def prune_vocabulary(model: ModelProto, spec: str | os.PathLike[str], *, unknown: int | None = None,
                     calib: str | None = None, validate: bool = True, atol: float = 1e-4, rtol: float = 1e-4,
                     dims: Mapping[str, int] | None = None) -> tuple[ModelProto, dict[str, Any]]:
    """Keep the token ids ``spec`` names in ``model`` (see the module docstring); returns the model and the
    report's ``vocab`` entry (with ``check`` when ``validate``; ``dims``: sizes of dynamic input axes for the
    random ids checked on without ``calib``).

    Raises:
        ConfigError: bad ids (:func:`read_token_ids`, :func:`~onnxprune.structured.vocab.prune_vocab`).
        UnsupportedModelError: no vocabulary found.
        ValidationError: the pruned logits differ from the original's at the kept ids.
    """
    vocab = find_vocab(model)
    kept = read_token_ids(spec, calib=calib, ids_input=vocab.ids)
    result = prune_vocab(model, kept, unknown=unknown)
    report = {**result.report, "source": str(spec)}
    if validate:
        report["check"] = _check(model, result.model, result.kept, report["unknown_token_id"], vocab.ids,
                                 vocab.logits, calib, atol, rtol, dims)
    return result.model, report


def _check(before: ModelProto, after: ModelProto, kept: np.ndarray, unknown: int, ids: str, logits: str,
           calib: str | None, atol: float, rtol: float, dims: Mapping[str, int] | None) -> dict[str, Any]:
    from onnxprune.runtime.feeds import load_npz_feeds, random_feeds
    from onnxprune.runtime.session import create_session, run_session

    if calib is not None:
        feeds = load_npz_feeds(calib, before, what="calibration data (--calib)")
        data = f"calibration data {calib}"
    else:
        feeds = random_feeds(before, seed=0, batch=2, dims=dims)
        feeds[ids] = np.random.default_rng(0).choice(kept, size=feeds[ids].shape).astype(feeds[ids].dtype)
        data = "random kept ids (seed 0)"
    feeds[ids] = np.where(np.isin(feeds[ids], kept), feeds[ids], unknown).astype(feeds[ids].dtype)
    ref = run_session(create_session(before), feeds)[logits][..., kept]
    got = run_session(create_session(after), feeds)[logits]
    diff = float(np.abs(got.astype(np.float64) - ref).max()) if ref.size else 0.0
    bound = atol + rtol * float(np.abs(ref).max()) if ref.size else atol
    check = {"passed": got.shape == ref.shape and diff <= bound, "max_diff": diff, "bound": bound, "data": data,
             "rule": "logits == original logits[..., kept] on inputs whose ids are kept"}
    if not check["passed"]:
        raise ValidationError(f"vocabulary pruning check failed on {data}: max|diff| {diff:.3g} > {bound:.3g} "
                              f"(shapes {got.shape} vs {ref.shape}); no output written. Please report this model")
    log.info("vocabulary check passed: max|diff| %.3g on %s", diff, data)
    return check
