"""What both CIFAR-10 benchmarks share: the plan, train-or-reuse of a run directory, records, meta.

A benchmark re-run reuses every finished run whose saved config is the one asked for, resumes an
interrupted one and refuses a directory holding another config, so re-running is always safe.
"""

from __future__ import annotations

import csv
import json
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..configs import bundled_config
from ..evaluate import apply_threshold, count_params, exit_accuracy, select_threshold, threshold_sweep
from ..train import RunDir, config_diff, config_to_dict, load_config
from ..workflow import exit_logits, load_run, run_exit_madds, train_run
from .records import meta_path

__all__ = ["MAX_DROP", "BasisNetResult", "Plan", "basisnet_records", "epochs_done", "format_train_minutes", "plan", "record",
           "train_or_reuse", "train_minutes", "write_meta"]

MAX_DROP = 0.3  # points of top-1 early exit may cost against the last exit (the issues' target)
# --quick: the same code on a sliver of the data (4,000 training images).
QUICK_OVERRIDES = ("data.subset=4000", "data.val_size=1000", "train.warmup_epochs=0.5")


@dataclass
class Plan:
    """What one benchmark invocation trains: its epochs and the overrides every run gets."""

    quick: bool
    epochs: int
    overrides: list[str]


def plan(quick: bool, epochs: int | None, data: str | Path, overrides: Sequence[str] = ()) -> Plan:
    """12 epochs on the full data, or 2 on 4,000 images with ``quick``; ``epochs`` overrides either."""
    epochs = epochs or (2 if quick else 12)
    common = [f"data.source={data}", f"train.epochs={epochs}", *(QUICK_OVERRIDES if quick else ()), *overrides]
    return Plan(quick, epochs, common)


def train_or_reuse(config: str, run_dir: Path, overrides: Sequence[str]) -> float:
    """Train ``run_dir`` from a bundled config, or reuse / resume it if it holds the very same run.

    Returns the minutes its epochs took (from its epoch log, so a reused run reports its own time).
    """
    cfg = load_config(bundled_config(config), overrides)
    saved = RunDir(run_dir).config
    if saved.is_file():
        old = config_to_dict(load_config(saved))
        new = config_to_dict(cfg)
        for key in ("num_classes", "resolution"):  # train_run fills these from the data when absent
            if key in old["model"]["kwargs"]:
                new["model"]["kwargs"].setdefault(key, old["model"]["kwargs"][key])
        diffs = config_diff(old, new)
        if diffs:
            raise ValueError(f"{run_dir} holds a run with another config ({'; '.join(diffs)}): "
                             "pass another --output or remove that directory")
    if epochs_done(run_dir) >= cfg.train.epochs:
        print(f"[bench] {run_dir.name}: already trained, reusing", flush=True)
    else:
        print(f"[bench] training {run_dir.name} ({cfg.train.epochs} epochs)", flush=True)
        train_run(cfg, run_dir, resume=RunDir(run_dir).holds_run())
    return train_minutes(run_dir)


def _epoch_log(run_dir: Path) -> list[dict[str, str]]:
    """The rows of a run's ``summary.csv`` (one per finished epoch); none before the first epoch ends."""
    path = RunDir(run_dir).summary
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def epochs_done(run_dir: Path) -> int:
    """How many epochs a run directory has finished (0 when there is none)."""
    return len(_epoch_log(run_dir))


def train_minutes(run_dir: Path) -> float:
    """Minutes the run's epochs took: the sum of its epoch log's seconds."""
    return round(sum(float(row["seconds"]) for row in _epoch_log(run_dir)) / 60, 1)


def record(model: str, top1: float, madds: float, params: int, epochs: int, command: str,
           threshold: float | list | None = None, exit_fraction: float | list | None = None,
           **extra: Any) -> dict[str, Any]:
    """One result row; multi-exit protocols give per-exit lists of thresholds and exit fractions."""
    if isinstance(exit_fraction, float):
        exit_fraction = round(exit_fraction, 4)
    return {"model": model, "top1": round(top1, 2), "madds": round(madds, 3), "params": params,
            "threshold": threshold, "exit_fraction": exit_fraction,
            "epochs": epochs, "protocol": "early-exit" if threshold is not None else "single",
            "dataset": "cifar10", "command": command, **extra}


@dataclass
class BasisNetResult:
    """A trained BasisNet run on test: its three records and what the plots and targets need."""

    records: list[dict[str, Any]]  # lightweight exit, full model, early exit at the threshold picked on val
    madds: list[float]  # per exit
    top1: list[float]  # per exit, test
    threshold: float
    chosen: dict[str, Any]  # apply_threshold's result on test
    sweep: list[tuple[float, float]]  # (MAdds, top-1) over thresholds, test


def basisnet_records(run_dir: Path, label: str, command: str, **extra: Any) -> BasisNetResult:
    """Records of a BasisNet run: lightweight exit, no early exit, and early exit with the threshold picked
    on validation for a ``MAX_DROP`` loss; ``extra`` goes into every record (epochs, ...)."""
    model, cfg = load_run(run_dir)
    params = count_params(model)
    madds = run_exit_madds(run_dir)
    val, test = exit_logits(run_dir, "val"), exit_logits(run_dir, "test")
    top1 = exit_accuracy(test)
    threshold = select_threshold(val, madds, max_drop=MAX_DROP)
    chosen = apply_threshold(test, madds, threshold)
    records = [
        record(f"{label} lightweight only (exit 1)", top1[0], madds[0], count_params(model.lightweight),
               command=command, **extra),
        record(f"{label} (no early exit)", top1[1], madds[1], params, command=command,
               num_bases=cfg.model.kwargs["num_bases"], **extra),
        record(f"{label} + early exit (val max-drop {MAX_DROP})", chosen["top1"], chosen["madds"], params,
               command=command, threshold=threshold, exit_fraction=chosen["exit_fraction"], **extra),
    ]
    sweep = [(r["madds"], r["top1"]) for r in threshold_sweep(test, madds)]
    return BasisNetResult(records, madds, top1, threshold, chosen, sweep)


def write_meta(results: Path, start: float, p: Plan, minutes: dict[str, float], **found: Any) -> None:
    """``<results>_meta.json``: where and how long the benchmark ran (wall seconds; training minutes per
    run, which a reused run keeps from when it trained) and what it found."""
    meta = {"seconds": round(time.time() - start), "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
            "torch": torch.__version__, "quick": p.quick, "epochs": p.epochs, "train_minutes": minutes, **found}
    meta_path(results).write_text(json.dumps(meta, indent=2) + "\n")


def format_train_minutes(minutes: dict[str, float]) -> str:
    """The training time a benchmark cost, per run and in all (sums of epoch times)."""
    runs = ", ".join(f"{name} {m:.1f}" for name, m in minutes.items())
    return f"training: {sum(minutes.values()):.1f} min in all ({runs})"
