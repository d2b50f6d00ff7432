"""Multiply-add accounting with ``torch.utils.flop_counter.FlopCounterMode`` (MAdds = FLOPs / 2).

Counted in eager mode under ``no_grad``: convolutions and matmuls (conv, linear, and the matmul that
mixes basis kernels). BatchNorm, activations, pooling and element-wise ops are not counted, as in the
MobileNet, BasisNet, MSDNet and RANet papers' conv + linear counts. The mixing of basis kernels runs in
each basis layer's ``mixer`` submodule, or for one coefficient set at inference in the network's fused
``mixer`` (its chunks' padding included), so its cost is reported as ``synthesis``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

MIXER_SUFFIX = ".mixer"


@dataclass
class MaddsReport:
    """Multiply-adds per image: the total, the kernel-synthesis part, and a per-module breakdown."""

    madds: int
    synthesis: int
    params: int
    per_module: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"madds": self.madds, "synthesis_madds": self.synthesis, "params": self.params,
                "per_module": self.per_module}


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _input_for(model: nn.Module, resolution: int | None, batch: int = 1) -> Tensor:
    side = resolution or getattr(model, "resolution", None)
    if side is None:
        raise ValueError("pass resolution: the model does not state the input size it is meant for")
    param = next(model.parameters())
    return torch.zeros(batch, 3, side, side, device=param.device, dtype=param.dtype)


def count_madds(model: nn.Module, resolution: int | None = None, depth: int = 3, **forward_kwargs) -> MaddsReport:
    """Multiply-adds of one forward pass on one image of ``resolution`` (default: ``model.resolution``).

    ``depth`` bounds the breakdown to module names with at most that many dots below the root.
    ``forward_kwargs`` go to ``model.forward`` (e.g. ``max_exits``).
    """
    x = _input_for(model, resolution)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x, **forward_kwargs)
    finally:
        model.train(was_training)
    counts = counter.get_flop_counts()
    root = type(model).__name__
    per_module: dict[str, int] = {}
    synthesis = 0
    for name, ops in counts.items():
        if name == "Global" or name == root:
            continue
        total = sum(ops.values()) // 2
        rel = name[len(root) + 1:] if name.startswith(root + ".") else name
        if ("." + rel).endswith(MIXER_SUFFIX):  # a layer's mixer or a network's fused one
            synthesis += total
        if rel.count(".") < depth:
            per_module[rel] = total
    return MaddsReport(counter.get_total_flops() // 2, synthesis, count_params(model), per_module)


def exit_madds(model: nn.Module, resolution: int | None = None) -> list[int]:
    """Cumulative multiply-adds per image at each exit of a multi-exit classifier.

    Exit k costs what ``model(x, max_exits=k)`` runs, so every model states its exits through the
    same counter rather than through hand-written formulas.
    """
    return [count_madds(model, resolution, max_exits=k).madds for k in range(1, model.num_exits + 1)]
