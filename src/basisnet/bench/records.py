"""Where a benchmark's results go: ``<results>.json`` (one record per measurement) and ``<results>_meta.json``
(where, when and how it ran), and the machine description every meta carries."""

from __future__ import annotations

import json
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["machine", "meta_path", "read_meta", "save_records", "write_meta", "write_records"]


def machine(device: str | torch.device = "cpu") -> str:
    """The machine a figure was measured on: architecture and torch's threads, or the GPU's name on CUDA."""
    if torch.device(device).type == "cuda":
        return f"{platform.machine()}, {torch.cuda.get_device_name()}"
    return f"{platform.machine()}, {torch.get_num_threads()} threads"


def meta_path(results: str | Path) -> Path:
    """``<results>_meta.json`` beside ``<results>.json``: the one place that names it."""
    results = Path(results)
    return results.with_name(results.stem + "_meta.json")


def read_meta(results: str | Path) -> dict[str, Any]:
    return json.loads(meta_path(results).read_text())


def write_records(results: str | Path, records: Sequence[dict[str, Any]]) -> Path:
    results = Path(results)
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(list(records), indent=2) + "\n")
    return results


def write_meta(results: str | Path, meta: dict[str, Any]) -> None:
    meta_path(results).write_text(json.dumps(meta, indent=2) + "\n")


def save_records(results: str | Path, records: Sequence[dict[str, Any]], meta: dict[str, Any]) -> Path:
    """Write the records and their meta (command, machine, targets) beside them; returns the records' path."""
    results = write_records(results, records)
    write_meta(results, meta)
    return results
