"""Losses for multi-exit networks and knowledge distillation."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MultiExitLoss", "kd_loss", "final_logits"]


class MultiExitLoss(nn.Module):
    """``CE(last exit) + aux_weight * sum(earlier exit losses)``, with self-distillation.

    The final exit is the model the run is judged by, so it always has weight 1;
    earlier exits (BasisNet's lightweight model, early-exit heads) share one weight.
    With ``self_distill = w > 0`` each earlier exit's loss is ``(1 - w) * CE + w * KD`` where the
    teacher is the last exit's prediction, detached (Phuong & Lampert 2019; IMTA's one-for-all
    distillation): an early exit learns the last exit's view of which classes look alike, and
    the last exit is never pulled towards its weaker students. A single-exit model reduces to
    plain cross-entropy.
    """

    def __init__(self, aux_weight: float = 1.0, label_smoothing: float = 0.0,
                 self_distill: float = 0.0, temperature: float = 4.0) -> None:
        super().__init__()
        if not 0 <= self_distill <= 1:
            raise ValueError(f"self_distill must be in [0, 1], got {self_distill}")
        self.aux_weight = aux_weight
        self.label_smoothing = label_smoothing
        self.self_distill = self_distill
        self.temperature = temperature

    def forward(self, logits: Sequence[Tensor], target: Tensor) -> Tensor:
        if not logits:
            raise ValueError("model returned no exits; expected a non-empty list of [B, C] logits")
        loss = F.cross_entropy(logits[-1], target, label_smoothing=self.label_smoothing)
        if len(logits) == 1 or not self.aux_weight:
            return loss
        w, teacher = self.self_distill, logits[-1].detach()
        earlier = []
        for z in logits[:-1]:
            ce = F.cross_entropy(z, target, label_smoothing=self.label_smoothing)
            earlier.append(ce if w == 0 else (1 - w) * ce + w * kd_loss(z, teacher, self.temperature))
        return loss + self.aux_weight * torch.stack(earlier).sum()


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Hinton distillation: ``KL(softmax(t/T) || softmax(s/T)) * T**2``, averaged over the batch.

    The ``T**2`` keeps the gradient scale independent of ``T``, so ``kd_weight`` means the
    same at any temperature. A teacher model teaches the final exit
    (``loss = (1 - kd_weight) * MultiExitLoss + kd_weight * kd_loss``); the final exit teaches the
    earlier ones inside ``MultiExitLoss``.
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
