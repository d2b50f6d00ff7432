"""The routing-shortcut diagnostic of BasisNet: does the specialist read the image or the coefficients?

A specialist that learned to read the class from its coefficients (the lightweight model's guess,
passed on through the mixing weights) keeps the lightweight model's accuracy and loses it when every
image gets the same coefficients. One that learned image features barely cares: its accuracy with the
set-mean coefficients stays close to its accuracy with each image's own.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from ..models import BasisNet

__all__ = ["ShortcutReport", "shortcut_report"]


@dataclass(frozen=True)
class ShortcutReport:
    """Top-1 (%) of both exits, of the specialist fed the mean coefficients, and the exits' agreement."""

    lightweight: float
    specialist: float
    specialist_mean_coeffs: float
    agreement: float  # % of images where both exits predict the same class

    @property
    def drop(self) -> float:
        """Points the specialist loses when the coefficients stop carrying per-image information."""
        return self.specialist - self.specialist_mean_coeffs

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "drop": self.drop}


@torch.inference_mode()
def shortcut_report(model: BasisNet, images: Tensor, labels: Tensor, batch_size: int = 500) -> ShortcutReport:
    """Evaluate ``model`` (eval mode) on normalised ``images``; the mean is over all of ``images``."""
    if model.static_phase:
        raise ValueError("the model is in its static phase (uniform coefficients): nothing to diagnose yet")
    was_training = model.training
    model.eval()
    try:
        light, special, coeffs = [], [], []
        for x in images.split(batch_size):
            out = model.forward_output(x)
            light.append(out.lightweight.argmax(-1))
            special.append(out.specialist.argmax(-1))
            coeffs.append(out.coeffs.double().sum(0))
        mean = (torch.stack(coeffs).sum(0) / len(images)).to(images.dtype)
        shared = torch.cat([model.specialist(x, mean)[0].argmax(-1) for x in images.split(batch_size)])
    finally:
        model.train(was_training)
    light_pred, special_pred = torch.cat(light), torch.cat(special)

    def top1(pred: Tensor) -> float:
        return 100.0 * (pred == labels).double().mean().item()

    return ShortcutReport(top1(light_pred), top1(special_pred), top1(shared),
                          100.0 * (light_pred == special_pred).double().mean().item())
