"""Where a benchmark's results go: ``<results>.json`` (one record per measurement) and ``<results>_meta.json``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["save_records"]


def save_records(results: str | Path, records: Sequence[dict[str, Any]], meta: dict[str, Any]) -> Path:
    """Write the records and their meta (command, machine, targets) beside them; returns the records' path."""
    results = Path(results)
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(list(records), indent=2) + "\n")
    results.with_name(results.stem + "_meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return results
