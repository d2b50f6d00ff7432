"""Measuring instruments for the speed benchmark beside the timers of ``deploy.latency``: peak memory, the
machine's ceiling.

Every figure is taken in the calling process, so models compared in one benchmark run share the
machine's state (threads, clocks, caches) and their ratios mean something on a noisy machine.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ContextManager

import torch
from torch import Tensor, nn
from torch.profiler import ProfilerActivity, profile

from ..deploy.latency import median_ms

__all__ = ["Ceiling", "measure_ceiling", "peak_memory_mib", "train_step"]


_PROFILER_NOTICES = ("USDT:", "STAGE:")  # the native profiler's start / stop lines, printed on every use


@contextlib.contextmanager
def _without_profiler_notices() -> Iterator[None]:
    """The native profiler prints a start and a stop line to the process's stderr each time it runs, at any
    log level: a benchmark that measures many models would interleave dozens with its own lines. What
    reaches file descriptor 2 meanwhile is held back and passed on without those lines."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            kept = [line for line in held.read().decode(errors="replace").splitlines(keepends=True)
                    if not line.startswith(_PROFILER_NOTICES)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


def peak_memory_mib(fn: Callable[[], object], device: torch.device) -> float:
    """Peak memory that ``fn()`` allocates beyond what is live before it.

    CUDA: the caching allocator's peak. CPU: the profiler's allocation records (``profile_memory``)
    replayed in time order; each op's own allocations and frees count at its start, so the peak is
    exact at op granularity."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    with _without_profiler_notices(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    live = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak / 2**20


@dataclass
class Ceiling:
    """What this machine can do at best, measured in the same run as the models."""

    matmul_gmadds_per_s: float  # a large fp32 matmul: multiply-adds per second (FLOP/s / 2)
    copy_gb_per_s: float  # a large tensor copy: bytes read + written per second

    def as_dict(self) -> dict[str, float]:
        return {"matmul_gflops": round(2 * self.matmul_gmadds_per_s, 1),
                "matmul_gmadds_per_s": round(self.matmul_gmadds_per_s, 1),
                "copy_gb_per_s": round(self.copy_gb_per_s, 2)}


def measure_ceiling(device: torch.device, quick: bool = False) -> Ceiling:
    """A square fp32 matmul (n = 1024 on CPU, 8192 on CUDA) and a 256 MiB copy."""
    n = (8192 if device.type == "cuda" else 1024) // (2 if quick else 1)
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    out = torch.empty(n, n, device=device)
    ms = median_ms(lambda: torch.mm(a, b, out=out), device, warmup=2, repeats=5)
    gmadds = n**3 / (ms / 1e3) / 1e9
    src = torch.empty(2**26 // (4 if quick else 1), device=device)  # 256 MiB of fp32 (64 MiB quick)
    dst = torch.empty_like(src)
    src.fill_(1.0)
    dst.fill_(0.0)
    ms = median_ms(lambda: dst.copy_(src), device, warmup=2, repeats=5)
    gb = 2 * src.numel() * src.element_size() / (ms / 1e3) / 1e9
    return Ceiling(gmadds, gb)


def train_step(model: nn.Module, x: Tensor, labels: Tensor, optimizer: torch.optim.Optimizer,
               autocast: Callable[[], ContextManager[Any]] = contextlib.nullcontext) -> Callable[[], None]:
    """One bare training step (forward, cross-entropy summed over the exits, backward, optimizer step) on a
    fixed batch, as a callable the benchmarks repeat: the arithmetic of training without any loop around it."""

    def step() -> None:
        with autocast():
            loss = sum(nn.functional.cross_entropy(z, labels) for z in model(x))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step
