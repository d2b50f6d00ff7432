"""Where the benchmarks read and write unless told otherwise, named once.

Relative to the directory a benchmark is started in (the repository's root): the data beside the project
(``../shared``), run directories under ``runs/`` and the committed results under ``benchmarks/results/``.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["DATA", "RESULTS", "RUNS", "SHAPES", "results_file", "runs_folder"]

DATA = "../shared/data/cifar10"  # CIFAR-10 as an ImageFolder tree
SHAPES = "shapes"  # the embedded synthetic set: needs no data on the machine
RESULTS = Path("benchmarks/results")
RUNS = Path("runs")


def results_file(stem: str, suffix: str = "") -> Path:
    """``benchmarks/results/<stem><suffix>.json``: a benchmark's records (its meta beside it)."""
    return RESULTS / f"{stem}{suffix}.json"


def runs_folder(name: str, suffix: str = "") -> Path:
    """``runs/<name><suffix>``: where a benchmark's runs (or scratch files) go."""
    return RUNS / f"{name}{suffix}"
