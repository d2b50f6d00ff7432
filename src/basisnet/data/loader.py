"""Epoch-seeded, shardable, resumable mini-batches of an in-memory set."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, default_collate

from .dataset import ImageTensorDataset
from .sampler import ShardSampler
from .workers import leave_signals_to_the_main_process


class BatchLoader:
    """Batches ``(uint8 or float images [B, 3, H, W], int64 labels [B])`` in a reproducible order.

    The order is a function of ``(seed, epoch)`` only and is sharded by the :class:`ShardSampler` the
    streaming path uses, so both paths give the same batches and a resumed run sees the same ones:
    ``drop_last`` (training) cuts global batches, every rank runs the same number of equal batches and
    each image comes at most once per epoch; without it (evaluation) every image comes exactly once
    across the ranks. An :class:`ImageTensorDataset` is batched by indexing its tensors; any other dataset
    of ``(CHW tensor, int)`` goes through a torch ``DataLoader`` with ``num_workers`` on the same indices.
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
        self.dataset = dataset
        self.num_workers = num_workers
        self.pin_memory = pin_memory  # page-locked batches: a non-blocking copy to a GPU then does not wait
        size = len(dataset)  # type: ignore[arg-type]
        self.sampler = ShardSampler(size, batch_size, rank, world_size, shuffle, drop_last, seed)

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next iteration uses."""
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return self.iterate()

    def iterate(self, start_batch: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """The current epoch's batches from ``start_batch`` on (to resume mid-epoch)."""
        if not 0 <= start_batch <= len(self):
            raise ValueError(f"start_batch must lie in [0, {len(self)}], got {start_batch}")
        batches = self.sampler.batches()[start_batch:]
        if isinstance(self.dataset, ImageTensorDataset):
            # a set held in GPU memory is indexed there: the epoch's indices go over once, not once per batch
            flat = torch.from_numpy(np.concatenate(batches) if batches else np.zeros(0, np.int64))
            flat = flat.to(self.dataset.images.device)
            batches = list(flat.split([len(b) for b in batches]))
            pin = self.pin_memory and self.dataset.images.device.type == "cpu"
            return ((self.dataset.images[idx].pin_memory() if pin else self.dataset.images[idx],
                     self.dataset.targets[idx]) for idx in batches)
        loader = DataLoader(
            self.dataset,
            batch_sampler=[idx.tolist() for idx in batches],
            num_workers=self.num_workers,
            collate_fn=_collate,
            pin_memory=self.pin_memory,
            worker_init_fn=leave_signals_to_the_main_process,
            # DataLoader draws its worker base seed from this, not from (and so not disturbing) torch's global RNG
            generator=torch.Generator().manual_seed(self.sampler.seed + self.epoch),
        )
        return iter(loader)


def _collate(samples: list[tuple[Tensor, int]]) -> tuple[Tensor, Tensor]:
    images, labels = default_collate(samples)
    return images, labels.to(torch.int64)
