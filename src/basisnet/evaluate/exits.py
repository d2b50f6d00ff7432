"""Cached per-exit logits: run a multi-exit model once, evaluate every protocol offline.

Every protocol (anytime, early exit, budgeted batch) only needs the logits of every exit
for every sample, so the model runs once per split and all sweeps re-use the cache.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

__all__ = [
    "ExitLogits",
    "collect_exit_logits",
    "confidences",
    "evaluate_routing",
    "exit_accuracy",
    "first_confident_exit",
]


@dataclass
class ExitLogits:
    """Logits of every exit on one split: ``logits`` [E, N, C] float32, ``targets`` [N] int64."""

    logits: Tensor
    targets: Tensor

    def __post_init__(self) -> None:
        if self.logits.dim() != 3:
            raise ValueError(f"logits must be [E, N, C], got shape {tuple(self.logits.shape)}")
        if self.targets.dim() != 1 or self.targets.shape[0] != self.logits.shape[1]:
            raise ValueError(
                f"targets must be [N] with N={self.logits.shape[1]}, got shape {tuple(self.targets.shape)}"
            )
        self.logits = self.logits.float()
        self.targets = self.targets.long()

    @property
    def num_exits(self) -> int:
        return self.logits.shape[0]

    @property
    def num_samples(self) -> int:
        return self.logits.shape[1]

    def save(self, path: str | Path) -> None:
        """Plain tensors only, so that :meth:`load` works with ``weights_only=True``."""
        torch.save({"logits": self.logits, "targets": self.targets}, Path(path))

    @classmethod
    def load(cls, path: str | Path) -> ExitLogits:
        data = torch.load(Path(path), map_location="cpu", weights_only=True)
        return cls(logits=data["logits"], targets=data["targets"])


def collect_exit_logits(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    transform: Callable[[Tensor], Tensor] | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> ExitLogits:
    """Run ``model`` (moved to ``device``, eval mode) once over ``batches`` and cache every exit.

    ``transform`` is applied to the images on ``device`` (e.g. uint8 -> normalized float), so
    loaders can ship compact uint8 batches. The model's train/eval mode is restored afterwards.
    """
    was_training = model.training
    model.to(device).eval()
    per_batch: list[list[Tensor]] = []
    targets: list[Tensor] = []
    try:
        with torch.inference_mode():
            for images, labels in tqdm(batches, desc="exit logits", disable=not progress, leave=False):
                images = images.to(device)
                if transform is not None:
                    images = transform(images)
                outputs = model(images)
                outputs = [outputs] if isinstance(outputs, Tensor) else list(outputs)
                per_batch.append([out.float().cpu() for out in outputs])
                targets.append(labels.cpu())
    finally:
        model.train(was_training)
    if not per_batch:
        raise ValueError("batches is empty: nothing to evaluate")
    # Concatenate outside inference mode so the cache is an ordinary tensor (usable with autograd,
    # e.g. for temperature fitting).
    logits = torch.stack([torch.cat(exit_outs) for exit_outs in zip(*per_batch, strict=True)])
    return ExitLogits(logits=logits, targets=torch.cat(targets).long())


def exit_accuracy(exit_logits: ExitLogits) -> list[float]:
    """Top-1 accuracy (%) of each exit when every sample runs to that exit."""
    correct = exit_logits.logits.argmax(dim=2) == exit_logits.targets
    return (correct.double().mean(dim=1) * 100.0).tolist()


def confidences(
    exit_logits: ExitLogits,
    temperatures: Tensor | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    """Max softmax probability and arg-max prediction per exit, both [E, N].

    ``temperatures`` ([E]) divide each exit's logits before the softmax (calibration; the
    prediction is unchanged). ``dtype`` sets the softmax precision: float64 postpones the
    saturation of confident samples at exactly 1.0.
    """
    logits = exit_logits.logits.to(dtype)
    if temperatures is not None:
        if temperatures.shape != (exit_logits.num_exits,):
            raise ValueError(
                f"temperatures must have shape ({exit_logits.num_exits},), got {tuple(temperatures.shape)}"
            )
        logits = logits / temperatures.to(dtype).view(-1, 1, 1)
    conf, pred = logits.softmax(dim=2).max(dim=2)
    return conf, pred


def first_confident_exit(conf: Tensor, thresholds: Tensor) -> Tensor:
    """Index of the first exit k with ``conf[k] >= thresholds[k]`` per sample; the last exit always answers."""
    passes = conf >= thresholds.to(conf.dtype).view(-1, 1)
    passes[-1] = True
    return passes.int().argmax(dim=0)  # argmax returns the first maximal index


def evaluate_routing(
    exit_logits: ExitLogits, exit_index: Tensor, exit_madds: Sequence[float]
) -> dict[str, float | list[float]]:
    """Accuracy (%), average multiply-adds and per-exit fractions when sample i answers at ``exit_index[i]``.

    The average cost is ``sum_k fraction_k * exit_madds[k]`` because ``exit_madds`` is cumulative:
    a sample answered at exit k paid for every stage up to k.
    """
    check_exit_madds(exit_logits, exit_madds)
    num = exit_logits.num_samples
    pred = exit_logits.logits.argmax(dim=2).gather(0, exit_index.view(1, -1)).squeeze(0)
    counts = torch.bincount(exit_index, minlength=exit_logits.num_exits).double()
    fractions = counts / num
    madds = float((fractions * torch.tensor(exit_madds, dtype=torch.float64)).sum())
    top1 = float((pred == exit_logits.targets).double().mean() * 100.0)
    return {"top1": top1, "madds": madds, "fractions": fractions.tolist()}


def check_exit_madds(exit_logits: ExitLogits, exit_madds: Sequence[float]) -> None:
    """One cumulative cost per exit, or every average cost would be silently wrong."""
    if len(exit_madds) != exit_logits.num_exits:
        raise ValueError(
            f"exit_madds has {len(exit_madds)} entries but the logits have {exit_logits.num_exits} exits"
        )
