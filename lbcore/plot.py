"""Figures of evaluations: what a plot shows (:class:`PlotData`) and its PNG rendering (:func:`write_plot`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from lbcore.errors import EvaluationError

__all__ = ["PlotData", "shorten", "write_plot"]


@dataclass
class PlotData:
    """What a result plot shows: a confusion matrix (counts) or a similarity heatmap (cosines)."""

    kind: Literal["confusion", "similarity"]
    matrix: list[list[float]]
    rows: list[str]
    cols: list[str]
    title: str
    xlabel: str
    ylabel: str


def shorten(text: str, width: int = 40) -> str:
    """``text`` cut to ``width`` characters, with an ellipsis when cut (for tick labels)."""
    return text if len(text) <= width else text[: width - 1] + "…"


def write_plot(plot: PlotData, path: str | Path) -> Path:
    """Render ``plot`` as a PNG with matplotlib (no pyplot: no global state, no display needed)."""
    try:  # matplotlib is a heavy optional dependency: imported only when a plot is drawn
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure  # deferred: matplotlib is heavy and only plots need it
    except ImportError as err:
        raise EvaluationError("plots need matplotlib: `pip install matplotlib`, or evaluate without a plot") from err

    path = Path(path)
    matrix = np.asarray(plot.matrix, dtype=float)
    rows, cols = matrix.shape
    width = min(max(5.0, 0.3 * cols + 3.0), 24.0)
    height = min(max(4.0, 0.3 * rows + 2.5), 24.0)
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    confusion = plot.kind == "confusion"
    image = ax.imshow(matrix, cmap="Blues" if confusion else "viridis", aspect="auto", interpolation="nearest")
    fig.colorbar(image, ax=ax, shrink=0.8, label="items" if confusion else "cosine similarity")
    if cols <= 60:
        ax.set_xticks(range(cols), labels=[shorten(c, 30) for c in plot.cols], rotation=90, fontsize=7)
    if rows <= 60:
        ax.set_yticks(range(rows), labels=[shorten(r, 40) for r in plot.rows], fontsize=7)
    if confusion and rows <= 25:
        peak = matrix.max() or 1.0
        for (i, j), value in np.ndenumerate(matrix):
            if value:
                ax.text(j, i, f"{int(value)}", ha="center", va="center", fontsize=7,
                        color="white" if value > peak / 2 else "black")  # fmt: skip
    ax.set_xlabel(plot.xlabel)
    ax.set_ylabel(plot.ylabel)
    ax.set_title(plot.title, fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
