"""The streaming path: images decoded and augmented per sample in DataLoader workers, batched as uint8.

For sets too large to hold decoded in memory (ImageNet: ~190 GB at 224 px per process). Only the file
index stays resident; normalisation happens on the training device (``Normalize``).
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .decode import UnreadableImageError, open_image, resolve_decoder
from .files import FileIndex
from .sample_transforms import SampleTransform
from .sharded import ShardedLoader

__all__ = ["StreamDataset", "StreamLoader", "sample_seed"]

_MASK = (1 << 64) - 1
_MAX_REPLACEMENT_TRIES = 100  # skip_bad: beyond this many unreadable images in a row the data set itself is wrong


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 64-bit seed for one image in one epoch: augmentation then depends on nothing else
    (not the worker that decodes it, not the batch it lands in, not a resume)."""
    return _splitmix64(_splitmix64(_splitmix64(seed & _MASK) ^ epoch) ^ index)


class StreamDataset(Dataset[tuple[np.ndarray, int]]):
    """Map-style dataset over a :class:`FileIndex`: item ``(epoch, i)`` is image ``i`` decoded and
    transformed with randomness seeded by ``(seed, epoch, i)``, as uint8 pixels ``[S, S, 3]`` (HWC, as
    Pillow gives them: the collate step makes one copy into the batch, not two).

    A plain integer key means epoch 0. An unreadable file raises ``ValueError`` naming it; with
    ``skip_bad`` the next readable image in the index stands in for it (warned once per process).
    ``decoder``: ``pillow``, ``simplejpeg`` (optional extra) or ``auto`` (simplejpeg when installed); the
    two decoders' pixels differ slightly, so a run keeps the one it started with.
    """

    def __init__(self, index: FileIndex, transform: SampleTransform, seed: int = 0, skip_bad: bool = False,
                 decoder: str = "pillow") -> None:
        if len(index) == 0:
            raise ValueError("the file index is empty")
        self.index, self.transform, self.seed, self.skip_bad = index, transform, seed, skip_bad
        self.decoder = resolve_decoder(decoder)
        self.classes = list(index.classes)
        self._warned = False

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[np.ndarray, int]:
        epoch, i = key if isinstance(key, tuple) else (0, key)
        rng_seed = sample_seed(self.seed, epoch, i)
        try:
            return self._load(i, random.Random(rng_seed)), int(self.index.labels[i])
        except UnreadableImageError as exc:
            if not self.skip_bad:
                raise UnreadableImageError(f"cannot read image {self.index.name(i)}: {exc} (data.skip_bad=true "
                                           "replaces unreadable images)") from exc
            error = exc
        if not self._warned:
            warnings.warn(f"skipping unreadable image {self.index.name(i)}: {error}", stacklevel=2)
            self._warned = True
        for j in (np.arange(1, min(_MAX_REPLACEMENT_TRIES, len(self.index))) + i) % len(self.index):
            try:  # the next readable image stands in, with its own label
                return self._load(int(j), random.Random(rng_seed)), int(self.index.labels[j])
            except UnreadableImageError as exc:
                error = exc
        raise UnreadableImageError(f"image {self.index.name(i)} and the {_MAX_REPLACEMENT_TRIES - 1} after it cannot be "
                                   f"read (last: {error}): is {self.index.root} readable?") from error

    def _load(self, j: int, rng: random.Random) -> np.ndarray:
        return np.asarray(self.transform(open_image(self.index.read(j), self.decoder), rng))


def _collate(samples: list[tuple[np.ndarray, int]]) -> tuple[Tensor, Tensor]:
    """One copy of the HWC pixels into a batch, returned as ``[B, 3, S, S]`` in channels_last layout (the
    layout the networks run in; ``.contiguous()`` gives NCHW memory where wanted)."""
    pixels, labels = zip(*samples)
    batch = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2)
    return batch, torch.tensor(labels, dtype=torch.int64)


class StreamLoader(ShardedLoader):
    """Batches ``(uint8 [B, 3, S, S], int64 [B])`` of a :class:`StreamDataset`, sharded and ordered by a
    :class:`ShardSampler`; ``iterate(k)`` resumes an epoch after ``k`` finished batches.

    ``num_workers`` processes decode in the background (0: in this process); ``pin_memory`` when the
    batches go to a GPU, so the host-to-device copy can be asynchronous.
    """

    def iterate(self, start_batch: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        keys: list[list[Any]] = [[(self.epoch, int(i)) for i in batch] for batch in self.batches(start_batch)]
        return self.worker_loader(keys, _collate)
