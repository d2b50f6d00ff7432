"""Stopping a run cleanly when a scheduler asks: SIGTERM (SLURM, Kubernetes, spot instances) or SIGINT (a
terminal's Ctrl-C).

Schedulers send SIGTERM and kill the job a grace period later. The first signal only raises a flag: the
training loop finishes the step it is in, every rank agrees on that step (one tiny all-reduce per step,
on a CPU group so a GPU step never waits for it), rank 0 writes a resumable checkpoint, and
:class:`TrainingInterrupted` carries the shell's exit code (128 + signal: 143 for SIGTERM, 130 for SIGINT)
to the command line. A second signal stops at once (SIGTERM: the default action; SIGINT: KeyboardInterrupt).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from types import FrameType
from typing import Any

import torch
import torch.distributed as dist

from .distributed import is_distributed, world_size
from .run_dir import RunDir

__all__ = ["StopSignals", "TrainingInterrupted"]

_logger = logging.getLogger(__name__)
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class TrainingInterrupted(Exception):
    """Training stopped on a signal after saving a resumable checkpoint (``exit_code``: 128 + signal)."""

    def __init__(self, signum: int, epoch: int, step: int | None, global_step: int, run: RunDir) -> None:
        self.signum, self.epoch, self.step, self.global_step = signum, epoch, step, global_step
        self.run, self.exit_code = run, 128 + signum
        launcher = "torchrun ... -m basisnet" if world_size() > 1 else "basisnet"
        super().__init__(
            f"stopped by {signal.Signals(signum).name} "
            + (f"at the end of epoch {epoch}" if step is None else f"in epoch {epoch} after step {step}")
            + f" (global step {global_step}); "
            f"checkpoint: {run.state}; continue with: {launcher} train --resume {run}")


class StopSignals:
    """While active (a ``with`` block), SIGTERM and SIGINT ask the loop to stop instead of killing it.

    Handlers can only be installed from the main thread; elsewhere (``fit`` called from a worker thread)
    signals keep their usual effect. ``requested()`` is a collective under torch.distributed: every rank
    calls it at the same point and gets the same answer, the signal any rank received.
    """

    def __init__(self) -> None:
        self.received = 0
        self._previous: dict[int, Any] = {}
        self._group: Any = None

    def __enter__(self) -> StopSignals:
        if is_distributed():  # a gloo group: the flag is a CPU tensor whatever the training backend
            self._group = dist.new_group(backend="gloo")
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
        if self._group is not None:
            dist.destroy_process_group(self._group)
            self._group = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received:  # the second signal: stop now
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.received = signum
        _logger.warning("received %s: finishing the current step, then writing a checkpoint (send it again to "
                        "stop at once)", signal.Signals(signum).name)

    def requested(self) -> int:
        """The signal to stop on (0: go on), the same on every rank."""
        if self._group is None:
            return self.received
        flag = torch.tensor([self.received], dtype=torch.int64)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group)
        return int(flag.item())
