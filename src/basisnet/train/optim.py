"""Optimizer and per-step learning-rate schedule."""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from ..layers import BASIS_LAYERS
from .config import TrainConfig

__all__ = ["param_groups", "create_optimizer", "create_scheduler", "WarmupCosine"]


def _no_decay_names(model: nn.Module) -> set[str]:
    """Full names a module lists in ``no_weight_decay()`` (timm convention), on any submodule."""
    names: set[str] = set()
    for prefix, module in model.named_modules():
        hook = getattr(module, "no_weight_decay", None)
        if callable(hook):
            names.update(f"{prefix}.{n}" if prefix else n for n in hook())
    return names


def param_groups(model: nn.Module, weight_decay: float, lr: float | None = None,
                 basis_lr_scale: bool = False) -> list[dict[str, Any]]:
    """Split trainable parameters into decayed and undecayed groups.

    Decaying biases and norm scales/shifts (every tensor with ndim <= 1) only hurts
    accuracy, and modules can exempt more via ``no_weight_decay()``. With ``basis_lr_scale``
    (plain SGD), the N kernels of a basis layer get ``lr * N`` and ``weight_decay / N``: under an
    even mix each basis sees 1/N of the gradient, so without it the synthesized kernel would learn
    N times slower than a static kernel (and decay at the static rate with it).
    """
    skip = _no_decay_names(model)
    bases = {id(p): m.num_bases for m in model.modules() if isinstance(m, BASIS_LAYERS)
             for p in m.parameters(recurse=False)} if basis_lr_scale else {}
    groups: dict[tuple[float, int], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            wd = 0.0 if p.ndim <= 1 or name in skip else weight_decay
            groups.setdefault((wd, bases.get(id(p), 1)), []).append(p)
    out = []
    for (wd, n), params in groups.items():
        group: dict[str, Any] = {"params": params, "weight_decay": wd / n}
        if lr is not None:
            group["lr"] = lr * n
        out.append(group)
    return out


def create_optimizer(model: nn.Module, cfg: TrainConfig, fused: bool = False) -> torch.optim.Optimizer:
    """Optimizer named by ``cfg.optimizer`` over ``param_groups(model, cfg.weight_decay)``.

    ``fused`` (CUDA, sgd and adamw): one kernel per step, and a GradScaler can skip an overflowed step
    without reading its flag on the host."""
    groups = param_groups(model, cfg.weight_decay, cfg.lr, basis_lr_scale=cfg.basis_lr_scale and cfg.optimizer == "sgd")
    if not groups:
        raise ValueError("model has no trainable parameters")
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, fused=fused or None)
    if cfg.optimizer == "rmsprop":
        # TF-style settings used by the MobileNet/EfficientNet recipes (timm's rmsprop defaults).
        return torch.optim.RMSprop(groups, lr=cfg.lr, alpha=0.9, eps=1e-3, momentum=cfg.momentum)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, fused=fused or None)
    raise ValueError(f"train.optimizer must be sgd, rmsprop or adamw, got {cfg.optimizer!r}")


class WarmupCosine:
    """LR multiplier at optimizer step ``s``: linear warm-up, then cosine (or constant) down to ``min_factor``.

    A class rather than a closure so ``LambdaLR.state_dict()`` captures it and a resumed run
    gets bit-identical learning rates.
    """

    def __init__(self, total_steps: int, warmup_steps: int, min_factor: float, cosine: bool = True) -> None:
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps
        self.min_factor = min_factor
        self.cosine = cosine

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps  # step 0 already trains (lr/warmup, not 0)
        if not self.cosine:
            return 1.0
        t = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        return self.min_factor + (1.0 - self.min_factor) * 0.5 * (1.0 + math.cos(math.pi * t))


def create_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int) -> LambdaLR:
    """Per-step schedule over ``cfg.epochs * steps_per_epoch`` steps; call ``.step()`` after every optimizer step."""
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch} (is the training set empty?)")
    schedule = WarmupCosine(
        total_steps=cfg.epochs * steps_per_epoch,
        warmup_steps=round(cfg.warmup_epochs * steps_per_epoch),
        min_factor=cfg.min_lr / cfg.lr,
        cosine=cfg.schedule == "cosine",
    )
    return LambdaLR(optimizer, schedule)
