"""Epoch-seeded, shardable, resumable mini-batches."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, default_collate
from torch.utils.data.distributed import DistributedSampler

from .dataset import ImageTensorDataset


class BatchLoader:
    """Batches ``(uint8 or float images [B, 3, H, W], int64 labels [B])`` in a reproducible order.

    The order is a function of ``(seed, epoch)`` only and is sharded exactly like
    ``torch.utils.data.DistributedSampler`` (each rank gets ``ceil(N / world_size)`` samples, the
    tail padded by wrapping around), so a run resumed from a checkpoint sees the same batches.
    ``drop_last`` drops this rank's final short batch. An :class:`ImageTensorDataset` is batched by
    indexing its tensors; any other dataset of ``(CHW tensor, int)`` goes through a torch
    ``DataLoader`` with ``num_workers`` on the same indices.
    """

    def __init__(
        self,
        dataset: Dataset[Any],
        batch_size: int,
        shuffle: bool,
        drop_last: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank} world_size={world_size}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.num_workers = num_workers
        self.pin_memory = pin_memory  # page-locked batches: a non-blocking copy to a GPU then does not wait
        self.epoch = 0
        self._sampler = DistributedSampler(
            dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed, drop_last=False
        )

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next iteration uses."""
        self.epoch = epoch

    def indices(self) -> Tensor:
        """This rank's sample indices for the current epoch, in batch order."""
        self._sampler.set_epoch(self.epoch)
        return torch.tensor(list(self._sampler), dtype=torch.int64)

    def __len__(self) -> int:
        samples = len(self._sampler)
        return samples // self.batch_size if self.drop_last else -(-samples // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return self.iterate()

    def iterate(self, start_batch: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """The current epoch's batches from ``start_batch`` on (to resume mid-epoch)."""
        if not 0 <= start_batch <= len(self):
            raise ValueError(f"start_batch must lie in [0, {len(self)}], got {start_batch}")
        order, size = self.indices(), self.batch_size
        if isinstance(self.dataset, ImageTensorDataset):
            # a set held in GPU memory is indexed there: the epoch's order goes over once, not once per batch
            order = order.to(self.dataset.images.device)
        batches = [order[i * size : (i + 1) * size] for i in range(start_batch, len(self))]
        if isinstance(self.dataset, ImageTensorDataset):
            pin = self.pin_memory and self.dataset.images.device.type == "cpu"
            return ((self.dataset.images[idx].pin_memory() if pin else self.dataset.images[idx],
                     self.dataset.targets[idx]) for idx in batches)
        loader = DataLoader(
            self.dataset,
            batch_sampler=[idx.tolist() for idx in batches],
            num_workers=self.num_workers,
            collate_fn=_collate,
            pin_memory=self.pin_memory,
            # DataLoader draws its worker base seed from this, not from (and so not disturbing) torch's global RNG
            generator=torch.Generator().manual_seed(self._sampler.seed + self.epoch),
        )
        return iter(loader)


def _collate(samples: list[tuple[Tensor, int]]) -> tuple[Tensor, Tensor]:
    images, labels = default_collate(samples)
    return images, labels.to(torch.int64)
