"""Accuracy-vs-cost figures, rendered headless so they work on servers and in CI."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["plot_bars", "plot_models", "plot_tradeoff"]


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
    emphasis: str | None = None,
    spread: Mapping[str, Sequence[tuple[float, float, float, float]]] | None = None,
    curve_name: str = "budgeted batch",
) -> Path:
    """One colour per model: its curve as a line (e.g. budgeted batch) and its points as hollow
    markers (e.g. anytime exits), so a method's two protocols read together. The model named by
    ``emphasis`` is drawn bold and on top. ``spread``: per model, ``(x, mean, min, max)`` points drawn
    as a filled marker with a min-max bar (the seeds of one model). ``curve_name``: what the lines are, in
    the legend."""
    ax, save = _axes(title, xlabel, ylabel)
    spread = spread or {}
    for label, (curve, points) in models.items():
        line, marks = model_series(label, curve, points, curve_name)
        colour = None
        style = {"linewidth": 2.8, "zorder": 3} if label == emphasis else {}
        if line:
            (drawn,) = ax.plot(*_columns(line[1]), "-", label=line[0], **style)
            colour = drawn.get_color()
        if marks:
            ax.plot(*_columns(marks[1]), "o", mfc="none", color=colour, linestyle="none", label=marks[0])
        if spread.get(label):
            x, mean, lo, hi = zip(*spread[label])
            ax.errorbar(x, mean, yerr=[[m - v for m, v in zip(mean, lo)], [v - m for m, v in zip(mean, hi)]], fmt="s",
                        color=colour, capsize=4, label=f"{label}: mean, min-max over seeds")
    return save(path, bool(models))


def plot_bars(values: Mapping[str, float], path: str | Path, title: str, xlabel: str,
              reference: float | None = None) -> Path:
    """Horizontal bars, first on top, with an optional vertical reference line (e.g. a target)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.0, 1.2 + 0.28 * len(values)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    labels = list(values)[::-1]
    ax.barh(labels, [values[k] for k in labels], color="tab:blue")
    if reference is not None:
        ax.axvline(reference, color="tab:red", linestyle="--", linewidth=1)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.tick_params(axis="y", labelsize="small")
    ax.grid(True, axis="x", alpha=0.3)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120, bbox_inches="tight")
    return out


Series = tuple[str, list[tuple[float, float]]]  # legend label, sorted points


def model_series(label: str, curve: Sequence[tuple[float, float]], points: Sequence[tuple[float, float]],
                 curve_name: str = "budgeted batch") -> tuple[Series | None, Series | None]:
    """What ``plot_models`` draws for one model: the line and the markers, each with its legend label.

    A one-point curve (a single-exit model) has no line to draw: it becomes the marker, so no legend
    entry stands for something invisible and no model vanishes from the plot.
    """
    line = (f"{label} ({curve_name})", sorted(curve)) if len(set(curve)) > 1 else None
    points = points or (curve if len(set(curve)) == 1 else [])
    marks = (f"{label} (anytime exits)" if len(points) > 1 else label, sorted(points)) if points else None
    return line, marks


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
