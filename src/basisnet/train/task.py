"""What the loss of a training batch is made of, built once from the config (as timm's ``timm/task/``).

The exits' joint loss (``aux_weight``, ``label_smoothing``, self-distillation from the last exit) and, with
a teacher, Hinton distillation on the final exit (``kd_weight``, ``kd_temperature``). The loop calls
:meth:`TrainingTask.loss` and knows none of the terms.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .config import TrainConfig
from .losses import MultiExitLoss, final_logits, kd_loss

__all__ = ["TrainingTask"]


@dataclass(frozen=True)
class TrainingTask:
    """``(1 - kd_weight) * criterion + kd_weight * KD(final exit, teacher)``; the criterion alone without a teacher."""

    criterion: MultiExitLoss
    teacher: nn.Module | None = None  # in eval mode, never trained
    kd_weight: float = 0.0
    kd_temperature: float = 4.0

    @classmethod
    def from_config(cls, tc: TrainConfig, teacher: nn.Module | None = None) -> TrainingTask:
        """The task of ``tc``; ``teacher`` is the model ``train.kd_teacher`` names (used when ``kd_weight > 0``)."""
        if tc.kd_teacher is not None and teacher is None:
            raise ValueError(f"train.kd_teacher is {tc.kd_teacher!r} but fit() got no teacher model")
        if teacher is not None:
            teacher.eval()
        criterion = MultiExitLoss(tc.aux_weight, tc.label_smoothing, tc.self_distill, tc.self_distill_temperature)
        return cls(criterion, teacher if teacher is not None and tc.kd_weight > 0 else None, tc.kd_weight,
                   tc.kd_temperature)

    def loss(self, outputs: Sequence[Tensor], labels: Tensor, images: Tensor) -> Tensor:
        """The loss of one batch: the model's exit logits ``outputs`` for the (augmented) ``images``."""
        loss = self.criterion(outputs, labels)
        if self.teacher is None:
            return loss
        with torch.no_grad():
            teacher_logits = final_logits(self.teacher(images))
        return (1 - self.kd_weight) * loss + self.kd_weight * kd_loss(outputs[-1], teacher_logits, self.kd_temperature)
