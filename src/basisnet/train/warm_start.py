"""Start a model (or one of its parts) from trained runs or pretrained MobileNets, spreading static
kernels into bases.

The two-run alternative to BasisNet's in-run static phase; both upcycle with
``basisnet.models.upcycle.spread_into_bases``. Sources are basisnet run directories / weights files or
torchvision / timm checkpoints named ``SOURCE:NAME=PATH`` (``basisnet.models.pretrained``).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping, TypedDict

import torch
import torch.distributed as dist
from torch import nn

from ..models.mobilenet import MobileNet
from ..models.pretrained import PretrainedError, convert_state_dict, load_into, parse_source, read_checkpoint
from ..models.upcycle import UpcycleError, keep_own_classifiers, spread_into_bases
from .checkpoint import CheckpointMismatchError, read_weights, resolve_weights
from .config import load_config
from .run_dir import RunDir

__all__ = ["Started", "warm_start"]

_logger = logging.getLogger(__name__)


class Started(TypedDict):
    """How ``warm_start`` started one part: its source's training epochs (None: unknown or not basisnet's)
    and notes such as a new classifier."""

    epochs: int | None
    notes: list[str]


def warm_start(model: nn.Module, sources: Mapping[str, str | Path], noise: float = 0.01,
               seed: int = 0) -> dict[str, Started]:
    """Start the named parts of ``model``; return per part ``{"epochs": ..., "notes": [...]}``.

    ``sources`` maps a submodule path (``"specialist"``, ``"lightweight"``, or ``"model"`` for the whole
    network) to a run directory, a safetensors file or ``SOURCE:NAME=PATH`` (a torchvision / timm
    MobileNet checkpoint). A MobileNet classifier whose class count differs from the source's keeps its
    own initialisation. The epochs a basisnet source was trained for come back (a run directory's
    configured epochs, else the epoch stored in the weights; None for pretrained checkpoints), with notes
    (a new classifier, another BatchNorm eps) that rank 0 also logs: ``train_run`` records both in
    ``init.json``.
    """
    generator = torch.Generator().manual_seed(seed)
    started: dict[str, Started] = {}
    for part, path in sources.items():
        try:
            target = model if part == "model" else model.get_submodule(part)
        except AttributeError:
            names = [n for n, _ in model.named_children()]
            raise ValueError(f"train.init_from: {type(model).__name__} has no part {part!r} "
                             f"(use 'model' or one of {names})") from None
        pretrained = parse_source(str(path))
        try:
            if pretrained:
                epochs, notes = None, _start_pretrained(target, part, *pretrained, noise, generator)
            else:
                weights = resolve_weights(path)
                tensors, metadata = read_weights(weights)
                tensors, notes = keep_own_classifiers(target, tensors)
                spread_into_bases(target, tensors, noise, source=f"train.init_from.{part} ({weights})",
                                  generator=generator)
                epochs = _trained_epochs(Path(path), metadata)
        except UpcycleError as err:  # PretrainedError included
            raise CheckpointMismatchError(str(err)) from None
        if not dist.is_initialized() or dist.get_rank() == 0:
            for note in notes:
                _logger.warning("train.init_from.%s (%s): %s", part, path, note)
        started[part] = {"epochs": epochs, "notes": notes}
    return started


def _start_pretrained(target: nn.Module, part: str, name: str, path: str, noise: float,
                      generator: torch.Generator) -> list[str]:
    if not isinstance(target, MobileNet):
        raise PretrainedError(f"train.init_from.{part}: {name} starts a MobileNet, and {part} is a "
                              f"{type(target).__name__} (name its MobileNet part: specialist or lightweight)")
    return load_into(target, name, convert_state_dict(name, read_checkpoint(path)), noise, generator)


def _trained_epochs(path: Path, metadata: Mapping[str, str]) -> int | None:
    """A run directory's full training length (its best weights may come from an earlier epoch)."""
    config = RunDir(path).config
    if config.is_file():
        return load_config(config).train.epochs
    return int(metadata["epoch"]) if "epoch" in metadata else None
