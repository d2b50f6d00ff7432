"""Start a model (or one of its parts) from trained runs, spreading static kernels into bases.

The two-run alternative to BasisNet's in-run static phase; both upcycle with
``basisnet.models.upcycle.spread_into_bases``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from ..models.upcycle import UpcycleError, spread_into_bases
from .checkpoint import CheckpointMismatchError, read_weights, resolve_weights
from .config import load_config
from .run_dir import RunDir

__all__ = ["warm_start"]


def warm_start(model: nn.Module, sources: Mapping[str, str | Path], noise: float = 0.01,
               seed: int = 0) -> dict[str, int | None]:
    """Start the named parts of ``model`` from run directories / weights files; return their epochs.

    ``sources`` maps a submodule path (``"specialist"``, ``"lightweight"``, or ``"model"`` for the whole
    network) to a run directory or safetensors file. The epochs each source was trained for come back
    (a run directory's configured epochs, else the epoch stored in the weights): ``train_run`` records
    them in ``init.json`` so the run's total training budget stays known.
    """
    generator = torch.Generator().manual_seed(seed)
    epochs: dict[str, int | None] = {}
    for part, path in sources.items():
        try:
            target = model if part == "model" else model.get_submodule(part)
        except AttributeError:
            names = [n for n, _ in model.named_children()]
            raise ValueError(f"train.init_from: {type(model).__name__} has no part {part!r} "
                             f"(use 'model' or one of {names})") from None
        weights = resolve_weights(path)
        tensors, metadata = read_weights(weights)
        try:
            spread_into_bases(target, tensors, noise, source=f"train.init_from.{part} ({weights})",
                              generator=generator)
        except UpcycleError as err:
            raise CheckpointMismatchError(str(err)) from None
        epochs[part] = _trained_epochs(Path(path), metadata)
    return epochs


def _trained_epochs(path: Path, metadata: Mapping[str, str]) -> int | None:
    """A run directory's full training length (its best weights may come from an earlier epoch)."""
    config = RunDir(path).config
    if config.is_file():
        return load_config(config).train.epochs
    return int(metadata["epoch"]) if "epoch" in metadata else None
