"""What the in-memory and the streaming loader share: epochs, length and resumable batches from one
:class:`ShardSampler`, and the torch ``DataLoader`` that reads those batches in worker processes."""

from __future__ import annotations

import signal
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .sampler import ShardSampler

__all__ = ["ShardedLoader"]


def leave_signals_to_the_main_process(worker_id: int) -> None:
    """``worker_init_fn``: SIGTERM and SIGINT reach every process of a job (SLURM signals all its tasks, a
    terminal's Ctrl-C the whole process group). A worker that died of them would break the batch the
    main process is waiting for while it finishes its step and saves; the main process stops the workers
    itself when it is done."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class ShardedLoader(ABC):
    """Base of ``BatchLoader`` and ``StreamLoader``: subclasses implement ``iterate(start_batch)`` from
    :meth:`batches` (this rank's index batches of the epoch, from ``start_batch`` on)."""

    def __init__(self, dataset: Dataset[Any], batch_size: int, shuffle: bool, drop_last: bool = False, seed: int = 0,
                 rank: int = 0, world_size: int = 1, num_workers: int = 0, pin_memory: bool = False) -> None:
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.dataset = dataset
        self.num_workers = num_workers
        self.pin_memory = pin_memory  # page-locked batches: a non-blocking copy to a GPU then does not wait
        self.sampler = ShardSampler(len(dataset), batch_size, rank, world_size, shuffle, drop_last, seed)  # type: ignore[arg-type]

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

    @abstractmethod
    def iterate(self, start_batch: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """The current epoch's batches from ``start_batch`` on (to resume mid-epoch)."""

    def batches(self, start_batch: int = 0) -> list[np.ndarray]:
        if not 0 <= start_batch <= len(self):
            raise ValueError(f"start_batch must lie in [0, {len(self)}], got {start_batch}")
        return self.sampler.batches()[start_batch:]

    def worker_loader(self, batch_sampler: list[list[Any]],
                      collate: Callable[[list[Any]], tuple[Tensor, Tensor]]) -> Iterator[tuple[Tensor, Tensor]]:
        """The batches of ``self.dataset`` read by ``num_workers`` DataLoader workers (0: in this process)."""
        if not batch_sampler:
            return iter(())
        return iter(DataLoader(self.dataset, batch_sampler=batch_sampler, num_workers=self.num_workers,
                               collate_fn=collate, pin_memory=self.pin_memory,
                               worker_init_fn=leave_signals_to_the_main_process,
                               # worker seeds come from here, not from torch's global RNG (which stays untouched)
                               generator=torch.Generator().manual_seed(self.sampler.seed + self.epoch)))
