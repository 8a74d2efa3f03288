"""The exception hierarchy of onnxprune.

Every error a user can cause is an :class:`OnnxPruneError`. Its message is one line that names what is
wrong (file, node, op_type, tensor, axis) and how to fix it, so the CLI can print it as is.
"""

from __future__ import annotations


class OnnxPruneError(Exception):
    """Base class of every error onnxprune raises on purpose."""


class ModelLoadError(OnnxPruneError):
    """The model file is missing, unreadable, not ONNX, truncated or fails the checker."""


class UnsupportedModelError(OnnxPruneError):
    """The model is valid ONNX but uses something onnxprune cannot handle (e.g. an opset below 7)."""


class ConfigError(OnnxPruneError, ValueError):
    """An option is out of range or inconsistent with the others."""


class PlanError(OnnxPruneError):
    """A prune plan is malformed or was made for another model."""


class ValidationError(OnnxPruneError):
    """The pruned model does not match the original within the asked tolerance."""


class CalibrationError(OnnxPruneError):
    """Calibration or evaluation data is missing, malformed or does not fit the model's inputs."""


class OutputError(OnnxPruneError):
    """The output cannot be written (same as input, missing folder, not writable, disk full)."""


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message, for our one-line errors.

    onnx and onnxruntime often raise messages of many lines (with the op's whole signature); a user needs
    the first.
    """
    for line in str(exc).strip().splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


class SlowerModelError(ValidationError):
    """The pruned model ran slower than the original beyond the measured spread (``--allow-slower`` keeps it)."""
