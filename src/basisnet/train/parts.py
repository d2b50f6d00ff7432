"""Everything an optimisation step touches, built once from the config: optimizer, schedule, gradient scaler,
EMA, the training task (what the loss is made of), mixed precision and the (compiled) forward."""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ContextManager

import torch
from torch import Tensor, nn

from ..layers import to_channels_last
from .config import ConfigError, TrainConfig
from .distributed import unwrap
from .ema import ModelEma
from .hooks import check_train_options, training_hooks
from .optim import create_optimizer, create_scheduler
from .task import TrainingTask

__all__ = ["TrainParts", "build_parts"]

_AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class TrainParts:
    """Everything an optimisation step touches, built once by :func:`build_parts`."""

    model: nn.Module  # as called: possibly DistributedDataParallel-wrapped
    forward: Callable[[Tensor], Any]  # ``model`` or its torch.compile'd version
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler  # enabled for fp16 only
    ema: ModelEma | None
    task: TrainingTask
    augment: torch.Generator  # CPU: augmentation parameters are drawn on the CPU, then applied on device
    autocast: Callable[[], ContextManager[Any]]
    cfg: TrainConfig

    @property
    def net(self) -> nn.Module:
        return unwrap(self.model)

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.net

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def begin_epoch(self, epoch: int, step: bool) -> None:
        """The model's epoch hook (``step``: with the one-off change due at the epoch's start); the EMA copy
        follows the trained weights, so it only takes the epoch's phase."""
        training_hooks(self.net).begin_epoch(epoch, self.cfg, step)
        if self.ema is not None:
            training_hooks(self.ema.module).begin_epoch(epoch, self.cfg, False)

    def state_dict(self) -> dict[str, Any]:
        """What ``last.state.pt`` keeps of the parts (besides the loop and the random streams)."""
        return {"model": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "ema": self.ema.state_dict() if self.ema is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])  # before the scheduler: it restores the current lr
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])


def _autocast(device: torch.device, amp: str) -> Callable[[], ContextManager[Any]]:
    dtype = _AMP_DTYPES[amp]
    if dtype is None:
        return contextlib.nullcontext
    if dtype == torch.float16 and device.type != "cuda":
        raise ConfigError(f"train.amp=fp16 needs a CUDA device (this run is on {device}): use bf16 or off")
    return lambda: torch.autocast(device.type, dtype=dtype)


def build_parts(model: nn.Module, tc: TrainConfig, steps_per_epoch: int, task: TrainingTask | None = None,
                resume: bool = False) -> TrainParts:
    """The parts for ``model`` (on its device): its training hooks begin first (``resume``: its weights are
    loaded next), since what they change (BasisNet's tied bases) must be what the optimizer and EMA see."""
    net = unwrap(model)
    device = next(net.parameters()).device
    check_train_options(type(net), tc)
    training_hooks(net).begin_training(tc, resume)
    if tc.channels_last:
        to_channels_last(net)
    optimizer = create_optimizer(net, tc, fused=device.type == "cuda" and tc.amp == "fp16"
                                 and tc.optimizer in ("sgd", "adamw"))
    scheduler = create_scheduler(optimizer, tc, steps_per_epoch)
    ema = ModelEma(net, tc.ema_decay) if tc.ema_decay > 0 else None
    forward = torch.compile(model, backend="inductor" if tc.compile is True else tc.compile) if tc.compile else model
    scaler = torch.amp.GradScaler(device.type, enabled=tc.amp == "fp16")
    task = task if task is not None else TrainingTask.from_config(tc)
    return TrainParts(model, forward, optimizer, scheduler, scaler, ema, task, torch.Generator(),
                      _autocast(device, tc.amp), tc)
