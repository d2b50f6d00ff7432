"""Train-or-reuse of a study's run directory, and what its epoch log says about it.

A study re-run reuses every finished run whose saved config is the one asked for, resumes an
interrupted one and refuses a directory holding another config, so re-running is always safe.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..configs import bundled_config
from ..resolve import same_run
from ..train import RunConfig, RunDir, load_config, read_summary
from ..workflow import train_run

__all__ = ["epochs_done", "format_train_minutes", "train_minutes", "train_or_reuse"]


def train_or_reuse(config: str, run_dir: Path, overrides: Sequence[str]) -> float:
    """Train ``run_dir`` from a bundled config, or reuse / resume it if it holds the very same run.

    Returns the minutes its epochs took (from its epoch log, so a reused run reports its own time).
    """
    cfg = load_config(bundled_config(config), overrides)
    _check_same_run(run_dir, cfg)
    if epochs_done(run_dir) >= cfg.train.epochs:
        print(f"[bench] {run_dir.name}: already trained, reusing", flush=True)
    else:
        print(f"[bench] training {run_dir.name} ({cfg.train.epochs} epochs)", flush=True)
        train_run(cfg, run_dir, resume=RunDir(run_dir).holds_run())
    return train_minutes(run_dir)


def _check_same_run(run_dir: Path, cfg: RunConfig) -> None:
    """Refuse a run directory that holds a run of another config than ``cfg``."""
    saved = RunDir(run_dir).config
    if not saved.is_file():
        return
    diffs = same_run(load_config(saved), cfg)  # two resolved runs: what the data fills in compares equal
    if diffs:
        raise ValueError(f"{run_dir} holds a run with another config ({'; '.join(diffs)}): "
                         "pass another --output or remove that directory")


def _epoch_log(run_dir: Path) -> list[dict[str, str]]:
    """The rows of a run's ``summary.csv`` (one per finished epoch); none before the first epoch ends."""
    return read_summary(RunDir(run_dir).summary)


def epochs_done(run_dir: Path) -> int:
    """How many epochs a run directory has finished (0 when there is none)."""
    return len(_epoch_log(run_dir))


def train_minutes(run_dir: Path) -> float:
    """Minutes the run's epochs took: the sum of its epoch log's seconds."""
    return round(sum(float(row["seconds"]) for row in _epoch_log(run_dir)) / 60, 1)


def format_train_minutes(minutes: dict[str, float]) -> str:
    """The training time a benchmark cost, per run and in all (sums of epoch times)."""
    runs = ", ".join(f"{name} {m:.1f}" for name, m in minutes.items())
    return f"training: {sum(minutes.values()):.1f} min in all ({runs})"
