"""onnxprune: a framework-agnostic pruner for ONNX models.

The public API is re-exported here. Importing the package never imports onnxruntime; the modules that
run models import it when they are used.
"""

from __future__ import annotations

from onnxprune.config import PruneConfig
from onnxprune.core.errors import (
    CalibrationError,
    ConfigError,
    ModelLoadError,
    OnnxPruneError,
    OutputError,
    PlanError,
    UnsupportedModelError,
    ValidationError,
)
from onnxprune.core.io import load_model, save_model
from onnxprune.core.stats import ModelStats, model_stats
from onnxprune.pipeline import PruneResult, prune
from onnxprune.sparse.sparsify import SparsifyResult, parse_layer_sparsity, parse_nm, sparsify, sparsify_nm
from onnxprune.sparse.storage import from_sparse_storage, to_sparse_storage
from onnxprune.structured.analysis import ChannelGroup, DependencyGraph, ParamCut, analyze
from onnxprune.structured.importance import register_criterion
from onnxprune.structured.oracle import zeroed_reference
from onnxprune.structured.plan import PrunePlan, make_plan
from onnxprune.structured.prune import StructuredResult, prune_structured
from onnxprune.structured.rules.registry import RuleSpec
from onnxprune.structured.surgery import apply_plan

__version__ = "0.1.0"

#: Functions that run models live in modules importing onnxruntime; load them on first use only.
_LAZY = {
    "validate_models": "onnxprune.runtime.validate",
    "compare_outputs": "onnxprune.runtime.validate",
    "benchmark": "onnxprune.runtime.bench",
    "evaluate_accuracy": "onnxprune.runtime.evaluate",
    "evaluate_perplexity": "onnxprune.runtime.perplexity",
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
    "evaluate_perplexity",
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
