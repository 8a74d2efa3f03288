"""Figures for a prune run: latency against MACs, and channels per layer before/after.

Why: the question after pruning is "did the saved compute turn into saved time?"; a latency-vs-MACs plot
shows it at a glance (points on a line through the origin would be ideal scaling). matplotlib is an
optional extra (``pip install -e ".[plot]"``); it is imported only here, with the non-interactive Agg
canvas, so no display and no global backend change are needed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxprune.core.errors import ConfigError, OutputError
from onnxprune.core.io import check_output_path

if TYPE_CHECKING:
    from onnxprune.recovery.sensitivity import SensitivityReport

Layers = Mapping[str, Sequence[int]] | Sequence[Mapping[str, Any]]


def _matplotlib() -> tuple[Any, Any]:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ConfigError('plots need matplotlib; install it with: pip install -e ".[plot]"') from exc
    return Figure, FigureCanvasAgg


def _layer_rows(layers: Layers | None) -> list[tuple[str, int, int]]:
    """``[(name, before, after)]`` from ``{name: (before, after)}`` or ``[{name, before, after}]``."""
    if not layers:
        return []
    rows: list[tuple[str, int, int]] = []
    if isinstance(layers, Mapping):
        for name, (before_n, after_n) in layers.items():
            rows.append((str(name), int(before_n), int(after_n)))
        return rows
    for item in layers:
        # A prune report's groups carry the name of their layers (structured.naming.group_name).
        name = item.get("name") or item.get("layer") or (f"group {item['id']}" if "id" in item else "?")
        before = next((item[k] for k in ("before", "channels_before", "size_before") if k in item), None)
        after = next((item[k] for k in ("after", "channels_after", "size_after") if k in item), None)
        if before is None or after is None:
            raise ConfigError(f"layer entry {dict(item)} needs 'before' and 'after' channel counts")
        rows.append((str(name), int(before), int(after)))
    return rows


def plot_report(
    path: str | os.PathLike[str],
    *,
    report: Mapping[str, Any] | None = None,
    bench: Mapping[str, Any] | None = None,
    layers: Layers | None = None,
) -> Path:
    """Draw latency (p50) against MACs per provider and batch, and channels per layer before/after.

    Args:
        path: image file; the format follows the suffix (``.png``, ``.svg``, ``.pdf``).
        report: a prune report dict; its ``bench`` and ``layers`` (else ``groups``) keys are used unless
            given explicitly.
        bench: a ``BenchReport.to_dict()``.
        layers: ``{layer: (channels before, channels after)}`` or a list of dicts with a name (``name``,
            ``layer`` or ``id``) and counts (``before``/``after``, ``channels_*`` or ``size_before``/
            ``size_after`` as in the structured report's ``groups``).

    Returns:
        The path written.

    Raises:
        ConfigError: matplotlib is missing, or there is nothing to plot.
        OutputError: the folder is missing or not writable.

    Example:
        >>> plot_report("prune.png", bench=bench_report.to_dict(), layers={"conv1": (64, 32)})  # doctest: +SKIP
    """
    report = report or {}
    bench = bench if bench is not None else report.get("bench")
    rows = _layer_rows(layers if layers is not None else (report.get("layers") or report.get("groups")))
    if not bench and not rows:
        raise ConfigError("nothing to plot: no benchmark and no per-layer channels; run prune with --bench")
    out = check_output_path(path)
    panels = int(bool(bench)) + int(bool(rows))
    fig = new_figure(figsize=(6.5 * panels, 4.8))
    k = 1
    if bench:
        ax = fig.add_subplot(1, panels, k)
        k += 1
        macs = {m["name"]: m["macs"] for m in bench.get("models", [])}
        series: dict[tuple[str, int], list[tuple[float, float, str]]] = {}
        for r in bench.get("results", []):
            series.setdefault((r["provider"], r["batch"]), []).append((macs.get(r["model"], 0) / 1e6,
                                                                        r["p50_ms"], r["model"]))
        for (provider, batch), points in series.items():
            xs, ys, names = zip(*points, strict=True)
            ax.plot(xs, ys, marker="o", label=f"{provider}, batch {batch}")
            for x, y, name in points:
                ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlabel("MMACs per sample")
        ax.set_ylabel("latency p50 per run (ms)")
        ax.set_title("latency against compute")
        ax.set_xlim(left=0)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    if rows:
        ax = fig.add_subplot(1, panels, k)
        ids = list(range(len(rows)))
        ax.bar(ids, [r[1] for r in rows], color="#bbbbbb", label="before")
        ax.bar(ids, [r[2] for r in rows], color="#1f77b4", label="after")
        ax.set_xticks(ids, [r[0] for r in rows], rotation=90, fontsize=6 if len(rows) > 20 else 8)
        ax.set_ylabel("channels")
        ax.set_title("channels per layer")
        ax.legend(fontsize=8)
    return save_figure(fig, out)


def new_figure(*, figsize: tuple[float, float]) -> Any:
    """A matplotlib ``Figure`` on its own Agg canvas: no pyplot, so no global backend or figure state.

    Raises:
        ConfigError: matplotlib is not installed.
    """
    figure_cls, canvas_cls = _matplotlib()
    fig = figure_cls(figsize=figsize, layout="constrained")
    canvas_cls(fig)
    return fig


def save_figure(fig: Any, out: Path) -> Path:
    """Write ``fig`` to ``out`` atomically (a temporary file, then ``os.replace``); the suffix picks the format.

    Raises:
        ConfigError: the suffix names no image format matplotlib writes.
        OutputError: the file cannot be written.
    """
    fmt = out.suffix.lstrip(".").lower() or "png"
    tmp = out.with_name(f".{out.name}.onnxprune-tmp")
    try:
        fig.savefig(tmp, dpi=120, format=fmt)
        os.replace(tmp, out)
    except ValueError as exc:
        raise ConfigError(f"cannot write a '{fmt}' image ({exc}); name the file .png, .svg or .pdf") from exc
    except OSError as exc:
        raise OutputError(f"cannot write {out} ({exc.strerror or exc}); choose another path") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return out


def plot_sensitivity(report: SensitivityReport, path: str | os.PathLike[str], *, top: int = 12) -> Path:
    """Save error-vs-ratio curves (the ``top`` most sensitive groups labelled) as an image.

    Raises:
        ConfigError: matplotlib is not installed (``pip install -e ".[plot]"``), or the suffix names
            no image format.
        OutputError: the file cannot be written.
    """
    out = check_output_path(path)
    fig = new_figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    ranked = report.ranked()
    labelled = {g.group for g in ranked[-top:]}
    for g in ranked:
        ax.plot(g.ratios, g.errors, marker="o", ms=3, lw=1.2 if g.group in labelled else 0.6,
                alpha=1.0 if g.group in labelled else 0.4,
                label=f"{g.group}: {g.source[-28:]}" if g.group in labelled else None)
    ax.set_xlabel("share of the group's channels removed")
    ax.set_ylabel("relative L2 output error (calibration set)")
    ax.set_title(f"Sensitivity per channel group ({report.importance}, recover={report.recover})")
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    return save_figure(fig, out)
