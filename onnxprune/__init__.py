"""onnxprune: a framework-agnostic pruner for ONNX models.

The public API is re-exported here. Importing the package never imports onnxruntime; the modules that
run models import it when they are used.
"""

from __future__ import annotations

from onnxprune.analysis import ChannelGroup, DependencyGraph, ParamCut, analyze
from onnxprune.config import PruneConfig
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
from onnxprune.importance import register_criterion
from onnxprune.io import load_model, save_model
from onnxprune.oracle import zeroed_reference
from onnxprune.pipeline import PruneResult, prune
from onnxprune.plan import PrunePlan, make_plan
from onnxprune.rules.registry import RuleSpec
from onnxprune.sparse_storage import from_sparse_storage, to_sparse_storage
from onnxprune.sparsify import SparsifyResult, parse_layer_sparsity, parse_nm, sparsify, sparsify_nm
from onnxprune.stats import ModelStats, model_stats
from onnxprune.structured import StructuredResult, prune_structured
from onnxprune.surgery import apply_plan

__version__ = "0.1.0"

#: Functions that run models live in modules importing onnxruntime; load them on first use only.
_LAZY = {
    "validate_models": "onnxprune.validate",
    "compare_outputs": "onnxprune.validate",
    "benchmark": "onnxprune.bench",
    "evaluate_accuracy": "onnxprune.evaluate",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'onnxprune' has no attribute '{name}'")

__all__ = [
    "PruneConfig",
    "PruneResult",
    "prune",
    "validate_models",
    "compare_outputs",
    "benchmark",
    "evaluate_accuracy",
    "CalibrationError",
    "ChannelGroup",
    "DependencyGraph",
    "ParamCut",
    "PrunePlan",
    "RuleSpec",
    "StructuredResult",
    "analyze",
    "apply_plan",
    "make_plan",
    "prune_structured",
    "register_criterion",
    "zeroed_reference",
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
