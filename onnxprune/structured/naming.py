"""Names of channel groups for people: which layers a group is, not its number.

Why: "group 0 size 32" tells a user nothing; "/features/features.0/Conv (+3)" tells which layer's
channels were cut and that three more layers move with it. Every place that shows a group (the prune
summary, ``onnxprune analyze``, the plots, the Markdown report) takes its name from :func:`group_name`,
so the same group reads the same everywhere.
"""

from __future__ import annotations

from onnxprune.structured.analysis import ChannelGroup


def group_layers(group: ChannelGroup) -> list[str]:
    """The layers whose weights a cut of ``group`` slices: producers first, then consumers, each once."""
    layers: list[str] = []
    for cut in (*group.sources, *group.sinks):
        if cut.node not in layers:
            layers.append(cut.node)
    return layers


def group_name(group: ChannelGroup) -> str:
    """``"<first producer> (+N)"``: the first layer producing the channels and how many more layers move.

    Falls back to the first consumer, then to the first tensor holding the channels, then to
    ``"group <id>"``.

    Example:
        >>> group_name(dg.groups[0])  # doctest: +SKIP
        '/features/features.0/Conv (+3)'
    """
    layers = group_layers(group)
    if layers:
        return layers[0] + (f" (+{len(layers) - 1})" if len(layers) > 1 else "")
    for slot in group.members:
        return f"{slot.tensor} (no weighted layer)"
    return f"group {group.id}"
