"""Early-exit inference: each exit runs only on the images no earlier exit was confident about."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..evaluate import exit_madds
from ..models.protocol import MultiExitClassifier, select_state


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

    The model runs staged (``MultiExitClassifier.start`` / ``step``): after each exit, the images whose
    softmax confidence reaches the threshold leave, and the next exit computes only for the rest. So
    wall-clock follows the multiply-adds charged: each image costs the cumulative MAdds of its exit.

    ``compile``: run the stages through ``torch.compile`` (True = inductor, or a backend name), with
    dynamic shapes since every stage sees a different number of images.
    """

    def __init__(self, model: MultiExitClassifier, threshold: float, exit_costs: Sequence[int] | None = None,
                 compile: bool | str = False) -> None:
        self.model = model.eval()
        self.threshold = check_threshold(threshold)
        self.exit_costs = torch.tensor(list(exit_costs) if exit_costs is not None else exit_madds(model),
                                       dtype=torch.float64)
        self._start, self._step = model.start, model.step
        if compile:
            backend = "inductor" if compile is True else compile
            self._start = torch.compile(model.start, backend=backend, dynamic=True)
            self._step = torch.compile(model.step, backend=backend, dynamic=True)

    @torch.inference_mode()
    def predict(self, images: Tensor) -> Predictions:
        """``images``: a normalized float batch (B, 3, H, W) at the model's resolution."""
        last = self.model.num_exits - 1
        batch = images.shape[0]
        classes = torch.zeros(batch, dtype=torch.long, device=images.device)
        conf = torch.zeros(batch, device=images.device)
        stage = torch.full((batch,), last, dtype=torch.long, device=images.device)
        alive = torch.arange(batch, device=images.device)  # batch positions still undecided
        state = self._start(images)
        for k in range(last + 1):
            logits, state = self._step(state, k)
            conf[alive], classes[alive] = logits.softmax(-1).max(-1)
            if k == last:
                break
            done = conf[alive] >= self.threshold
            stage[alive[done]] = k
            if bool(done.all()):
                break
            if bool(done.any()):
                keep = (~done).nonzero().squeeze(1)
                alive, state = alive[keep], select_state(state, keep)
        return Predictions(classes, conf, stage, self.exit_costs[stage.cpu()])
