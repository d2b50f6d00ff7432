"""Start a model (or one of its parts) from trained weights, spreading static kernels into bases.

BasisNet trained from scratch on a short budget learns a routing shortcut (the specialist copies
the lightweight model's guess through the coefficients). Starting every basis from the same trained
static kernel, plus a little noise to break the symmetry, gives the specialist image features first;
the bases then drift apart only as far as the data asks.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor, nn

from .checkpoint import CheckpointMismatchError, read_weights, resolve_weights
from .config import load_config

__all__ = ["warm_start", "spread_into_bases"]


def spread_into_bases(
    model: nn.Module, tensors: Mapping[str, Tensor], noise: float = 0.01, source: str = "weights",
    generator: torch.Generator | None = None,
) -> None:
    """Load ``tensors`` into ``model``; a basis tensor (N, *shape) takes N noisy copies of a (*shape) one.

    ``noise`` is the standard deviation of the added noise relative to the source tensor's own
    standard deviation. The keys must be the model's, each with a matching or basis-expanded shape; otherwise
    ``CheckpointMismatchError`` lists what differs and the model is left untouched.
    """
    state = model.state_dict()
    missing = sorted(set(state) - set(tensors))
    unexpected = sorted(set(tensors) - set(state))
    bad = [f"{k}: source {tuple(tensors[k].shape)} vs model {tuple(v.shape)}" for k, v in state.items()
           if k in tensors and tensors[k].shape != v.shape and tuple(tensors[k].shape) != tuple(v.shape[1:])]
    if missing or unexpected or bad:
        lines = ([f"  missing in source: {k}" for k in missing[:20]] + [f"  not in the model: {k}" for k in unexpected[:20]]
                 + [f"  shape mismatch: {s}" for s in bad[:20]])
        raise CheckpointMismatchError(f"{source} cannot start this model:\n" + "\n".join(lines))
    new = {}
    for key, target in state.items():
        src = tensors[key].to(target.dtype)
        if src.shape == target.shape:
            new[key] = src.clone()
            continue
        copies = src.unsqueeze(0).expand_as(target).clone()
        if noise > 0 and src.numel() > 1:
            scale = noise * src.float().std().clamp_min(1e-12)
            copies += scale * torch.randn(copies.shape, generator=generator, dtype=copies.dtype)
        new[key] = copies
    model.load_state_dict(new)


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
        spread_into_bases(target, tensors, noise, source=f"train.init_from.{part} ({weights})", generator=generator)
        epochs[part] = _trained_epochs(Path(path), metadata)
    return epochs


def _trained_epochs(path: Path, metadata: Mapping[str, str]) -> int | None:
    """A run directory's full training length (its best weights may come from an earlier epoch)."""
    if (path / "config.yaml").is_file():
        return load_config(path / "config.yaml").train.epochs
    return int(metadata["epoch"]) if "epoch" in metadata else None
