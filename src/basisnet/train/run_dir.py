"""One object that knows the files of a run directory, so no other module spells their names."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["RunDir"]


def _file(name: str) -> property:
    return property(lambda self: self.path / name, doc=f"``{name}`` in the run directory")


@dataclass(frozen=True)
class RunDir:
    """A run directory and its files::

        config.yaml          resolved config, written at the start
        classes.json         class names in label order
        init.json            where train.init_from started each part (only with init_from)
        summary.csv          one row per finished epoch
        last.state.pt        everything needed to resume exactly
        last.safetensors     evaluated weights (EMA if enabled) after the last save
        best.safetensors     same, at the best final-exit validation top-1
        tensorboard/         event files (train.tensorboard)
        logits_<split>.pt, exit_madds.json, sweep_<split>.csv/.png, evaluation_<protocol>.json,
        shortcut_<split>.json: what evaluation adds
    """

    path: Path

    def __init__(self, path: str | os.PathLike[str]) -> None:
        object.__setattr__(self, "path", Path(path))

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)

    config = _file("config.yaml")
    classes = _file("classes.json")
    init = _file("init.json")
    summary = _file("summary.csv")
    state = _file("last.state.pt")
    last_weights = _file("last.safetensors")
    best_weights = _file("best.safetensors")
    tensorboard = _file("tensorboard")
    exit_madds = _file("exit_madds.json")

    def logits(self, split: str) -> Path:
        return self.path / f"logits_{split}.pt"

    def sweep(self, split: str, suffix: str) -> Path:
        return self.path / f"sweep_{split}{suffix}"

    def onnx(self, batch: int | str) -> Path:
        """The run's stages exported for ``batch`` (1, N or dynamic): a folder with ``stages.json``."""
        return self.path / f"onnx_batch{batch}"

    def evaluation(self, protocol: str) -> Path:
        return self.path / f"evaluation_{protocol}.json"

    def shortcut(self, split: str) -> Path:
        return self.path / f"shortcut_{split}.json"

    def holds_run(self) -> bool:
        """A training run has saved its resumable state here."""
        return self.state.exists()

    def require_config(self, purpose: str = "") -> Path:
        """``config.yaml``, or a ``FileNotFoundError`` saying this is not a run directory."""
        if self.path.is_file():
            raise FileNotFoundError(f"{purpose}{self.path} is a file, not a run directory: this command needs a run's "
                                    "data and files; `basisnet predict` and `basisnet export` take a weights file")
        if not self.config.is_file():
            raise FileNotFoundError(f"{purpose}{self.path} is not a run directory (no {self.config.name})")
        return self.config
