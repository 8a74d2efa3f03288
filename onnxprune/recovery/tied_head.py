"""Width mode's last step: a tied LM head untied for the cut is tied back (or kept untied when asked, said).

Why here and not in the preparation: the cut, the rotation and the re-fit all need the head as a weight of its
own (:mod:`onnxprune.structured.untie`); only once they are done can it read the cut table again
(:mod:`onnxprune.structured.retie` says how, and why the adapter it may add is the least-squares best tied
head). Both the pruned model and the exact model before the cut are tied back, so the exactness check proves
the tied form too.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from onnx import ModelProto

from onnxprune.core.io import load_model, save_model
from onnxprune.structured.retie import retie_heads

log = logging.getLogger(__name__)


def tie_heads_back(pruned: ModelProto, exact: ModelProto | Path | None, report: dict[str, Any], *,
                   untie: bool) -> None:
    """Tie back, in place in ``pruned`` and ``exact`` (the caller's), the heads in ``report["untied_heads"]``
    (``[head node, table]``), and update ``report``: ``tied_heads`` (one entry per head tied back: adapter,
    its parameters, the head weight's relative error), ``untied`` (weights left), ``untie_notes`` (a line for
    the console per head left with its own weight, and why)."""
    heads = tuple((h, t) for h, t in report.pop("untied_heads", []))
    if not heads:
        return
    if untie:
        report["untie_notes"] = [f"--untie-embeddings: the LM head {h} keeps its own weight; the table {t} is "
                                 f"stored twice" for h, t in heads]
        log.warning("%s", report["untie_notes"][0])
        return
    if isinstance(exact, Path):  # the rotated reference kept as a scratch file: tied back there
        model = load_model(exact, check=False, copy=False)
        retie_heads(model, heads)
        save_model(model, exact, external_data=True)
        del model
    elif exact is not None:
        retie_heads(exact, heads)
    sizes = {t.name: int(np.prod(t.dims)) for t in pruned.graph.initializer}
    retied, kept = retie_heads(pruned, heads)
    report["tied_heads"] = [asdict(r) for r in retied]
    report["untied"] = [u.weight for u in kept]
    report["untie_notes"] = [f"the LM head {u.head} keeps its own weight ({u.why}): the table {u.table} is "
                             f"stored twice" for u in kept]
    if "params_removed_predicted" in report:  # it counted each untied copy as added; a head tied back drops it
        report["params_removed_predicted"] += sum(sizes.get(w, 0) for w in {r.weight for r in retied}) - sum(
            r.adapter_params for r in retied)
    for r in retied:
        log.info("LM head %s tied to %s again%s (head weight's relative error %.3g)", r.head, r.table,
                 f" through a {r.adapter_params}-parameter adapter" if r.adapter else "", r.weight_error)
