"""TensorBoard scalars beside ``summary.csv`` (``train.tensorboard``), written by rank 0 only."""
from __future__ import annotations

from typing import Any

from .config import ConfigError
from .run_dir import RunDir

__all__ = ["TensorBoard"]


class TensorBoard:
    """A SummaryWriter on ``run.tensorboard`` that flushes after every call, so a crash loses nothing logged."""

    def __init__(self, run: RunDir) -> None:
        self.writer = self.require()(str(run.tensorboard))

    @staticmethod
    def require() -> Any:
        """The SummaryWriter class, or a ConfigError saying what to install (the package is optional)."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise ConfigError("train.tensorboard=true needs the tensorboard package: "
                              "pip install 'basisnet[tensorboard]'") from err
        return SummaryWriter

    def log(self, step: int, scalars: dict[str, float]) -> None:
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
