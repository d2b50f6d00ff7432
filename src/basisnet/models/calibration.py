"""Randomly initialised models that answer like trained ones, for benchmarks and tests of early exit.

At initialisation activations fade through a deep MobileNet (every image ends with nearly the same
features) and every softmax is near uniform, so one confidence threshold stops all images or none and a
comparison of logits near zero passes whatever the code does. Measuring BatchNorm statistics on one
batch gives features of a real scale; re-drawing the exit classifiers wide gives confidences that spread.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["measure_batchnorm", "widen_classifiers"]


@torch.no_grad()
def measure_batchnorm(model: nn.Module, x: Tensor) -> nn.Module:
    """Set every BatchNorm's running statistics to exactly those of the batch ``x`` (each layer's momentum
    kept); returns ``model`` in eval mode."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches seen: here, one
    model.train()(x)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    return model.eval()


def widen_classifiers(model: nn.Module, num_classes: int, gain: float = 4.0) -> nn.Module:
    """Re-draw every linear layer with ``num_classes`` outputs (the exits) with std ``gain / sqrt(fan_in)``."""
    for m in model.modules():
        if isinstance(m, nn.Linear) and m.out_features == num_classes:
            nn.init.normal_(m.weight, std=gain / m.in_features**0.5)
    return model
