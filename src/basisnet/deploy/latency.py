"""Latency on this machine: one median timer, and what it measures of any ``Stages``.

A millisecond target is met on the machine that serves, not in multiply-adds: ``exit_latency_ms``
times the deployed path (the early-exit predictor at batch 1) up to each exit, in whichever runtime the
stages run, so that a threshold sweep can weigh exit fractions by milliseconds instead of MAdds.
``stage_ms`` times each stage on its own at a batch, for tables that set runtimes side by side.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from .early_exit import EarlyExitPredictor
from .stages import Stages

__all__ = ["exit_latency_ms", "median_ms", "paired_median_ms", "stage_ms", "sync"]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def paired_median_ms(fns: list[Callable[[], object]], device: torch.device, warmup: int = 3,
                     repeats: int = 10) -> list[float]:
    """Median wall-clock milliseconds of each of ``fns`` (device work included) after ``warmup`` calls each,
    timed in turn within every repeat, so drifts of a noisy machine (clocks, other load) hit all of them
    alike and their ratios stay meaningful."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, series in zip(fns, times):
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            series.append(time.perf_counter() - start)
    return [1e3 * sorted(series)[len(series) // 2] for series in times]


def median_ms(fn: Callable[[], object], device: torch.device, warmup: int = 3, repeats: int = 10) -> float:
    """Median wall-clock milliseconds of ``fn()`` after ``warmup`` calls (device work included)."""
    return paired_median_ms([fn], device, warmup=warmup, repeats=repeats)[0]


def _images(stages: Stages, batch: int) -> torch.Tensor:
    """Random normalized images for ``stages`` (seeded: the same in every runtime timed)."""
    x = torch.randn(batch, 3, stages.resolution, stages.resolution, generator=torch.Generator().manual_seed(0))
    return x.to(stages.device)


def exit_latency_ms(stages: Stages, repeats: int = 100) -> list[float]:
    """Milliseconds to answer one image at each exit: the early-exit predictor at batch 1 stopped after that
    exit, host bookkeeping included (median of ``repeats``)."""
    x = _images(stages, 1)
    predictor = EarlyExitPredictor(stages, threshold=1.0)
    return [median_ms(lambda k=k: predictor.predict(x, last=k), stages.device, repeats=repeats)
            for k in range(stages.num_exits)]


@torch.inference_mode()
def stage_ms(stages: Stages, batch: int, repeats: int = 20) -> list[float]:
    """Median milliseconds of each stage on ``batch`` images, each stage fed what the one before produced."""
    state = stages.start(_images(stages, batch))
    times = []
    for k in range(stages.num_exits):
        times.append(median_ms(lambda s=state, k=k: stages.step(s, k), stages.device, repeats=repeats))
        state = stages.step(state, k)[1]
    return times
