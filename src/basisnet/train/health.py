"""Non-finite losses and gradients, found without making a step wait for the device.

On a GPU the loss is summed on the device, and NaN/Inf in the loss or gradient norm is recorded there too;
both are read (one host sync) every ``train.log_interval`` steps and before anything is saved (on the CPU,
where reading is free, every step), so a non-finite value raises before a checkpoint could keep it.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor

from .distributed import is_distributed
from .resume import LoopState
from .run_dir import RunDir

__all__ = ["DeviceStats", "NonFiniteLossError", "non_finite", "settle"]

_MIN_GRAD_SCALE = 2.0**-14  # fp16: below this the scaler has skipped step after step; the gradients stay non-finite


class NonFiniteLossError(RuntimeError):
    """The loss (or its gradient norm) became NaN/inf; nothing was saved after it."""

    def __init__(self, quantity: str, value: float, epoch: int, step: int, global_step: int,
                 checkpoint: Path | None) -> None:
        self.quantity, self.value, self.epoch, self.step = quantity, value, epoch, step
        self.global_step, self.checkpoint = global_step, checkpoint
        where = (f"last good checkpoint: {checkpoint} (continue with basisnet train --resume)" if checkpoint
                 else "no checkpoint had been written yet")
        super().__init__(
            f"non-finite {quantity} ({value}) at epoch {epoch}, step {step} (global step {global_step}); "
            f"training stopped without saving; {where}. Lower train.lr, raise train.warmup_epochs "
            "or set train.grad_clip.")


def non_finite(quantity: str, value: float, loop: LoopState, run: RunDir, back: int = 0) -> NonFiniteLossError:
    """The error for the step ``loop`` is about to take, or the one ``-back`` steps before it (1-based
    epoch and step in the message)."""
    checkpoint = run.last_weights if run.state.is_file() else None
    return NonFiniteLossError(quantity, value, loop.epoch + 1, loop.batch + 1 + back, loop.global_step + 1 + back,
                              checkpoint)


class DeviceStats:
    """The epoch's loss sum and the first non-finite loss / gradient norm, kept on the device so a step
    never waits for it; ``settle`` reads them (one sync) into the loop state."""

    _KINDS = ("loss", "gradient norm")

    def __init__(self, device: torch.device, check_grads: bool) -> None:
        self.device, self.check_grads = device, check_grads
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.samples = 0
        self.bad = torch.zeros(3, dtype=torch.float64, device=device)  # kind + 1 (0: none), value, global step

    def record(self, loss: Tensor, grad_norm: Tensor, batch_size: int, global_step: int) -> None:
        self.loss_sum += loss.double() * batch_size
        self.samples += batch_size
        values = torch.stack([loss.double(), grad_norm.double()])
        flags = ~torch.isfinite(values)
        if not self.check_grads:  # fp16: the gradient scaler skips steps with inf gradients by design
            flags[1] = False
        kind = torch.where(flags[0], 1.0, torch.where(flags[1], 2.0, 0.0)).double()
        value = torch.where(flags[0], values[0], values[1])
        step = torch.full((), float(global_step), dtype=torch.float64, device=self.device)  # a fill, not a copy
        new = torch.stack([kind, value, step])
        self.bad = torch.where((self.bad[0] == 0) & (kind > 0), new, self.bad)

    def settle(self, loop: LoopState) -> tuple[str, float, int] | None:
        """Move the loss sum into ``loop`` (summed over ranks); the first non-finite value, if any."""
        totals = torch.cat([self.bad[:1], torch.stack([self.loss_sum, torch.tensor(float(self.samples),
                                                                                     dtype=torch.float64,
                                                                                     device=self.device)])])
        if is_distributed():
            dist.all_reduce(totals)  # the flag summed: non-zero on every rank if on one
        flag, loss_sum, samples = totals.tolist()
        if flag:
            first = torch.where(self.bad[0] > 0, self.bad[2], torch.full_like(self.bad[2], math.inf)).reshape(1)
            if is_distributed():  # every rank sees the flag, so every rank joins this one too
                dist.all_reduce(first, op=dist.ReduceOp.MIN)  # the first bad step over the ranks
            kind, value, _ = self.bad.tolist()
            return (self._KINDS[int(kind) - 1] if kind else "loss on another rank"), value, int(first.item())
        loop.loss_sum += loss_sum
        loop.samples += int(samples)
        self.loss_sum.zero_()
        self.samples = 0
        return None


def settle(stats: DeviceStats, loop: LoopState, run: RunDir, scaler: torch.amp.GradScaler) -> None:
    """Read the device-side statistics (a host sync); raise for a non-finite value, or for an fp16 gradient
    scale that has collapsed because every step overflows (the loss stays finite, nothing would learn)."""
    bad = stats.settle(loop)
    if bad is not None:  # ``step`` is a global step: the offset from the loop's position is the same mid-step or after
        quantity, value, step = bad
        raise non_finite(quantity, value, loop, run, step - loop.global_step - 1)
    if scaler.is_enabled() and scaler.get_scale() < _MIN_GRAD_SCALE:
        raise non_finite(f"gradients (fp16 scale fell to {scaler.get_scale():.2g}: every step overflowed)",
                         float("inf"), loop, run, -1)  # named at the last step taken
