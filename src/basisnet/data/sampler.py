"""Which images each process reads in each epoch: exactly-once sharding that resumes mid-epoch."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["ShardSampler"]


class ShardSampler:
    """This rank's batches of image indices for one epoch, a function of ``(seed, epoch)`` only.

    ``drop_last=False`` (evaluation): every image exactly once across the ranks, rank ``r`` taking every
    ``world_size``-th image from ``r`` on, so ranks may differ by one image and one batch.

    ``drop_last=True`` (training): the shuffled order is cut into global batches of
    ``batch_size * world_size``; rank ``r`` takes the ``r``-th slice of each, so every rank runs the same
    number of equal batches (DDP needs that) and the union over ranks is the single-process batch. An image
    is seen at most once per epoch; the ``N mod global batch`` images of the incomplete last global batch
    sit that epoch out (a different set each epoch).
    """

    def __init__(self, size: int, batch_size: int, rank: int = 0, world_size: int = 1, shuffle: bool = True,
                 drop_last: bool = False, seed: int = 0) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank} world_size={world_size}")
        if drop_last and size < batch_size * world_size:
            raise ValueError(f"{size} images are fewer than one global batch ({batch_size} x {world_size} processes)")
        self.size, self.batch_size, self.rank, self.world_size = size, batch_size, rank, world_size
        self.shuffle, self.drop_last, self.seed = shuffle, drop_last, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> np.ndarray:
        """All indices of the current epoch in global order."""
        if not self.shuffle:
            return np.arange(self.size, dtype=np.int64)
        return torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + self.epoch)).numpy()

    def batches(self) -> list[np.ndarray]:
        """This rank's batches for the current epoch, in order."""
        order, b, world = self.order(), self.batch_size, self.world_size
        if self.drop_last:
            g = b * world
            return [order[k * g + self.rank * b: k * g + (self.rank + 1) * b] for k in range(self.size // g)]
        mine = order[self.rank::world]
        return [mine[i:i + b] for i in range(0, len(mine), b)]

    def __len__(self) -> int:
        """Batches of this rank per epoch."""
        if self.drop_last:
            return self.size // (self.batch_size * self.world_size)
        mine = len(range(self.rank, self.size, self.world_size))
        return -(-mine // self.batch_size)
