"""Deterministic, class-stratified train/validation splits."""

from __future__ import annotations

import torch
from torch import Tensor


def train_val_split(targets: Tensor, val_size: int | float, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Sorted int64 index tensors ``(train, val)`` with each class split in proportion.

    ``val_size`` is a count (int, 1 .. N-1) or a fraction (float in (0, 1)). Per-class counts
    are rounded by largest remainder so they sum exactly to the request (CIFAR-10 with 5000
    gives 500 per class). The same ``targets`` and ``seed`` always give the same split.
    """
    if targets.dim() != 1 or targets.dtype.is_floating_point or targets.dtype == torch.bool:
        raise ValueError(f"targets must be a 1-D integer tensor, got {targets.dtype} {tuple(targets.shape)}")
    n = len(targets)
    if isinstance(val_size, bool) or not isinstance(val_size, (int, float)):
        raise ValueError(f"val_size must be an int count or a float fraction, got {val_size!r}")
    if isinstance(val_size, float):
        if not 0.0 < val_size < 1.0:
            raise ValueError(f"val_size as a fraction must lie in (0, 1), got {val_size}")
        count = round(val_size * n)
    else:
        count = val_size
    if not 1 <= count <= n - 1:
        raise ValueError(f"val_size must leave at least one sample on each side of {n}, got {val_size!r} ({count})")
    if len(targets) and int(targets.min()) < 0:
        raise ValueError("targets must be non-negative class indices")

    targets = targets.to(torch.int64)
    counts = torch.bincount(targets)
    quota = counts.double() * count / n
    per_class = quota.floor().long()
    remainder = quota - per_class
    # Hand the leftover samples to the classes with the largest remainders (ties: lower class first).
    order = sorted(range(len(counts)), key=lambda c: (-float(remainder[c]), c))
    for c in order[: count - int(per_class.sum())]:
        per_class[c] += 1

    generator = torch.Generator().manual_seed(seed)
    val = []
    for c in range(len(counts)):
        members = torch.nonzero(targets == c).flatten()
        val.append(members[torch.randperm(len(members), generator=generator)[: int(per_class[c])]])
    val_index = torch.cat(val).sort().values
    is_val = torch.zeros(n, dtype=torch.bool)
    is_val[val_index] = True
    return torch.nonzero(~is_val).flatten(), val_index
