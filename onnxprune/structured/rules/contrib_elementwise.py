"""onnxruntime's fused elementwise ops and residual-stream normalizations (``com.microsoft``), as its
transformer optimizer writes them.

``BiasGelu``, ``FastGelu`` (optional bias), ``BiasAdd`` (``input + bias + skip``) are elementwise with numpy
broadcasting, so their bias is sliced with the channels like any broadcast constant; ``Gelu`` and
``QuickGelu`` are unary. ``SkipLayerNormalization``, ``SkipSimplifiedLayerNormalization``,
``EmbedLayerNormalization`` and ``SimplifiedLayerNormalization`` normalize over the hidden axis, which is the
residual stream of a transformer: cutting it changes every statistic, so structured pruning blocks there
with that reason (``--mode width`` is the way to narrow the stream).
"""

from __future__ import annotations

from onnx import NodeProto

from onnxprune.core.ir import node_label
from onnxprune.structured.axes import ChannelAxis, Coupling
from onnxprune.structured.rules.base import Blocked, OpRule, RuleContext
from onnxprune.structured.rules.elementwise import BroadcastRule, UnaryRule
from onnxprune.structured.rules.registry import register_rule

MS = "com.microsoft"


@register_rule("BiasGelu", "FastGelu", "BiasAdd", domain=MS)
class BiasActivationRule(BroadcastRule):
    """``f(x + bias [+ skip])`` position by position: a bias activation broadcasts like ``Add``."""


@register_rule("Gelu", "QuickGelu", domain=MS)
class ContribUnaryRule(UnaryRule):
    """``Gelu`` and ``QuickGelu`` (``x * sigmoid(alpha * x)``): unary, position by position."""


@register_rule("SkipLayerNormalization", "SkipSimplifiedLayerNormalization", "EmbedLayerNormalization",
               "LayerNormalization", "SimplifiedLayerNormalization", domain=MS)
class StreamNormRule(OpRule):
    """Normalizations over the residual stream: every slot blocks, naming the stream."""

    def couplings(self, node: NodeProto, slot: ChannelAxis, ctx: RuleContext) -> list[Coupling]:
        raise Blocked(f"{node_label(node)} normalizes over the residual stream; cutting it changes the statistics "
                      f"(structured mode keeps the stream, --mode width narrows it)")


@register_rule("SimplifiedLayerNormalization")
class DefaultDomainStreamNormRule(StreamNormRule):
    """onnxruntime registers ``SimplifiedLayerNormalization`` (RMSNorm) in the default domain, where onnx has
    no op of that name."""
