"""Bundled YAML configs: ``basisnet train --config NAME`` finds them by name."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent


def list_configs() -> list[str]:
    return sorted(p.stem for p in HERE.glob("*.yaml"))


def bundled_config(name: str | Path) -> Path:
    """A config file path: an existing file as given, else a bundled config of that name."""
    path = Path(name)
    if path.is_file():
        return path
    bundled = HERE / f"{path.stem}.yaml"
    if path.suffix in ("", ".yaml") and bundled.is_file():
        return bundled
    raise FileNotFoundError(f"config {str(name)!r} is neither a file nor a bundled config ({', '.join(list_configs())})")
