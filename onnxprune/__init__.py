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
from onnxprune.sparse_storage import from_sparse_storage, to_sparse_storage
from onnxprune.sparsify import SparsifyResult, parse_layer_sparsity, parse_nm, sparsify, sparsify_nm
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
    "SparsifyResult",
    "UnsupportedModelError",
    "ValidationError",
    "__version__",
    "from_sparse_storage",
    "load_model",
    "model_stats",
    "parse_layer_sparsity",
    "parse_nm",
    "save_model",
    "sparsify",
    "sparsify_nm",
    "to_sparse_storage",
]
