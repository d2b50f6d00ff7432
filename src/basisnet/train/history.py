"""The epoch log: one row per finished epoch, kept in the checkpoint and written out as ``summary.csv``.

Exits are counted from 1 here as everywhere a user reads them: a row holds ``val_top1_exit1`` ...
``val_top1_exitN``. Runs logged before that numbering wrote ``val_top1_exit0`` ... ``exitN-1``;
:func:`renumbered` reads such a row into today's keys where an old row enters: a checkpoint being resumed
(``loop.py``) and an old ``summary.csv`` (:func:`read_summary`); so an old run directory resumes and reads like
a new one, and nothing past those two places meets the old keys.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path

from .checkpoint import atomic_write_bytes

__all__ = ["read_summary", "renumbered", "val_top1", "val_top1_key", "write_summary"]

_PREFIX = "val_top1_exit"


def val_top1_key(exit: int) -> str:
    """The log's column of exit ``exit``'s validation top-1 (exits counted from 1)."""
    return f"{_PREFIX}{exit}"


def _exit_keys(row: Mapping[str, object]) -> list[str]:
    return sorted((k for k in row if k.startswith(_PREFIX)), key=lambda k: int(k[len(_PREFIX):]))


def renumbered(row: Mapping[str, object]) -> dict[str, object]:
    """``row`` with its exits counted from 1; a row of the old numbering (it has ``val_top1_exit0``) shifts up."""
    if val_top1_key(0) not in row:
        return dict(row)
    return {(val_top1_key(int(k[len(_PREFIX):]) + 1) if k.startswith(_PREFIX) else k): v for k, v in row.items()}


def val_top1(row: Mapping[str, object]) -> list[float]:
    """A row's validation top-1 per exit, first to last ([] for an epoch that was not validated)."""
    return [float(row[k]) for k in _exit_keys(row) if row[k] != ""]


def write_summary(path: Path, history: Sequence[Mapping[str, object]]) -> None:
    """Rewrite ``summary.csv`` from the whole history, so a resume never duplicates rows."""
    rows = list(history)
    exits = _exit_keys({k: None for row in rows for k in row})
    columns = ["epoch", "lr", "train_loss", *exits, "seconds", "images_per_s"]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, text.getvalue().encode())


def read_summary(path: Path) -> list[dict[str, str]]:
    """The rows of a ``summary.csv`` with exits counted from 1 (none when the file does not exist yet)."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [renumbered(row) for row in csv.DictReader(f)]
