"""Where a benchmark's results go: ``<results>.json`` (one record per measurement) and ``<results>_meta.json``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["meta_path", "read_meta", "save_records"]


def meta_path(results: str | Path) -> Path:
    """``<results>_meta.json`` beside ``<results>.json``: the one place that names it."""
    results = Path(results)
    return results.with_name(results.stem + "_meta.json")


def read_meta(results: str | Path) -> dict[str, Any]:
    return json.loads(meta_path(results).read_text())


def save_records(results: str | Path, records: Sequence[dict[str, Any]], meta: dict[str, Any]) -> Path:
    """Write the records and their meta (command, machine, targets) beside them; returns the records' path."""
    results = Path(results)
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(list(records), indent=2) + "\n")
    meta_path(results).write_text(json.dumps(meta, indent=2) + "\n")
    return results
