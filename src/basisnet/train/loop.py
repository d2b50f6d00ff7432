"""The training loop, timm-style: ``train_one_epoch`` (one pass over the training batches) and ``validate``
(top-1 of every exit), strung together by ``fit`` with resumable checkpoints (files: :class:`RunDir`).

Resuming is exact: a run stopped at any checkpoint and resumed produces bitwise the same weights as an
uninterrupted run (on CPU; cuDNN kernels may be nondeterministic on GPU).

On a GPU nothing waits for the device inside a step: the loss is summed on the device, and NaN/Inf in
the loss or gradient norm is recorded there too; both are read every ``train.log_interval`` steps and
before anything is saved (on the CPU, where reading is free, every step).
"""
from __future__ import annotations

import contextlib
import csv
import math
import io
import json
import logging
import random
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ContextManager, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..layers import NonFiniteCoefficientsError, to_channels_last
from ..models import BasisNet
from .checkpoint import atomic_write_bytes, load_state, save_state, save_weights
from .config import ConfigError, RunConfig, TrainConfig, config_from_dict, config_to_dict, save_config, validate_config
from .distributed import is_distributed, rank, world_size
from .ema import ModelEma
from .losses import MultiExitLoss, final_logits, kd_loss
from .optim import create_optimizer, create_scheduler
from .preemption import StopSignals, TrainingInterrupted
from .run_dir import RunDir

__all__ = ["fit", "train_one_epoch", "validate", "NonFiniteLossError", "seed_everything", "TrainLoader"]

_logger = logging.getLogger(__name__)

_AUG_SEED_OFFSET = 0x5EED  # augmentation draws from its own stream, not a copy of the global one
_UPCYCLE_SEED_OFFSET = 0xB1A5  # the noise that separates the bases after the static phase
# Keys that only change bookkeeping or speed, so a resumed run may change them without losing exactness.
_RESUME_FREE_KEYS = frozenset({
    "train.log_interval", "train.checkpoint_every_steps", "train.tensorboard", "data.num_workers",
    "data.eval_batch_size", "train.device",
})
_MIN_GRAD_SCALE = 2.0**-14  # fp16: below this the scaler has skipped step after step; the gradients stay non-finite
_AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# How batches are cut over ranks, saved with the state: multi-process memory runs before ShardSampler differ.
_SAMPLER = "ShardSampler"


class TrainLoader(Protocol):
    """What ``fit`` needs from a training loader (``BatchLoader`` and ``StreamLoader`` provide it)."""

    def __len__(self) -> int: ...
    def set_epoch(self, epoch: int) -> None: ...
    def iterate(self, start_batch: int = 0) -> Iterable[tuple[Tensor, Tensor]]: ...


class NonFiniteLossError(RuntimeError):
    """The loss (or its gradient norm) became NaN/inf; nothing was saved after it."""

    def __init__(self, quantity: str, value: float, epoch: int, step: int, global_step: int,
                 checkpoint: Path | None) -> None:
        self.quantity, self.value, self.epoch, self.step = quantity, value, epoch, step
        self.global_step, self.checkpoint = global_step, checkpoint
        where = (f"last good checkpoint: {checkpoint} (continue with basisnet train --resume)" if checkpoint
                 else "no checkpoint had been written yet")
        super().__init__(
            f"non-finite {quantity} ({value}) at epoch {epoch}, step {step} (global step {global_step}); "
            f"training stopped without saving; {where}. Lower train.lr, raise train.warmup_epochs "
            "or set train.grad_clip.")


@dataclass
class _LoopState:
    """Position and running statistics of the loop; saved in ``last.state.pt``."""

    epoch: int = 0  # 0-based epoch in progress
    batch: int = 0  # batches of ``epoch`` already done
    global_step: int = 0
    loss_sum: float = 0.0  # sum of (batch mean loss * batch size) over the epoch so far, all ranks
    samples: int = 0
    train_seconds: float = 0.0  # training time of the epoch so far (survives a resume)
    lr: float = 0.0  # learning rate of the latest step
    best_top1: float = -1.0
    best_epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)

    def next_epoch(self) -> _LoopState:
        return _LoopState(epoch=self.epoch + 1, global_step=self.global_step, lr=self.lr, best_top1=self.best_top1,
                          best_epoch=self.best_epoch, history=self.history)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA) global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state(augment: torch.Generator) -> dict[str, Any]:
    """All RNG streams as plain tensors/tuples, so ``weights_only`` loading can restore them."""
    _, key, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": random.getstate(),
        "augment": augment.get_state(),
    }


def _set_rng_state(state: dict[str, Any], augment: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    random.setstate(state["python"])
    augment.set_state(state["augment"])


def _all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    if not is_distributed():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def _unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (checkpoints and EMA use that)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model



@dataclass
class TrainParts:
    """Everything an optimisation step touches, built once by ``fit``."""

    model: nn.Module  # as called: possibly DistributedDataParallel-wrapped
    forward: Callable[[Tensor], Any]  # ``model`` or its torch.compile'd version
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler  # enabled for fp16 only
    ema: ModelEma | None
    criterion: MultiExitLoss
    teacher: nn.Module | None
    augment: torch.Generator  # CPU: augmentation parameters are drawn on the CPU, then applied on device
    autocast: Callable[[], ContextManager[Any]]
    cfg: TrainConfig

    @property
    def net(self) -> nn.Module:
        return _unwrap(self.model)

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.net

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device


def _autocast(device: torch.device, amp: str) -> Callable[[], ContextManager[Any]]:
    dtype = _AMP_DTYPES[amp]
    if dtype is None:
        return contextlib.nullcontext
    if dtype == torch.float16 and device.type != "cuda":
        raise ConfigError(f"train.amp=fp16 needs a CUDA device (this run is on {device}): use bf16 or off")
    return lambda: torch.autocast(device.type, dtype=dtype)


def build_parts(model: nn.Module, tc: TrainConfig, steps_per_epoch: int, teacher: nn.Module | None = None) -> TrainParts:
    """Optimizer, schedule, EMA, loss, mixed precision and compiled forward for ``model`` (on its device)."""
    net = _unwrap(model)
    device = next(net.parameters()).device
    if tc.gradient_equilibrium:
        if not hasattr(net, "gradient_equilibrium"):
            raise ConfigError(f"train.gradient_equilibrium: {type(net).__name__} has no trunk shared by its exits; "
                              "it applies to msdnet and ranet")
        net.gradient_equilibrium = True
    if tc.channels_last:
        to_channels_last(net)
    optimizer = create_optimizer(net, tc, fused=device.type == "cuda" and tc.amp == "fp16"
                                 and tc.optimizer in ("sgd", "adamw"))
    scheduler = create_scheduler(optimizer, tc, steps_per_epoch)
    ema = ModelEma(net, tc.ema_decay) if tc.ema_decay > 0 else None
    if teacher is not None:
        teacher.eval()
    forward = torch.compile(model, backend="inductor" if tc.compile is True else tc.compile) if tc.compile else model
    criterion = MultiExitLoss(tc.aux_weight, tc.label_smoothing, tc.self_distill, tc.self_distill_temperature)
    return TrainParts(model, forward, optimizer, scheduler, torch.amp.GradScaler(device.type, enabled=tc.amp == "fp16"),
                      ema, criterion,
                      teacher if teacher is not None and tc.kd_weight > 0 else None, torch.Generator(),
                      _autocast(device, tc.amp), tc)


class _DeviceStats:
    """The epoch's loss sum and the first non-finite loss / gradient norm, kept on the device so a step
    never waits for it; ``settle`` reads them (one sync) into the loop state."""

    _KINDS = ("loss", "gradient norm")

    def __init__(self, device: torch.device, check_grads: bool) -> None:
        self.device, self.check_grads = device, check_grads
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.samples = 0
        self.bad = torch.zeros(3, dtype=torch.float64, device=device)  # kind + 1 (0: none), value, global step

    def record(self, loss: Tensor, grad_norm: Tensor, batch_size: int, global_step: int) -> None:
        self.loss_sum += loss.double() * batch_size
        self.samples += batch_size
        values = torch.stack([loss.double(), grad_norm.double()])
        flags = ~torch.isfinite(values)
        if not self.check_grads:  # fp16: the gradient scaler skips steps with inf gradients by design
            flags[1] = False
        kind = torch.where(flags[0], 1.0, torch.where(flags[1], 2.0, 0.0)).double()
        value = torch.where(flags[0], values[0], values[1])
        step = torch.full((), float(global_step), dtype=torch.float64, device=self.device)  # a fill, not a copy
        new = torch.stack([kind, value, step])
        self.bad = torch.where((self.bad[0] == 0) & (kind > 0), new, self.bad)

    def settle(self, loop: _LoopState) -> tuple[str, float, int] | None:
        """Move the loss sum into ``loop`` (summed over ranks); the first non-finite value, if any."""
        totals = torch.cat([self.bad[:1], torch.stack([self.loss_sum, torch.tensor(float(self.samples),
                                                                                     dtype=torch.float64,
                                                                                     device=self.device)])])
        if is_distributed():
            dist.all_reduce(totals)  # the flag summed: non-zero on every rank if on one
        flag, loss_sum, samples = totals.tolist()
        if flag:
            first = torch.where(self.bad[0] > 0, self.bad[2], torch.full_like(self.bad[2], math.inf)).reshape(1)
            if is_distributed():  # every rank sees the flag, so every rank joins this one too
                dist.all_reduce(first, op=dist.ReduceOp.MIN)  # the first bad step over the ranks
            kind, value, _ = self.bad.tolist()
            return (self._KINDS[int(kind) - 1] if kind else "loss on another rank"), value, int(first.item())
        loop.loss_sum += loss_sum
        loop.samples += int(samples)
        self.loss_sum.zero_()
        self.samples = 0
        return None


def train_one_epoch(
    parts: TrainParts,
    batches: Iterable[tuple[Tensor, Tensor]],
    transform: Callable[..., Tensor],
    loop: _LoopState,
    run: RunDir,
    save_last: Callable[[], None],
    steps_per_epoch: int,
    bar: Any,
    log: Callable[[_LoopState], None],
    stop: StopSignals | None = None,
) -> None:
    """One pass over ``batches`` (the rest of the epoch ``loop`` is in), updating ``loop`` as it goes.

    Statistics are settled (one host sync) every step on the CPU, every ``log_interval`` steps elsewhere,
    and always before a mid-epoch checkpoint: a non-finite value raises before anything is written.
    When ``stop`` reports a signal after a step, that step's checkpoint is written and
    :class:`TrainingInterrupted` raised.
    """
    tc, device = parts.cfg, parts.device
    settle_every = settle_interval(device, tc)
    stats = _DeviceStats(device, check_grads=not parts.scaler.is_enabled())
    params = [p for p in parts.net.parameters() if p.requires_grad]
    start = time.perf_counter() - loop.train_seconds
    for images, labels in batches:
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        x = transform(images, generator=parts.augment)
        if tc.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        loss = _loss(parts, x, labels, loop, run)
        parts.optimizer.zero_grad(set_to_none=True)
        parts.scaler.scale(loss).backward()
        parts.scaler.unscale_(parts.optimizer)  # true gradients for the norm and clipping (no-op unless fp16)
        grad_norm = nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        stats.record(loss.detach(), grad_norm, len(labels), loop.global_step + 1)
        if (loop.global_step + 1) % settle_every == 0 or _checkpoint_due(tc, loop, steps_per_epoch):
            _settle(stats, loop, run, parts.scaler)
        if tc.grad_clip > 0:
            nn.utils.clip_grads_with_norm_(params, tc.grad_clip, grad_norm)
        loop.lr = parts.optimizer.param_groups[0]["lr"]
        parts.scaler.step(parts.optimizer)
        parts.scaler.update()
        parts.scheduler.step()
        if parts.ema is not None:
            parts.ema.update(parts.net)
        loop.batch += 1
        loop.global_step += 1
        loop.train_seconds = time.perf_counter() - start
        bar.update()
        if loop.global_step % tc.log_interval == 0:
            log(loop)
        if stop is not None and (signum := stop.requested()):
            _settle(stats, loop, run, parts.scaler)
            save_last()
            raise _interrupted(signum, loop, run)
        if _checkpoint_due(tc, loop, steps_per_epoch, after_step=True):
            save_last()
    _settle(stats, loop, run, parts.scaler)  # the epoch's rest, before it is validated and saved


def _interrupted(signum: int, loop: _LoopState, run: RunDir) -> TrainingInterrupted:
    """The stop after ``loop``'s latest step, or at an epoch's end (``loop`` then stands at the next one).

    Ranks leave together, once rank 0 has written the checkpoint: a launcher stops the others as soon as
    one process exits."""
    if is_distributed():
        dist.barrier()
    if loop.batch:
        return TrainingInterrupted(signum, loop.epoch + 1, loop.batch, loop.global_step, run)
    return TrainingInterrupted(signum, loop.epoch, None, loop.global_step, run)


def settle_interval(device: torch.device, tc: TrainConfig) -> int:
    """Steps between host reads of the loss and the non-finite flag: every step on the CPU (reading is free),
    every ``log_interval`` steps on an accelerator (a read waits for all queued work)."""
    return 1 if device.type == "cpu" else tc.log_interval


def _checkpoint_due(tc: TrainConfig, loop: _LoopState, steps_per_epoch: int, after_step: bool = False) -> bool:
    """A mid-epoch checkpoint follows this step (``after_step``: the step just taken)."""
    step, batch = (loop.global_step, loop.batch) if after_step else (loop.global_step + 1, loop.batch + 1)
    return bool(tc.checkpoint_every_steps) and step % tc.checkpoint_every_steps == 0 and batch < steps_per_epoch


def _settle(stats: _DeviceStats, loop: _LoopState, run: RunDir, scaler: torch.amp.GradScaler) -> None:
    """Read the device-side statistics (a host sync); raise for a non-finite value, or for an fp16 gradient
    scale that has collapsed because every step overflows (the loss stays finite, nothing would learn)."""
    bad = stats.settle(loop)
    if bad is not None:  # ``step`` is a global step: the offset from the loop's position is the same mid-step or after
        quantity, value, step = bad
        raise _non_finite(quantity, value, loop, run, step - loop.global_step - 1)
    if scaler.is_enabled() and scaler.get_scale() < _MIN_GRAD_SCALE:
        raise _non_finite(f"gradients (fp16 scale fell to {scaler.get_scale():.2g}: every step overflowed)",
                          float("inf"), loop, run, -1)  # named at the last step taken


def _loss(parts: TrainParts, x: Tensor, labels: Tensor, loop: _LoopState, run: RunDir) -> Tensor:
    """Multi-exit loss of one batch (plus distillation from the teacher), under autocast when enabled."""
    tc = parts.cfg
    with parts.autocast():
        try:
            outputs = parts.forward(x)
        except NonFiniteCoefficientsError as err:  # diverged weights upstream of a basis layer
            raise _non_finite(f"coefficients ({err})", float("nan"), loop, run) from err
        loss = parts.criterion(outputs, labels)
        if parts.teacher is not None:
            with torch.no_grad():
                teacher_logits = final_logits(parts.teacher(x))
            loss = (1 - tc.kd_weight) * loss + tc.kd_weight * kd_loss(outputs[-1], teacher_logits, tc.kd_temperature)
    return loss


@torch.inference_mode()
def validate(
    model: nn.Module,
    loader: Iterable[tuple[Tensor, Tensor]],
    transform: Callable[[Tensor], Tensor],
    channels_last: bool = False,
    autocast: Callable[[], ContextManager[Any]] = contextlib.nullcontext,
) -> list[float]:
    """Top-1 accuracy (%) of every exit over ``loader`` (summed over ranks when distributed; a rank may
    hold no images)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    correct: Tensor | None = None
    total = 0
    try:
        for images, labels in loader:
            x = transform(images.to(device, non_blocking=True))
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            labels = labels.to(device, non_blocking=True)
            with autocast():
                outputs = model(x)
            hits = torch.stack([(out.argmax(dim=1) == labels).sum() for out in outputs])
            correct = hits if correct is None else correct + hits
            total += len(labels)
    finally:
        model.train(was_training)
    if correct is None:
        if not is_distributed():
            raise ValueError("validation loader yielded no batches")
        correct = torch.zeros(_unwrap(model).num_exits, dtype=torch.int64)
    *counts, total = _all_reduce_sum([*map(float, correct.tolist()), float(total)], device)
    if total == 0:
        raise ValueError("validation loader yielded no images on any rank")
    return [100.0 * c / total for c in counts]


def _write_summary(run: RunDir, history: list[dict[str, float]]) -> None:
    """Rewrite ``summary.csv`` from the history kept in the checkpoint, so a resume never duplicates rows."""
    exits = sorted({k for row in history for k in row if k.startswith("val_top1_exit")}, key=lambda k: int(k[13:]))
    columns = ["epoch", "lr", "train_loss", *exits, "seconds", "images_per_s"]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    atomic_write_bytes(run.summary, text.getvalue().encode())


class _TensorBoard:
    """Scalars beside ``summary.csv`` (``train.tensorboard``), written by rank 0 only."""

    def __init__(self, run: RunDir) -> None:
        self.writer = self.require()(str(run.tensorboard))

    @staticmethod
    def require() -> Any:
        """The SummaryWriter class, or a ConfigError saying what to install."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise ConfigError("train.tensorboard=true needs the tensorboard package: pip install 'basisnet[tensorboard]'"
                              ) from err
        return SummaryWriter

    def log(self, step: int, scalars: dict[str, float]) -> None:
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def config_diff(saved: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    """``key: old -> new`` for every setting that would make ``current`` a different run than ``saved``.

    A key the saved config lacks (written before the key existed) counts as its default.
    """
    if not prefix:
        saved = config_to_dict(config_from_dict(saved, source="the saved config"))
    diffs = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict) and name != "model.kwargs":
            diffs += config_diff(a, b, f"{name}.")
        elif a != b and name not in _RESUME_FREE_KEYS:
            diffs.append(f"{name}: {a!r} -> {b!r}")
    return diffs


def fit(
    model: nn.Module,
    train_loader: TrainLoader,
    val_loader: Iterable[tuple[Tensor, Tensor]],
    cfg: RunConfig,
    run_dir: str | Path,
    train_transform: Callable[..., Tensor],
    eval_transform: Callable[[Tensor], Tensor],
    teacher: nn.Module | None = None,
    resume: bool = False,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Train ``model`` (already on its device, optionally DDP-wrapped) for ``cfg.train.epochs``.

    ``train_loader`` yields uint8 ``(images, labels)``; ``train_transform(images, generator=g)``
    augments and normalises on the batch's device, ``eval_transform(images)`` normalises.
    ``teacher`` enables distillation on the final exit. ``resume=True`` continues exactly from
    ``run_dir/last.state.pt``. ``progress=None`` shows a bar only on a terminal.

    Returns ``{"best_top1", "best_epoch", "last_top1" (per exit), "global_step", "history"}``.
    Raises ``NonFiniteLossError`` (after nothing more is written) if the loss is NaN/inf, and
    ``TrainingInterrupted`` after SIGTERM/SIGINT, once the step in progress is done and checkpointed.
    """
    validate_config(cfg)
    tc, run = cfg.train, RunDir(run_dir)
    steps_per_epoch = len(train_loader)
    if tc.kd_teacher is not None and teacher is None:
        raise ValueError(f"train.kd_teacher is {tc.kd_teacher!r} but fit() got no teacher model")
    if resume and not run.state.is_file():
        raise FileNotFoundError(f"cannot resume: {run.state} does not exist")
    if not resume and run.holds_run():
        raise FileExistsError(f"{run} already holds a run ({run.state}); pass resume=True or use a new run_dir")
    static_epochs = static_phase_epochs(_unwrap(model), tc)
    if static_epochs and not resume:
        _unwrap(model).begin_static_phase()
    parts = build_parts(model, tc, steps_per_epoch, teacher)
    shape = {"steps_per_epoch": steps_per_epoch, "loader": type(train_loader).__name__, "sampler": _SAMPLER}
    loop, pending_rng = _resume(parts, cfg, run, shape) if resume else (_start(parts, cfg, run), None)
    main_rank = rank() == 0
    if tc.tensorboard:
        _TensorBoard.require()  # on every rank: a missing package must not leave the others waiting in DDP
    board = _TensorBoard(run) if tc.tensorboard and main_rank else None
    save_last = lambda: _save_last(parts, cfg, run, loop, shape)  # noqa: E731 - sees the current loop
    show_bar = main_rank and (sys.stderr.isatty() if progress is None else progress)
    total_steps = tc.epochs * steps_per_epoch
    model.train()
    with StopSignals() as stop, contextlib.ExitStack() as cleanup:
        if board is not None:
            cleanup.callback(board.close)
        while loop.epoch < tc.epochs:
            epoch = loop.epoch
            if static_epochs:
                _enter_phase([parts.net, parts.eval_model], epoch, static_epochs, loop.batch == 0, tc)
            batches = _epoch_batches(train_loader, loop, pending_rng, parts.augment)
            pending_rng = None
            bar = tqdm(total=steps_per_epoch, initial=loop.batch, desc=f"epoch {epoch + 1}/{tc.epochs}",
                       disable=not show_bar, dynamic_ncols=True, file=sys.stderr)

            def log(state: _LoopState) -> None:
                bar.set_postfix(_bar_stats(state, total_steps), refresh=False)
                if board is not None:
                    board.log(state.global_step, {"train/loss": state.loss_sum / max(state.samples, 1),
                                                  "train/lr": state.lr,
                                                  "train/images_per_s": state.samples / max(state.train_seconds, 1e-9)})

            train_one_epoch(parts, batches, train_transform, loop, run, save_last, steps_per_epoch, bar, log, stop)
            row = _end_epoch(parts, cfg, run, loop, val_loader, eval_transform)
            top1 = [v for k, v in row.items() if k.startswith("val_top1_exit")]
            bar.set_postfix(_bar_stats(loop, total_steps) | ({"val_top1": f"{top1[-1]:.2f}"} if top1 else {}),
                            refresh=False)
            bar.close()
            if board is not None:
                board.log(loop.global_step, {f"epoch/{k}": v for k, v in row.items() if k != "epoch"})
            loop = loop.next_epoch()
            if main_rank:
                _write_summary(run, loop.history)
            save_last()
            if loop.epoch < tc.epochs and (signum := stop.requested()):  # e.g. a signal during validation
                raise _interrupted(signum, loop, run)
    evaluated = [row for row in loop.history if "val_top1_exit0" in row]
    last_top1 = [v for k, v in evaluated[-1].items() if k.startswith("val_top1_exit")] if evaluated else []
    return {"best_top1": loop.best_top1, "best_epoch": loop.best_epoch, "last_top1": last_top1,
            "global_step": loop.global_step, "history": loop.history}


def _start(parts: TrainParts, cfg: RunConfig, run: RunDir) -> _LoopState:
    seed_everything(cfg.train.seed + rank())
    parts.augment.manual_seed(cfg.train.seed + rank() + _AUG_SEED_OFFSET)
    if rank() == 0:
        run.path.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run.config)
    return _LoopState()


def _resume(parts: TrainParts, cfg: RunConfig, run: RunDir, shape: dict[str, Any]
            ) -> tuple[_LoopState, dict[str, Any] | None]:
    """Weights, optimizer, schedule, EMA and loop position from ``last.state.pt``; the random streams are
    returned, to be restored where the interrupted run saved them (see ``_epoch_batches``)."""
    saved = load_state(run.state)
    diffs = config_diff(saved["config"], config_to_dict(cfg))
    if diffs:
        raise ConfigError(f"config differs from the run in {run}, so resuming would not continue it:\n  "
                          + "\n  ".join(diffs))
    if saved.get("loader", shape["loader"]) != shape["loader"]:  # memory and stream order batches differently
        raise ValueError(f"the run in {run} was trained from a {saved['loader']}, this resume reads a "
                         f"{shape['loader']}: set data.loader to the kind it started with")
    old_memory_run = saved.get("loader", "BatchLoader") == "BatchLoader" and saved.get("sampler") != _SAMPLER
    if old_memory_run and len(saved["rng"]) > 1:
        raise ValueError(f"the run in {run} was started on {len(saved['rng'])} processes before in-memory batches "
                         "were cut by ShardSampler (they were cut by torch's DistributedSampler), so resuming would "
                         "not continue it exactly: start it again (single-process runs resume as before)")
    if saved["steps_per_epoch"] != shape["steps_per_epoch"]:
        raise ValueError(f"train_loader has {shape['steps_per_epoch']} batches per epoch, the run in {run} had "
                         f"{saved['steps_per_epoch']}: resume needs the same data and world size")
    parts.net.load_state_dict(saved["model"])
    parts.optimizer.load_state_dict(saved["optimizer"])  # before the scheduler: it restores the current lr
    parts.scheduler.load_state_dict(saved["scheduler"])
    if saved.get("scaler"):
        parts.scaler.load_state_dict(saved["scaler"])
    if parts.ema is not None:
        parts.ema.load_state_dict(saved["ema"])
    loop = _LoopState(**saved["loop"])
    rngs, pending = saved["rng"], None
    if len(rngs) == world_size():
        pending = rngs[rank()]
    else:
        _logger.warning("resuming with %d processes instead of %d: random streams are re-seeded",
                        world_size(), len(rngs))
        seed_everything(cfg.train.seed + rank() + loop.global_step)
        parts.augment.manual_seed(cfg.train.seed + rank() + loop.global_step + _AUG_SEED_OFFSET)
    _logger.info("resuming %s at epoch %d, step %d", run, loop.epoch + 1, loop.batch)
    return loop, pending


def _epoch_batches(loader: TrainLoader, loop: _LoopState, pending_rng: dict[str, Any] | None,
                   augment: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]:
    """The batches of ``loop.epoch`` from ``loop.batch`` on, with resumed random streams restored.

    A loader may draw from the global RNG when it starts an epoch (torch DataLoader does). A mid-epoch
    checkpoint was saved after that draw, an epoch-end one before it: restore around it.
    """
    loader.set_epoch(loop.epoch)
    if pending_rng is not None and loop.batch == 0:
        _set_rng_state(pending_rng, augment)
    batches = iter(loader.iterate(loop.batch))
    if pending_rng is not None and loop.batch > 0:
        _set_rng_state(pending_rng, augment)
    return batches


def _save_last(parts: TrainParts, cfg: RunConfig, run: RunDir, loop: _LoopState, shape: dict[str, Any]) -> None:
    """``last.state.pt`` (every rank's random streams gathered) and ``last.safetensors``; rank 0 writes."""
    rng = _rng_state(parts.augment)
    rngs = [rng]
    if is_distributed():  # every rank's streams, so each resumes its own
        rngs = [None] * world_size()
        dist.all_gather_object(rngs, rng)
    if rank() != 0:
        return
    save_state({
        "model": parts.net.state_dict(), "optimizer": parts.optimizer.state_dict(),
        "scheduler": parts.scheduler.state_dict(), "scaler": parts.scaler.state_dict(),
        "ema": parts.ema.state_dict() if parts.ema is not None else None, "rng": rngs, "loop": asdict(loop),
        "config": config_to_dict(cfg), **shape,
    }, run.state)
    save_weights(parts.eval_model, run.last_weights, _weights_meta(cfg, loop.epoch, loop.global_step, parts.ema))


def _end_epoch(parts: TrainParts, cfg: RunConfig, run: RunDir, loop: _LoopState,
               val_loader: Iterable[tuple[Tensor, Tensor]], transform: Callable[[Tensor], Tensor]) -> dict[str, float]:
    """Validate when due, keep the best weights, append the epoch's row to ``loop.history``."""
    tc, epoch = cfg.train, loop.epoch
    row: dict[str, float] = {"epoch": epoch + 1, "lr": loop.lr, "train_loss": loop.loss_sum / max(loop.samples, 1)}
    eval_start = time.perf_counter()
    if (epoch + 1) % tc.eval_every == 0 or epoch + 1 == tc.epochs:
        top1 = validate(parts.eval_model, val_loader, transform, tc.channels_last, parts.autocast)
        row.update({f"val_top1_exit{i}": acc for i, acc in enumerate(top1)})
        if top1[-1] > loop.best_top1:
            loop.best_top1, loop.best_epoch = top1[-1], epoch + 1
            if rank() == 0:
                save_weights(parts.eval_model, run.best_weights,
                             _weights_meta(cfg, epoch + 1, loop.global_step, parts.ema, top1[-1]))
    row["seconds"] = loop.train_seconds + time.perf_counter() - eval_start
    row["images_per_s"] = loop.samples / max(loop.train_seconds, 1e-9)
    loop.history.append(row)
    _logger.info("epoch %d/%d  %s", epoch + 1, tc.epochs,
                 "  ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "epoch"))
    return row


def static_phase_epochs(model: nn.Module, tc: TrainConfig) -> int:
    """Epochs of BasisNet's static phase (``train.static_phase``); 0 for other models and for a specialist
    that ``train.init_from`` upcycles already."""
    if not isinstance(model, BasisNet) or {"model", "specialist"} & set(tc.init_from):
        return 0
    return round(tc.static_phase * tc.epochs)


def _enter_phase(models: list[nn.Module], epoch: int, static_epochs: int, epoch_start: bool, tc: TrainConfig) -> None:
    """Static phase before ``static_epochs``, mixed bases after; the upcycling step at the first mixed epoch.

    The phase follows from the epoch alone and the upcycling noise from ``train.seed`` alone, so a resumed
    run (any rank) crosses the boundary exactly as an uninterrupted one.
    """
    if epoch == static_epochs and epoch_start:  # models[0] trains; the others (EMA) follow its weights
        models[0].end_static_phase(tc.init_noise, torch.Generator().manual_seed(tc.seed + _UPCYCLE_SEED_OFFSET))
    for model in models:
        model.static_phase = epoch < static_epochs


def _non_finite(quantity: str, value: float, loop: _LoopState, run: RunDir, back: int = 0) -> NonFiniteLossError:
    """The error for the step ``loop`` is about to take, or the one ``-back`` steps before it (1-based
    epoch and step in the message)."""
    checkpoint = run.last_weights if run.state.is_file() else None
    return NonFiniteLossError(quantity, value, loop.epoch + 1, loop.batch + 1 + back, loop.global_step + 1 + back,
                              checkpoint)


def _bar_stats(loop: _LoopState, total_steps: int) -> dict[str, str]:
    """Progress-bar postfix: running epoch loss, lr, throughput and the ETA of the whole run."""
    seconds = max(loop.train_seconds, 1e-9)
    eta = (total_steps - loop.global_step) * seconds / max(loop.batch, 1)
    return {"loss": f"{loop.loss_sum / max(loop.samples, 1):.4f}", "lr": f"{loop.lr:.3g}",
            "img/s": f"{loop.samples / seconds:.0f}", "eta": tqdm.format_interval(eta)}


def _weights_meta(cfg: RunConfig, epoch: int, global_step: int, ema: ModelEma | None,
                  top1: float | None = None) -> dict[str, str]:
    """safetensors metadata: enough to rebuild the model (``load_run_model``) and to tell files apart."""
    meta = {"model": json.dumps(config_to_dict(cfg.model)), "epoch": str(epoch),
            "global_step": str(global_step), "ema": str(ema is not None).lower()}
    if top1 is not None:
        meta["val_top1"] = f"{top1:.4f}"
    return meta
