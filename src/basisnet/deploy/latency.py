"""Latency on this machine: a median timer and each exit's time to answer one image.

A millisecond target is met on the machine that serves, not in multiply-adds: ``exit_latency_ms``
times the deployed path (the staged early-exit run at batch 1) up to each exit, so that a threshold
sweep can weigh exit fractions by milliseconds instead of MAdds.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from ..models.protocol import MultiExitClassifier

__all__ = ["exit_latency_ms", "median_ms", "sync"]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn: Callable[[], object], device: torch.device, warmup: int = 3, repeats: int = 10) -> float:
    """Median wall-clock milliseconds of ``fn()`` after ``warmup`` calls (device work included)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    times.sort()
    return 1e3 * times[len(times) // 2]


@torch.inference_mode()
def exit_latency_ms(model: MultiExitClassifier, repeats: int = 20) -> list[float]:
    """Milliseconds to answer one image at each exit: the staged run through exits 1..k plus each exit's
    softmax, as ``EarlyExitPredictor`` computes it (median of ``repeats``)."""
    model.eval()
    param = next(model.parameters())
    x = torch.randn(1, 3, model.resolution, model.resolution, device=param.device, dtype=param.dtype)
    if param.dim() == 4 and param.is_contiguous(memory_format=torch.channels_last):
        x = x.contiguous(memory_format=torch.channels_last)

    def through(k: int) -> None:
        state = model.start(x)
        for j in range(k + 1):
            logits, state = model.step(state, j)
            logits.softmax(-1).max(-1)

    return [median_ms(lambda k=k: through(k), param.device, repeats=repeats) for k in range(model.num_exits)]
