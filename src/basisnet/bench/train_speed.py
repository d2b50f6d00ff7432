"""``basisnet bench train``: ``basisnet train`` against a bare training loop over the same model and batch.

What the project's loop costs on top of the arithmetic: the bare loop keeps one normalised batch on the
device and runs forward, loss, backward and an SGD step under the same autocast; ``basisnet train`` runs
the real thing (data loader, augmentation, EMA-free recipe, statistics, checkpoints) for the same number
of steps on CIFAR-10. Both start cold in the same process, one after the other; images/s over training
steps only (validation excluded). On a GPU the target is >= 0.8x.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..configs import bundled_config
from ..layers import to_channels_last
from ..models import create_model
from ..train import load_config
from ..workflow import train_run
from .records import machine, save_records
from .timing import train_step

__all__ = ["TrainSpeedPlan", "format_train_speed_table", "run_train_speed_benchmark"]

TARGET = 0.8


@dataclass(frozen=True)
class TrainSpeedPlan:
    configs: tuple[str, ...] = ("cifar10_static", "cifar10_basisnet")
    steps: int = 60
    batch: int | None = None  # default: 512 on a GPU, 128 on the CPU

    @classmethod
    def quick_plan(cls) -> TrainSpeedPlan:
        return cls(configs=("cifar10_static",), steps=8, batch=64)


def _amp(device: torch.device) -> str:
    return "bf16" if device.type == "cuda" else "off"


def bare_loop_rate(model: nn.Module, batch: int, steps: int, device: torch.device, amp: str) -> float:
    """Images/s of forward + loss + backward + SGD step on one batch that already sits on the device."""
    model = to_channels_last(model.to(device).train())
    x = torch.randn(batch, 3, model.resolution, model.resolution, device=device).contiguous(
        memory_format=torch.channels_last)
    labels = torch.arange(batch, device=device) % model.num_classes
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True, weight_decay=5e-4)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if amp == "bf16" else contextlib.nullcontext
    step = train_step(model, x, labels, optimizer, autocast)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return batch * steps / (time.perf_counter() - start)


def run_train_speed_benchmark(data: str | Path, results: str | Path, plan: TrainSpeedPlan = TrainSpeedPlan(),
                              scratch: str | Path = "runs/bench_train", command: str = "") -> list[dict[str, Any]]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    batch = plan.batch or (512 if device.type == "cuda" else 128)
    amp = _amp(device)
    records = []
    for name in plan.configs:
        cfg = load_config(bundled_config(name), [
            f"data.source={data}", "train.epochs=1", "train.warmup_epochs=0", "train.static_phase=0",
            f"data.batch_size={batch}", f"data.subset={batch * plan.steps}", "data.val_size=500",
            f"train.amp={amp}", "train.channels_last=true", "train.ema_decay=0"])
        run_dir = Path(scratch) / f"{name}_{device.type}_{int(time.time())}"
        history = train_run(cfg, run_dir, progress=False)["history"]
        loop_rate = history[0]["images_per_s"]
        torch.manual_seed(0)
        model = create_model(cfg.model.name, **cfg.model.kwargs)
        bare = bare_loop_rate(model, batch, plan.steps, device, amp)
        records.append({"config": name, "device": device.type, "amp": amp, "batch": batch, "steps": plan.steps,
                        "train_images_per_s": round(loop_rate, 1), "bare_images_per_s": round(bare, 1),
                        "ratio": round(loop_rate / bare, 3)})
        print(f"[bench train] {name}: basisnet train {loop_rate:.0f} images/s, bare loop {bare:.0f}", flush=True)
    save_records(results, records, {
        "command": command, "target_ratio": TARGET, "torch": torch.__version__, "machine": machine(device)})
    return records


def format_train_speed_table(records: Sequence[dict[str, Any]]) -> str:
    lines = ["| config | device | amp | batch | steps | basisnet train images/s | bare loop images/s | ratio |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in records:
        lines.append(f"| {r['config']} | {r['device']} | {r['amp']} | {r['batch']} | {r['steps']} | "
                     f"{r['train_images_per_s']:.0f} | {r['bare_images_per_s']:.0f} | {r['ratio']:.2f} |")
    return "\n".join(lines)
