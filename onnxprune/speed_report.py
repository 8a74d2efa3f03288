"""The report's ``latency`` section: what the latency table predicts for the plan, and on what basis.

Why the basis is part of every row: a prediction is only as good as what it was fitted on. Calibrated on
whole-model runs (a benchmark or a latency target), the model is ``overhead + scale * layer sum``. Without,
the sum of layers timed alone knows nothing of the fixed cost every run pays, so its speedup runs high: on
``hf_vit_legacy`` (MAC ideal 3.26x) the layer sum said 5.49x at batch 1 where the calibrated prediction said
1.42x and the model measured 1.37x. So when nothing is benchmarked the original is timed alone at each batch
(the calibration's own whole-model run of it, cached), which fixes the fixed cost: the layers' share of the
original is scaled and the rest kept. A row says which basis it has (:data:`CALIBRATED`, :data:`SHARE`,
:data:`LAYER_SUM`) and whether it is above the MAC ideal, so the console never prints an uncalibrated
figure, or one above the ideal, as if it were a measured fact.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from onnxprune.speed import LatencyModel

CALIBRATED = "calibrated on whole-model runs"
SHARE = "layer share of the original's measured time"
LAYER_SUM = "layer sum, uncalibrated"


def latency_report(latency: LatencyModel | None, keep_counts: Mapping[int, int],
                   bench: Mapping[str, Any] | None, *, ideal: float | None = None,
                   time_original: bool = False) -> dict[str, Any] | None:
    """The report's ``latency``: the table's use, predicted speedup per batch with its ``basis`` and, with a
    benchmark, the measured one and the prediction's error (predicted latency / measured latency - 1).

    ``ideal``: the MAC-ideal speedup (rows above it say so: ``above_mac_ideal``). ``time_original``: with no
    benchmark and no calibration, time the original alone at each batch so the prediction keeps its fixed
    per-run cost (see the module doc).
    """
    if latency is None:
        return None
    out = latency.report()
    rows = []
    results = {(r["model"], r["batch"]): r for r in (bench or {}).get("results", [])}
    original = {int(b): float(r["p50_ms"]) for (m, b), r in results.items() if m == "original" and r.get("p50_ms")}
    if time_original and not latency.calibrate:
        for batch in latency.batches:
            if batch in original or latency.table(batch, keep_counts) is None:
                continue
            if latency.rated(batch):  # the table is in ms: a measured original fixes the per-run cost
                ms = latency.original_ms(batch)
                if ms is not None and ms > 0:
                    original[batch] = ms
    predicted = latency.predict_speedup(keep_counts, original)
    calibration = latency.calibration_report()
    fitted = {int(b) for b in (calibration or {}) if str(b).isdigit()}
    for batch, sp in sorted(predicted.items()):
        basis = (CALIBRATED if batch in fitted else SHARE if batch in original and latency.rated(batch)
                 else LAYER_SUM)
        row: dict[str, Any] = {"batch": batch, "predicted_speedup": round(sp, 4), "basis": basis}
        if ideal is not None and ideal > 0:
            row["mac_ideal"] = round(ideal, 4)
            if sp > ideal * 1.005:
                row["above_mac_ideal"] = True
        base, pruned = results.get(("original", batch)), results.get(("pruned", batch))
        if base and pruned and pruned.get("p50_ms"):
            measured = float(base["p50_ms"]) / float(pruned["p50_ms"])
            predicted_ms = float(base["p50_ms"]) / sp
            row.update(measured_speedup=round(measured, 4), predicted_ms=round(predicted_ms, 4),
                       measured_ms=round(float(pruned["p50_ms"]), 4),
                       error=round(predicted_ms / float(pruned["p50_ms"]) - 1, 4))
        rows.append(row)
    out["prediction"] = rows
    if calibration is not None:  # a plan equal to the reference cut is a calibration point, not a prediction
        cut = {k: v for k, v in keep_counts.items() if v < latency.dg.groups[k].size}
        calibration["plan_is_reference"] = cut in latency.reference_keeps()
        out["calibration"] = calibration
    return out
