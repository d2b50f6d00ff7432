"""Early-exit inference: the specialist runs only on the images the lightweight model is unsure of."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..evaluate import exit_madds, first_confident_exit
from ..models import BasisNet


@dataclass
class Predictions:
    """Per image: predicted class, its softmax confidence, the exit that answered, MAdds spent."""

    classes: Tensor
    confidence: Tensor
    stage: Tensor  # 0 = first exit (lightweight), num_exits - 1 = last
    madds: Tensor

    @property
    def average_madds(self) -> float:
        return float(self.madds.double().mean()) if len(self.madds) else 0.0


def check_threshold(threshold: float) -> float:
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    return float(threshold)


class EarlyExitPredictor:
    """Wraps a trained multi-exit model with a confidence threshold.

    For BasisNet only the images whose lightweight confidence is below the threshold reach the
    specialist (the others cost the lightweight model only). Other multi-exit models are run to their
    last exit and each image is charged the cumulative MAdds of the first confident exit, i.e. what a
    runtime that stops there would spend.
    """

    def __init__(self, model: nn.Module, threshold: float, exit_costs: Sequence[int] | None = None) -> None:
        self.model = model.eval()
        self.threshold = check_threshold(threshold)
        self.exit_costs = torch.tensor(list(exit_costs) if exit_costs is not None else exit_madds(model),
                                       dtype=torch.float64)

    @torch.inference_mode()
    def predict(self, images: Tensor) -> Predictions:
        """``images``: a normalized float batch (B, 3, H, W) at the model's resolution."""
        if isinstance(self.model, BasisNet):
            return self._predict_basisnet(images)
        probs = torch.stack([logits.softmax(-1) for logits in self.model(images)])  # (E, B, C)
        conf, classes = probs.max(-1)
        stage = first_confident_exit(conf, torch.full((len(conf),), self.threshold))
        pick = stage.unsqueeze(0)
        return Predictions(classes.gather(0, pick)[0], conf.gather(0, pick)[0], stage, self.exit_costs[stage])

    def _predict_basisnet(self, images: Tensor) -> Predictions:
        light, embedding = self.model.preview(images)
        conf, classes = light.softmax(-1).max(-1)
        stage = (conf < self.threshold).long()
        hard = stage.bool()
        if hard.any():
            logits, _ = self.model.specialize(images[hard], embedding[hard])
            conf[hard], classes[hard] = logits.softmax(-1).max(-1)
        return Predictions(classes, conf, stage, self.exit_costs[stage])
