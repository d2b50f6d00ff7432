"""Epoch-seeded, shardable, resumable mini-batches of an in-memory set."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import default_collate

from .dataset import ImageTensorDataset
from .sharded import ShardedLoader


class BatchLoader(ShardedLoader):
    """Batches ``(uint8 or float images [B, 3, H, W], int64 labels [B])`` in a reproducible order.

    The order is a function of ``(seed, epoch)`` only and is sharded by the :class:`ShardSampler` the
    streaming path uses, so both paths give the same batches and a resumed run sees the same ones:
    ``drop_last`` (training) cuts global batches, every rank runs the same number of equal batches and
    each image comes at most once per epoch; without it (evaluation) every image comes exactly once
    across the ranks. An :class:`ImageTensorDataset` is batched by indexing its tensors; any other dataset
    of ``(CHW tensor, int)`` goes through a torch ``DataLoader`` with ``num_workers`` on the same indices.
    """

    def iterate(self, start_batch: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """The current epoch's batches from ``start_batch`` on (to resume mid-epoch)."""
        batches = self.batches(start_batch)
        if isinstance(self.dataset, ImageTensorDataset):
            # a set held in GPU memory is indexed there: the epoch's indices go over once, not once per batch
            flat = torch.from_numpy(np.concatenate(batches) if batches else np.zeros(0, np.int64))
            flat = flat.to(self.dataset.images.device)
            pin = self.pin_memory and self.dataset.images.device.type == "cpu"
            return ((self.dataset.images[idx].pin_memory() if pin else self.dataset.images[idx],
                     self.dataset.targets[idx]) for idx in flat.split([len(b) for b in batches]))
        return self.worker_loader([idx.tolist() for idx in batches], _collate)


def _collate(samples: list[tuple[Tensor, int]]) -> tuple[Tensor, Tensor]:
    images, labels = default_collate(samples)
    return images, labels.to(torch.int64)
