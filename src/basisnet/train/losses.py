"""Losses for multi-exit networks and knowledge distillation."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MultiExitLoss", "kd_loss", "final_logits"]


class MultiExitLoss(nn.Module):
    """``CE(last exit) + aux_weight * sum(CE(earlier exits))``.

    The final exit is the model the run is judged by, so it always has weight 1;
    earlier exits (BasisNet's lightweight model, early-exit heads) share one weight.
    A single-exit model reduces to plain cross-entropy.
    """

    def __init__(self, aux_weight: float = 1.0, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.aux_weight = aux_weight
        self.label_smoothing = label_smoothing

    def forward(self, logits: Sequence[Tensor], target: Tensor) -> Tensor:
        if not logits:
            raise ValueError("model returned no exits; expected a non-empty list of [B, C] logits")
        losses = [F.cross_entropy(z, target, label_smoothing=self.label_smoothing) for z in logits]
        loss = losses[-1]
        if len(losses) > 1 and self.aux_weight:
            loss = loss + self.aux_weight * torch.stack(losses[:-1]).sum()
        return loss


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Hinton distillation: ``KL(softmax(t/T) || softmax(s/T)) * T**2``, averaged over the batch.

    The ``T**2`` keeps the gradient scale independent of ``T``, so ``kd_weight`` means the
    same at any temperature. The training loop applies it to the final exit only
    (``loss = (1 - kd_weight) * MultiExitLoss + kd_weight * kd_loss``).
    """
    t = temperature
    return F.kl_div(
        F.log_softmax(student_logits / t, dim=-1),
        F.log_softmax(teacher_logits / t, dim=-1),
        reduction="batchmean",
        log_target=True,
    ) * (t * t)


def final_logits(output: Tensor | Sequence[Tensor]) -> Tensor:
    """Final-exit logits of a model output (a list of exits, or a plain tensor from a non-basisnet teacher)."""
    return output if isinstance(output, Tensor) else output[-1]
