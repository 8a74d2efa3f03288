"""Classification accuracy of an ONNX model on a labelled ``.npz`` data set, measured in onnxruntime.

Why this module exists: "the outputs barely changed" is not what a user cares about after pruning; the
accuracy on real held-out data is. This module measures top-1 (and top-5 when there are at least five
classes) with onnxruntime alone, so the same number can be reproduced without the training framework, and
refuses malformed data (missing key, wrong shape, labels out of range) with one clear
:class:`CalibrationError` before running anything long.

The data file holds one array per model input, keyed by the input's name, plus an integer label array
(key ``labels`` by default). The first axis of every array is the sample axis.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from onnx import ModelProto, TensorProto

from onnxprune.core.errors import CalibrationError, ConfigError
from onnxprune.core.io import load_model
from onnxprune.runtime.feeds import (
    check_batch_size,
    check_feeds,
    fixed_batch_size,
    input_specs,
    iter_batches,
    load_npz_feeds,
    num_samples,
    read_npz,
)

log = logging.getLogger(__name__)

#: Classes needed before top-5 means anything (with fewer, top-5 is always 100%).
TOP5_MIN_CLASSES = 5


@dataclass(frozen=True)
class EvalResult:
    """Accuracy of one model on one data set.

    Attributes:
        top1: fraction of samples whose highest-scoring class is the label, in [0, 1].
        top5: fraction whose label is among the five highest scores; ``None`` when the model has fewer than
            five classes (not a failure: the metric does not apply).
        n: number of samples evaluated.
        num_classes: size of the class axis of the scored output.
        output: name of the model output that was scored.
    """

    top1: float
    top5: float | None
    n: int
    num_classes: int = 0
    output: str = ""

    def as_dict(self) -> dict[str, object]:
        """Plain dictionary for JSON reports."""
        return {"top1": self.top1, "top5": self.top5, "n": self.n, "num_classes": self.num_classes,
                "output": self.output}


def _pick_output(model: ModelProto, output: str | None) -> str:
    """The output to score: the named one, else the first float output of rank 2 ([N, classes])."""
    names = [o.name for o in model.graph.output]
    if output is not None:
        if output not in names:
            raise ConfigError(f"output '{output}' is not an output of the model; choose one of {names} "
                              f"(--output)")
        return output
    for vi in model.graph.output:
        tt = vi.type.tensor_type
        if tt.elem_type in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE) and (
            not tt.HasField("shape") or len(tt.shape.dim) == 2
        ):
            return vi.name
    raise ConfigError(f"no output of the model looks like class scores (a float [N, classes] tensor) among "
                      f"{names}; name the scores output with --output")


def _load_labels(data: str | os.PathLike[str] | Mapping[str, np.ndarray], key: str) -> np.ndarray:
    """The label array of ``data`` as int64, checked to be 1-D, non-empty, integral and non-negative.

    Raises:
        CalibrationError: the key is missing or the labels are not class indices.
    """
    if isinstance(data, Mapping):
        keys = sorted(str(k) for k in data)
        raw = np.asarray(data[key]) if key in data else None
    else:
        archive = read_npz(data, what="data file", example=f"input_name=x, {key}=y")
        keys = sorted(archive)
        raw = archive.get(key)
    if raw is None:
        where = "data" if isinstance(data, Mapping) else f"evaluation data {data}"
        raise CalibrationError(f"{where} has no label array '{key}' (it has {keys}); "
                               f"pass the key of the labels with --labels")
    if raw.ndim != 1 or raw.size == 0:
        raise CalibrationError(f"labels '{key}' must be a non-empty 1-D array of class indices, "
                               f"got shape {raw.shape}")
    if raw.dtype.kind == "f" and np.all(np.isfinite(raw)) and np.all(raw == np.round(raw)):
        raw = raw.astype(np.int64)
    if raw.dtype.kind not in "iu":
        raise CalibrationError(f"labels '{key}' must hold integer class indices, got dtype {raw.dtype}")
    labels = raw.astype(np.int64)
    if int(labels.min()) < 0:
        raise CalibrationError(f"labels '{key}' has negative class index {int(labels.min())}; "
                               f"labels must be 0..classes-1")
    return labels


def check_eval_data(
    model: ModelProto,
    data: str | os.PathLike[str] | Mapping[str, np.ndarray],
    *,
    labels: str = "labels",
    output: str | None = None,
) -> tuple[str, dict[str, np.ndarray], np.ndarray]:
    """Everything :func:`evaluate_accuracy` checks before running the model, without running it.

    Why separate: a prune run evaluates accuracy last, after minutes of calibration; it calls this first,
    so a missing label key or a wrong shape fails in a fraction of a second instead.

    Returns:
        The scored output's name, the checked feeds and the labels (int64).

    Raises:
        CalibrationError / ConfigError: as :func:`evaluate_accuracy`.
    """
    out_name = _pick_output(model, output)
    specs = input_specs(model)
    y = _load_labels(data, labels)
    feeds = (check_feeds(data, specs, where="data") if isinstance(data, Mapping)
             else load_npz_feeds(data, model, what="evaluation data"))
    n = num_samples({**feeds, labels: y})
    fixed = fixed_batch_size(specs)
    if fixed and n % fixed:
        raise CalibrationError(f"model inputs have fixed batch size {fixed}, which does not divide the {n} "
                               f"samples; export the model with a dynamic batch axis")
    declared = [o for o in model.graph.output if o.name == out_name][0].type.tensor_type.shape.dim
    classes = declared[1].dim_value if len(declared) == 2 and declared[1].HasField("dim_value") else 0
    if classes and int(y.max()) >= classes:
        bad = int(np.argmax(y >= classes))
        raise CalibrationError(f"label {int(y[bad])} at sample {bad} is out of range for output "
                               f"'{out_name}' with {classes} classes; labels must be 0..{classes - 1}")
    return out_name, feeds, y


def evaluate_accuracy(
    model: str | os.PathLike[str] | ModelProto,
    data: str | os.PathLike[str] | Mapping[str, np.ndarray],
    *,
    labels: str = "labels",
    output: str | None = None,
    batch_size: int = 256,
) -> EvalResult:
    """Top-1 and top-5 accuracy of a classifier on labelled data, run in onnxruntime on the CPU.

    Args:
        model: path to an ``.onnx`` file or a ``ModelProto`` (not modified).
        data: ``.npz`` path or mapping with one array per model input (keyed by input name) and labels.
        labels: key of the integer label array in ``data``.
        output: model output holding class scores; default the first float output of rank 2.
        batch_size: samples per onnxruntime call; a model with a fixed batch dimension uses that instead.

    Returns:
        An :class:`EvalResult`; ``top5`` is ``None`` when the model has fewer than five classes.

    Raises:
        CalibrationError: the data is missing a key, has the wrong shape or dtype, or labels are out of range.
        ConfigError: ``batch_size`` below 1, or ``output`` is not a model output.
        ModelLoadError: the model cannot be read.
        UnsupportedModelError: onnxruntime cannot load or run the model.

    Example:
        >>> r = evaluate_accuracy("models/digits_cnn.onnx", "models/digits_cnn_test.npz")  # doctest: +SKIP
        >>> print(f"{r.top1:.2%}")  # doctest: +SKIP
    """
    from onnxprune.runtime.session import create_session, run_session

    check_batch_size(batch_size)
    proto = load_model(model)
    out_name, feeds, y = check_eval_data(proto, data, labels=labels, output=output)
    n = len(y)
    step = fixed_batch_size(input_specs(proto)) or batch_size
    session = create_session(model if not isinstance(model, ModelProto) else proto, provider="cpu")
    top1_hits = top5_hits = classes = nonfinite = 0
    start = 0
    for batch in iter_batches(feeds, step):
        rows = num_samples(batch)
        truth = y[start:start + rows]
        start += rows
        scores = run_session(session, batch, outputs=[out_name], label="the model")[out_name]
        if scores.ndim != 2 or scores.shape[0] != rows:
            raise ConfigError(f"output '{out_name}' has shape {scores.shape} for a batch of {rows}; it must "
                              f"be [batch, classes] scores (choose another with --output)")
        if not classes:
            classes = int(scores.shape[1])
            if int(y.max()) >= classes:
                bad = int(np.argmax(y >= classes))
                raise CalibrationError(f"label {int(y[bad])} at sample {bad} is out of range for output "
                                       f"'{out_name}' with {classes} classes; labels must be 0..{classes - 1}")
        # Stable descending order, so ties resolve to the lower class index, as argmax does.
        order = np.argsort(-scores, axis=1, kind="stable")
        # A row of NaN scores "predicts" class 0 by argsort's order: count it as wrong, never as right.
        finite = np.isfinite(scores).all(axis=1)
        nonfinite += int(rows - np.count_nonzero(finite))
        top1_hits += int(np.sum((order[:, 0] == truth) & finite))
        if classes >= TOP5_MIN_CLASSES:
            top5_hits += int(np.sum(np.any(order[:, :5] == truth[:, None], axis=1) & finite))
    if nonfinite:
        log.warning("%d of %d samples gave NaN or infinite scores on output '%s'; they count as wrong",
                    nonfinite, n, out_name)
    result = EvalResult(
        top1=top1_hits / n,
        top5=top5_hits / n if classes >= TOP5_MIN_CLASSES else None,
        n=n,
        num_classes=classes,
        output=out_name,
    )
    log.debug("accuracy on %d samples: %s", n, result)
    return result
