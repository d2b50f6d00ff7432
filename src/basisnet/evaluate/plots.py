"""Accuracy-vs-cost figures, rendered headless so they work on servers and in CI."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["plot_tradeoff"]


def _columns(xy: Sequence[tuple[float, float]]) -> tuple[list[float], list[float]]:
    return [x for x, _ in xy], [y for _, y in xy]


def plot_tradeoff(
    curves: Mapping[str, Sequence[tuple[float, float]]],
    points: Mapping[str, Sequence[tuple[float, float]]] | None,
    path: str | Path,
    title: str,
    xlabel: str = "MAdds (M)",
    ylabel: str = "top-1 (%)",
) -> Path:
    """Save one PNG comparing methods: ``curves`` as lines (sweeps, budgeted batch, a static
    family; sorted by x), ``points`` as markers (single operating points, anytime exits).

    Uses the Agg canvas directly instead of pyplot, so no GUI backend and no global figure
    state are touched. Returns the written path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for label, xy in curves.items():
        ax.plot(*_columns(sorted(xy)), "-", label=label)
    for label, xy in (points or {}).items():
        ax.plot(*_columns(xy), "o", linestyle="none", label=label)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if curves or points:
        ax.legend(loc="lower right")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120, bbox_inches="tight")
    return out
