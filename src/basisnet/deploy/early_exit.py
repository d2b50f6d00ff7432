"""Early exit, once for every runtime: each exit runs only on the images no earlier exit was confident about.

``EarlyExitPredictor`` runs over any ``Stages`` (PyTorch or ONNX Runtime): a batch through ``predict``,
one frame at a stage through ``decide`` (the stream), each exit's latency (``deploy.latency``). The
decision rule, "answer at exit k when the top softmax probability reaches the threshold, or at the last
exit", is written here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..models.protocol import State
from .stages import Stages


@dataclass
class Predictions:
    """Per image: predicted class, its softmax confidence, the exit that answered, MAdds spent (NaN where the
    stages cannot count them). Exits are counted from 1, as everywhere a user reads them (logs, tables, the
    CLI): ``exit == 1`` is the first (BasisNet's lightweight model), ``exit == num_exits`` the last."""

    classes: Tensor
    confidence: Tensor
    exit: Tensor  # 1 = first exit, num_exits = last
    madds: Tensor

    @property
    def average_madds(self) -> float:
        return float(self.madds.double().mean()) if len(self.madds) else 0.0


def check_threshold(threshold: float) -> float:
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    return float(threshold)


class EarlyExitPredictor:
    """Stages with a confidence threshold: after each exit, the images whose softmax confidence reaches the
    threshold leave, and the next exit computes only for the rest. So wall-clock follows the multiply-adds
    charged: each image costs the cumulative MAdds of its exit."""

    def __init__(self, stages: Stages, threshold: float) -> None:
        self.stages = stages
        self.threshold = check_threshold(threshold)
        self._costs: Tensor | None = None  # counted on the first answer: a stream never needs them

    def decide(self, state: State, k: int, last: int | None = None) -> tuple[Tensor, Tensor, Tensor, State]:
        """Exit ``k`` on the images of ``state``: their confidence, class, whether each answers here (always at
        ``last``, the last exit to run, by default the model's), and the state exit ``k + 1`` continues from."""
        last = self.stages.num_exits - 1 if last is None else last
        logits, state = self.stages.step(state, k)
        confidence, classes = logits.softmax(-1).max(-1)
        answers = confidence >= self.threshold if k < last else torch.ones_like(confidence, dtype=torch.bool)
        return confidence, classes, answers, state

    @torch.inference_mode()
    def predict(self, images: Tensor, last: int | None = None) -> Predictions:
        """``images``: a normalized float batch (B, 3, H, W) at the stages' resolution, on their device.
        ``last``: the last exit to run (default: the model's), every image answering there at the latest."""
        last = self.stages.num_exits - 1 if last is None else last
        batch, device = images.shape[0], images.device
        classes = torch.zeros(batch, dtype=torch.long, device=device)
        confidence = torch.zeros(batch, device=device)
        answered_at = torch.zeros(batch, dtype=torch.long, device=device)  # 0-based exit index
        alive = torch.arange(batch, device=device)  # batch positions still undecided
        state = self.stages.start(images)
        for k in range(last + 1):
            confidence[alive], classes[alive], answers, state = self.decide(state, k, last)
            answered_at[alive[answers]] = k
            if bool(answers.all()):
                break
            if bool(answers.any()):
                keep = (~answers).nonzero().squeeze(1)
                alive, state = alive[keep], self.stages.select(state, keep)
        return Predictions(classes, confidence, answered_at + 1, self.exit_costs()[answered_at.cpu()])

    def exit_costs(self) -> Tensor:
        """The stages' cumulative MAdds per exit as float64 (NaN where they cannot count them)."""
        if self._costs is None:
            costs = self.stages.exit_costs
            self._costs = torch.tensor(list(costs) if costs is not None else [float("nan")] * self.stages.num_exits,
                                       dtype=torch.float64)
        return self._costs
