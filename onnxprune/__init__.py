"""onnxprune: a framework-agnostic pruner for ONNX models.

The public API is re-exported here. Importing the package never imports onnxruntime; the modules that
run models import it when they are used.
"""

from __future__ import annotations

from onnxprune.errors import (
    CalibrationError,
    ConfigError,
    ModelLoadError,
    OnnxPruneError,
    OutputError,
    PlanError,
    UnsupportedModelError,
    ValidationError,
)
from onnxprune.io import load_model, save_model
from onnxprune.stats import ModelStats, model_stats

__version__ = "0.1.0"

__all__ = [
    "CalibrationError",
    "ConfigError",
    "ModelLoadError",
    "ModelStats",
    "OnnxPruneError",
    "OutputError",
    "PlanError",
    "UnsupportedModelError",
    "ValidationError",
    "__version__",
    "load_model",
    "model_stats",
    "save_model",
]
