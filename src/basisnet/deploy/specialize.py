"""Stream specialization: one static network for a camera that sees a narrow slice of the world.

BasisNet synthesizes a specialist per image from its coefficients. A fixed camera's images share most
of what matters, so the coefficients averaged over its stream make one specialist that serves all of
its frames as a plain MobileNet: no lightweight model, no bases, no mixing at run time, the static
backbone's cost.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from ..models import BasisNet, MobileNet

__all__ = ["mean_coefficients", "specialize"]


@torch.inference_mode()
def mean_coefficients(model: BasisNet, batches: Iterable[Tensor]) -> tuple[Tensor, int]:
    """The specialist's coefficients (L, N) averaged over every image of ``batches`` (normalized float
    batches at the model's resolution), and the number of images."""
    model.eval()
    total: Tensor | None = None
    count = 0
    for images in batches:
        _, embedding = model.preview(images)
        coeffs = model.coefficients(embedding).double()
        batch_sum = coeffs.sum(0) if coeffs.dim() == 3 else coeffs * len(images)
        total = batch_sum if total is None else total + batch_sum
        count += len(images)
    if total is None or count == 0:
        raise ValueError("no images to average coefficients over")
    return (total / count).to(next(model.parameters()).dtype), count


def specialize(model: BasisNet, batches: Iterable[Tensor]) -> MobileNet:
    """The plain MobileNet whose weights are the specialist's bases mixed by the mean coefficients."""
    coeffs, _ = mean_coefficients(model, batches)
    return model.specialist.synthesize(coeffs).eval()
