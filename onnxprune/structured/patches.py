"""Patches of a feature map moved into and out of one axis by Reshapes: Swin's patch merging and MobileViT's
unfold/fold, read so that the channels they carry can be cut.

Two readings, each exact dataflow by itself (where an element goes is a fact of the Reshape; a reading only
says which axis holds the channels a group is made of):

* **Patch merging, channels innermost** (timm's Swin ``PatchMerging``): ``[B, H, W, C]`` is split to
  ``[B, H/2, 2, W/2, 2, C]``, transposed to ``[B, H/2, W/2, 2, 2, C]`` and merged to ``[B, H/2, W/2, 4C]``.
  In the merged axis channel ``c`` is flat position ``p`` with ``p % C == c`` (one per 2x2 neighbour), so the
  channel axis is coupled to the merged axis by that table, as :mod:`onnxprune.structured.radix` couples split
  attention's parts. Which reading a merge takes is read from dataflow, not names: the merged run's innermost
  axis is the last axis on both sides of the merge (channels last), and going back through Transposes to the
  Reshape that made the merge's input, that axis is the last axis kept whole by it, while every other merged
  axis is a piece split off another axis (a spatial offset, never a channel). A plain flatten of
  ``[N, C, H, W]`` has no such split before it, so it keeps the leading-axis reading of
  :class:`~onnxprune.structured.rules.shape.ReshapeRule`. The neighbour axes are refused: onnxprune cuts the
  same channels in every neighbour, never a neighbour.
* **A channel that is the leading factor of an axis whose rest is split off another axis** (MobileViT's
  unfold ``[B, C, H, W] -> [B*C*H/ph, ph, W/pw, pw]`` and its fold back): axis ``a`` of one side and axis ``b``
  of the other start at the same element offset (the same product of the axes before them) and one size
  divides the other, so position ``i`` of the smaller is the block ``[i*k, (i+1)*k)`` of the larger. The
  default rule asks the rest of the larger axis to be whole axes (``C x H x W``); this reading, tried only
  where the default would block, lets that rest be a piece of a split axis, which is still exact.

The patch-merging LayerNorm over ``4C`` then normalizes over the kept positions of every neighbour in width
mode, as every LayerNorm of the stream does (not exact; exact structured mode keeps blocking it there).
"""

from __future__ import annotations

import numpy as np
from onnx import NodeProto

from onnxprune.core.ir import node_label
from onnxprune.structured.axes import Block, Coupling, Table
from onnxprune.structured.radix import reshape_runs
from onnxprune.structured.rules.base import Blocked, RuleContext

#: Transposes (and Identities) walked back from a merge to the Reshape that split its input.
MAX_MOVES = 8


def _split_before(name: str, axes: list[int], ctx: RuleContext) -> tuple[NodeProto, list[int]] | None:
    """The Reshape that made ``name`` through Transposes/Identities only, and where ``axes`` are in its output."""
    for _ in range(MAX_MOVES):
        node = ctx.index.producer.get(name)
        if node is None or node.domain not in ("", "ai.onnx") or not node.input:
            return None
        if node.op_type == "Reshape":
            return node, axes
        if node.op_type == "Transpose":
            perm = ctx.ints_attr(node, "perm") or list(range(ctx.rank(name) - 1, -1, -1))
            axes = [perm[a] for a in axes]
        elif node.op_type != "Identity":
            return None
        name = node.input[0]
    return None


def patch_merge(node: NodeProto, ctx: RuleContext) -> tuple[list[int], int] | None:
    """``(merged input axes, merged output axis)`` of a channels-last patch merge (module docstring), else None."""
    x, y = node.input[0], node.output[0]
    s_in, s_out = ctx.shape(x), ctx.shape(y)
    runs = reshape_runs(s_in, s_out)
    last_in, last_out = len(s_in) - 1, len(s_out) - 1
    run = next(((r_in, r_out) for r_in, r_out in runs or () if last_in in r_in), None)
    if run is None or run[1] != [last_out] or len(run[0]) < 2 or run[0][-1] != last_in:
        return None
    found = _split_before(x, run[0], ctx)
    if found is None:
        return None
    split, axes = found
    sx, sy = ctx.shape(split.input[0]), ctx.shape(split.output[0])
    split_runs = reshape_runs(sx, sy) or []
    if ([len(sx) - 1], [len(sy) - 1]) not in split_runs or axes[-1] != len(sy) - 1 or sx[-1] != sy[-1]:
        return None  # the channel axis is not kept whole (last) by the split
    for a in axes[:-1]:
        piece = next(((r_in, r_out) for r_in, r_out in split_runs if a in r_out), None)
        if piece is None or len(piece[0]) != 1 or len(piece[1]) < 2:
            return None  # a merged axis that is no piece of another axis' split
    return run[0], last_out


def patch_merge_couplings(node: NodeProto, axis: int, output_side: bool, ctx: RuleContext) -> list[Coupling] | None:
    """Couplings of a patch-merging Reshape for ``axis`` (of its input, or its output when ``output_side``), or
    None when the Reshape is no patch merge or ``axis`` is outside the merge (the caller reads it as before).

    Raises:
        Blocked: ``axis`` is a neighbour-offset axis of the merge.
    """
    merge = patch_merge(node, ctx)
    if merge is None:
        return None
    merged, flat = merge
    x, y = node.input[0], node.output[0]
    channel = merged[-1]
    if (output_side and axis != flat) or (not output_side and axis not in merged):
        return None
    if not output_side and axis != channel:
        raise Blocked(f"{node_label(node)}: axis {axis} of '{x}' {ctx.shape(x)} is a neighbour offset of a patch "
                      f"merge into axis {flat} of '{y}'; onnxprune cuts the same channels (axis {channel}) in every "
                      f"neighbour, never a neighbour")
    n = ctx.shape(y)[flat]
    positions = np.arange(n, dtype=np.int64)
    return [Coupling(ctx.slot(x, channel), ctx.slot(y, flat), Table(positions, positions % ctx.shape(x)[channel]))]


def factor_coupling(node: NodeProto, axis: int, output_side: bool, ctx: RuleContext) -> Coupling | None:
    """``axis`` (of the input, or the output when ``output_side``) coupled to the axis of the other side that
    starts at the same element offset, when one size divides the other (module docstring), else None."""
    x, y = node.input[0], node.output[0]
    here, there = (y, x) if output_side else (x, y)
    s_here, s_there = ctx.shape(here), ctx.shape(there)
    n = s_here[axis]
    if n <= 1:
        return None
    prefix = int(np.prod(s_here[:axis], dtype=np.int64))
    run = 1
    for b, m in enumerate(s_there):
        if run > prefix:
            return None
        if run == prefix and m > 1:
            if m > n and m % n == 0:
                return Coupling(ctx.slot(here, axis), ctx.slot(there, b), Block(m // n))
            if n > m and n % m == 0:
                return Coupling(ctx.slot(there, b), ctx.slot(here, axis), Block(n // m))
            return None
        run *= m
    return None
