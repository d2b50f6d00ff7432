"""Accuracy-vs-cost figures, rendered headless so they work on servers and in CI."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["plot_models", "plot_tradeoff"]


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
    ax, save = _axes(title, xlabel, ylabel)
    for label, xy in curves.items():
        ax.plot(*_columns(sorted(xy)), "-", label=label)
    for label, xy in (points or {}).items():
        ax.plot(*_columns(xy), "o", linestyle="none", label=label)
    return save(path, bool(curves or points))


def plot_models(
    models: Mapping[str, tuple[Sequence[tuple[float, float]], Sequence[tuple[float, float]]]],
    path: str | Path,
    title: str,
    xlabel: str = "MAdds (M)",
    ylabel: str = "top-1 (%)",
) -> Path:
    """One colour per model: its curve as a line (e.g. budgeted batch) and its points as hollow
    markers (e.g. anytime exits), so a method's two protocols read together. A one-point curve (a
    single-exit model) has no line to draw: only its markers appear, and in the legend."""
    ax, save = _axes(title, xlabel, ylabel)
    for label, (curve, points) in models.items():
        colour = None
        if len(set(curve)) > 1:
            (line,) = ax.plot(*_columns(sorted(curve)), "-", label=f"{label} (budgeted batch)")
            colour = line.get_color()
        if points:
            ax.plot(*_columns(sorted(points)), "o", mfc="none", color=colour, linestyle="none",
                    label=f"{label} (anytime exits)" if len(points) > 1 else label)
    return save(path, bool(models))


def _axes(title: str, xlabel: str, ylabel: str):
    """A headless figure's axes and a function saving it (the Agg canvas: no GUI, no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.2, 5.4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)

    def save(path: str | Path, legend: bool) -> Path:
        if legend:
            ax.legend(loc="lower right", fontsize="small")
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=120, bbox_inches="tight")
        return out

    return ax, save
