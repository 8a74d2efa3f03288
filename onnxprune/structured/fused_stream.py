"""The residual stream through onnxruntime's fused normalizations (``com.microsoft``), for ``--mode width``.

Why: onnxruntime's transformer optimizer folds the residual ``Add`` into the norm that follows it
(``SkipLayerNormalization``, ``SkipSimplifiedLayerNormalization``), the embedding lookups into the first norm
(``EmbedLayerNormalization``) and writes RMSNorm as ``SimplifiedLayerNormalization``. The default analysis
blocks the stream at each of them (:mod:`onnxprune.structured.rules.contrib_elementwise`), which is right for
exact pruning. Width pruning accepts that a norm over the stream then normalizes over the kept channels only
(not exact, re-fitted and measured, as :class:`~onnxprune.structured.stream.StreamLayerNormRule` does for the
plain op), so these rules carry the stream's last axis through them:

* ``SkipLayerNormalization(input, skip, gamma, beta?, bias?) -> (output, mean?, inv_std_var?,
  input_skip_bias_sum?)`` and ``SkipSimplifiedLayerNormalization(input, skip, gamma, bias?) -> (output,
  mean?, inv_std_var?, input_skip_bias_sum?)``: ``input``, ``skip``, ``output`` and the sum (the stream the
  next block adds to) share the last axis; every per-channel parameter (``gamma``, ``beta``, ``bias``) is
  sliced with it. The per-row statistics ``mean`` / ``inv_std_var`` change with the cut: a node that outputs
  them blocks.
* ``EmbedLayerNormalization(input_ids, segment_ids?, word_embedding, position_embedding, segment_embedding?,
  gamma, beta, mask?, position_ids?) -> (output, mask_index, embedding_sum?)``: the tables' columns and
  ``gamma``/``beta`` are the stream's channels, as are ``output`` and ``embedding_sum``; ids, the mask and
  ``mask_index`` are not stream.
* ``SimplifiedLayerNormalization`` (default and ``com.microsoft`` domains) and ``com.microsoft``
  ``LayerNormalization``: as the plain LayerNormalization (over exactly the last axis).

The fused ``Attention`` needs nothing here: its packed weight's rows are a sink of the stream already
(:class:`~onnxprune.structured.rules.contrib_attention.AttentionRule`).

Rotation (SliceGPT) needs each norm's scale and shift folded into its readers and the norm turned into an
RMSNorm (:mod:`onnxprune.structured.rotate`), which onnxprune does for the plain ``LayerNormalization`` only.
So before rotating, :func:`unfuse_skip_norms` writes each ``SkipLayerNormalization`` back as the ops it fused
(``Add``, ``Add`` of the bias, ``LayerNormalization``), exactly; the rotation then replaces those norms by
RMSNorms in primitives as it does for any model, so a rotated model no longer holds them fused. The other
fused norms stay fused and block rotation (:func:`rotation_refusal` names the op): ``EmbedLayerNormalization``
is not written back (its position lookup and ``mask_index`` would have to be rebuilt from primitives), so a
BERT the optimizer fused is pruned plainly (with trained norms, a post-norm BERT's LayerNorms cannot be folded
anyway); nor are the RMSNorms (``SkipSimplifiedLayerNormalization``, ``SimplifiedLayerNormalization``),
whose rotation (no centring, the scale folded) the rotation code does not do for RMSNorms written by
onnxruntime.
"""

from __future__ import annotations

from onnx import ModelProto, NodeProto, helper

from onnxprune.core.ir import GraphIndex, attr, node_label, opset_of
from onnxprune.structured.axes import ChannelAxis, Coupling
from onnxprune.structured.rules.base import Blocked, OpRule, RuleContext, is_output, which_input
from onnxprune.structured.rules.registry import RuleSpec

MS = "com.microsoft"

#: The fused norms over the stream: a width cut changes their statistics; rotation does not go through them.
FUSED_NORMS = ("SkipLayerNormalization", "SkipSimplifiedLayerNormalization", "EmbedLayerNormalization",
               "SimplifiedLayerNormalization")


def _stats_outputs(node: NodeProto, indices: tuple[int, ...]) -> None:
    """Blocked when the node writes a per-row statistic (mean, inverse std) the cut would change."""
    for i in indices:
        if len(node.output) > i and node.output[i]:
            raise Blocked(f"{node_label(node)} outputs its statistic '{node.output[i]}', which the width cut "
                          f"would change")


class SkipNormStreamRule(OpRule):
    """``Skip(Simplified)LayerNormalization``: ``s = input + skip (+ bias)``, ``output = norm(s) * gamma (+ beta)``
    over the last axis; the sum ``s`` is output 3.

    The last axis of ``input``, ``skip``, ``output`` and ``s`` is one channel (the stream), with the
    parameters (inputs 2 and on, each one value per channel) sliced with it. Other axes pass position by
    position between the four tensors (``skip`` when it has the input's rank).
    """

    def couplings(self, node: NodeProto, slot: ChannelAxis, ctx: RuleContext) -> list[Coupling]:
        x = node.input[0]
        rank = ctx.rank(x)
        ins = which_input(node, slot, ctx)
        params = [i for i in range(2, len(node.input)) if node.input[i]]
        if is_output(node, slot):
            k = list(node.output).index(slot.tensor)
            if k in (1, 2):
                raise Blocked(f"{node_label(node)} writes the per-row statistic '{slot.tensor}'; it is not stream")
            axis = slot.axis
        elif ins and ins[0] in (0, 1):
            axis = slot.axis + rank - ctx.rank(slot.tensor)
        else:
            axis = rank - 1  # a parameter: one value per stream channel
        data = [node.input[0], node.input[1]] + [o for k, o in enumerate(node.output) if k in (0, 3) and o]
        if axis != rank - 1:
            if ctx.rank(node.input[1]) != rank:
                raise Blocked(f"{node_label(node)} broadcasts '{node.input[1]}' over axis {axis}")
            first = ctx.slot(x, axis)
            return [Coupling(first, ctx.slot(t, axis)) for t in data[1:]]
        _stats_outputs(node, (1, 2))
        if any(len(ctx.shape(node.input[i])) != 1 for i in params):
            raise Blocked(f"{node_label(node)} has a parameter that is not one value per channel")
        first = ctx.slot(x, rank - 1)
        result = [Coupling(first, ctx.slot(t, ctx.rank(t) - 1)) for t in data[1:]]
        result += [Coupling(first, ctx.slot(node.input[i], 0), role="param" if ctx.is_const(node.input[i]) else "",
                            input_index=i) for i in params]
        return result


class EmbedNormStreamRule(OpRule):
    """``EmbedLayerNormalization``: ``output = LN(word[ids] + position[pos] (+ segment[seg])) * gamma + beta``.

    The tables' columns (axis 1), ``gamma``, ``beta``, ``output``'s and ``embedding_sum``'s last axis are the
    stream; ids, mask, position ids and ``mask_index`` are not (they block, naming themselves).
    """

    TABLES = (2, 3, 4)
    PARAMS = (5, 6)

    def couplings(self, node: NodeProto, slot: ChannelAxis, ctx: RuleContext) -> list[Coupling]:
        ins = which_input(node, slot, ctx)
        out = node.output[0]
        sums = [o for k, o in enumerate(node.output) if k in (0, 2) and o]
        on_stream = (is_output(node, slot) and slot.tensor in sums and slot.axis == 2) or \
            any((i in self.TABLES and slot.axis == 1) or (i in self.PARAMS and slot.axis == 0) for i in ins)
        if not on_stream:
            raise Blocked(f"{node_label(node)}: axis {slot.axis} of '{slot.tensor}' is ids, a mask, a batch or "
                          f"sequence axis or the mask index; only the hidden axis (the stream) is cut")
        first = ctx.slot(out, 2)
        result = [Coupling(first, ctx.slot(t, 2)) for t in sums[1:]]
        for i in self.TABLES + self.PARAMS:
            name = node.input[i] if len(node.input) > i else ""
            if not name:
                continue
            axis = 1 if i in self.TABLES else 0
            if ctx.rank(name) != axis + 1:
                raise Blocked(f"{node_label(node)} has '{name}' of rank {ctx.rank(name)} where {axis + 1} is expected")
            result.append(Coupling(first, ctx.slot(name, axis), role="param" if ctx.is_const(name) else "",
                                   input_index=i))
        return result


def fused_stream_rules() -> tuple[RuleSpec, ...]:
    """The ``extra_rules=`` width mode adds for onnxruntime's fused norms (see the module docstring)."""
    from onnxprune.structured.stream import StreamLayerNormRule  # (stream imports this module lazily)

    skip, norm = SkipNormStreamRule(), StreamLayerNormRule()
    return (RuleSpec("SkipLayerNormalization", skip, domain=MS),
            RuleSpec("SkipSimplifiedLayerNormalization", skip, domain=MS),
            RuleSpec("EmbedLayerNormalization", EmbedNormStreamRule(), domain=MS),
            RuleSpec("SimplifiedLayerNormalization", norm), RuleSpec("SimplifiedLayerNormalization", norm, domain=MS),
            RuleSpec("LayerNormalization", norm, domain=MS))


def stream_tensor(node: NodeProto) -> str:
    """The tensor whose last axis is the stream a fused norm normalizes (its output: an
    ``EmbedLayerNormalization`` reads ids)."""
    return node.output[0]


def unfuse_skip_norms(model: ModelProto) -> tuple[str, ...]:
    """Exact rewrite, in place: every ``SkipLayerNormalization`` becomes ``Add(input, skip)`` (then ``Add``
    of its ``bias``), whose result keeps the name of its ``input_skip_bias_sum`` output, and a
    ``LayerNormalization`` over the last axis with its ``gamma``, ``beta`` and ``epsilon``. Returns the names of
    the nodes rewritten. Left fused (rotation then refuses, naming it): a node that outputs its mean or
    inverse std, and every node of a model below opset 17 (no ``LayerNormalization``).
    """
    if opset_of(model) < 17:
        return ()
    idx = GraphIndex(model)
    graph = model.graph
    done = []
    for pos in reversed(range(len(graph.node))):
        node = graph.node[pos]
        if (node.domain, node.op_type) != (MS, "SkipLayerNormalization") or any(node.output[1:3]):
            continue
        out = list(node.output) + [""] * (4 - len(node.output))
        ins = list(node.input) + [""] * (5 - len(node.input))
        label = node.name or out[0]
        total = out[3] or idx.unique_name(f"{label}_sum")
        added = idx.unique_name(f"{label}_skip_sum") if ins[4] else total
        nodes = [helper.make_node("Add", ins[:2], [added], name=idx.unique_name(f"{label}_add"))]
        if ins[4]:
            nodes.append(helper.make_node("Add", [added, ins[4]], [total], name=idx.unique_name(f"{label}_bias")))
        eps = attr(node, "epsilon", None, 1e-12)
        norm = [total, ins[2]] + ([ins[3]] if ins[3] else [])
        nodes.append(helper.make_node("LayerNormalization", norm, [out[0]], name=idx.unique_name(f"{label}_norm"),
                                      axis=-1, epsilon=eps))
        del graph.node[pos]
        for k, n in enumerate(nodes):
            graph.node.insert(pos + k, n)
        done.append(node.name)
    return tuple(reversed(done))


def rotation_refusal(node: NodeProto) -> str:
    """Why the stream cannot be rotated through the fused norm ``node`` that :func:`unfuse_skip_norms` left
    fused (one line, with what applies)."""
    head = f"the stream passes through the fused {node.op_type} '{node.name}' of onnxruntime's optimizer"
    if node.op_type == "EmbedLayerNormalization":
        why = ("which onnxprune does not write back as the ops it fused (lookups, sum, LayerNormalization), so its "
               "scale and shift cannot be folded nor its norm turned into an RMSNorm")
    elif "Simplified" in node.op_type:
        why = "an RMSNorm onnxprune does not write back as primitives, so its scale cannot be folded into its readers"
    elif node.op_type == "SkipLayerNormalization" and any(node.output[1:3]):
        why = "which outputs its mean or inverse std, so it cannot be written as a LayerNormalization to fold"
    else:
        why = "which onnxprune writes as a LayerNormalization to fold only from opset 17 on"
    return f"{head}, {why}; rotation is refused (plain width pruning applies)"
