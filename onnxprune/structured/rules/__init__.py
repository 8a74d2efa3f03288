"""Op rules, one module per family; importing this package registers the built-in rules.

Where a new rule goes: ``weighted`` (layers with weights), ``norm`` (normalizations), ``elementwise``,
``shape`` (Concat/Split/Slice/Transpose/reshaping), ``pool`` (pools and reductions), ``resample``
(Pad/Resize/Upsample), ``repeat`` (Expand/Tile), ``gather`` (Gather of activations), ``quant``
(QuantizeLinear/DequantizeLinear), ``contrib_attention`` and ``contrib_elementwise`` (onnxruntime's fused
``com.microsoft`` transformer ops). Each registers with :func:`onnxprune.structured.rules.registry.register_rule`.
"""

from __future__ import annotations

from onnxprune.structured.rules import (  # noqa: F401
    contrib_attention,
    contrib_elementwise,
    elementwise,
    gather,
    norm,
    pool,
    quant,
    repeat,
    resample,
    shape,
    weighted,
)
from onnxprune.structured.rules.base import Blocked, OpRule, RewriteContext, RuleContext
from onnxprune.structured.rules.registry import RuleSet, RuleSpec, register_rule, registered_ops

__all__ = ["Blocked", "OpRule", "RewriteContext", "RuleContext", "RuleSet", "RuleSpec", "register_rule",
           "registered_ops"]
