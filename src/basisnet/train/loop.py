"""The training loop, timm-style: ``train_one_epoch`` (one pass over the training batches) and ``validate``
(top-1 of every exit), strung together by ``fit`` with resumable checkpoints (files: :class:`RunDir`).

The loop names no model and no loss term: what a model does about its own training (BasisNet's static
phase, gradient equilibrium) are its hooks (``hooks.py``), the loss is the training task (``task.py``).
Resuming is exact (``resume.py``); non-finite values are found without a step waiting for the device
(``health.py``).
"""
from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ContextManager

import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..layers import NonFiniteCoefficientsError
from .checkpoint import save_weights, weights_metadata
from .config import RunConfig, TrainConfig, save_config, validate_config
from .distributed import is_distributed, rank, unwrap
from .health import DeviceStats, NonFiniteLossError, non_finite, settle
from .history import renumbered, val_top1, val_top1_key, write_summary
from .parts import TrainParts, build_parts
from .preemption import StopSignals, TrainingInterrupted
from .resume import (LoopState, TrainLoader, data_shape, epoch_batches, read_resumable, resumed_streams,
                     save_training_state, start_streams)
from .run_dir import RunDir
from .task import TrainingTask
from .tensorboard import TensorBoard

__all__ = ["EpochContext", "NonFiniteLossError", "TrainData", "TrainLoader", "fit", "train_one_epoch", "validate"]

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainData:
    """The data side of a run: loaders of uint8 ``(images, labels)`` and the transforms that make inputs of them."""

    train_loader: TrainLoader
    val_loader: Iterable[tuple[Tensor, Tensor]]
    train_transform: Callable[..., Tensor]  # (images, generator=g): augments and normalises on the batch's device
    eval_transform: Callable[[Tensor], Tensor]  # normalises


@dataclass
class EpochContext:
    """What one epoch of ``train_one_epoch`` reports to, and asks of, the run around it."""

    run: RunDir  # named in errors and interruptions
    steps_per_epoch: int
    save_last: Callable[[], None]  # writes the resumable checkpoint (every rank calls it)
    bar: Any  # ``update()`` after every step
    log: Callable[[LoopState], None]  # every ``train.log_interval`` steps
    stop: StopSignals | None = None


def train_one_epoch(parts: TrainParts, batches: Iterable[tuple[Tensor, Tensor]], transform: Callable[..., Tensor],
                    loop: LoopState, ctx: EpochContext) -> None:
    """One pass over ``batches`` (the rest of the epoch ``loop`` is in), updating ``loop`` as it goes.

    Statistics are settled (one host sync) every step on the CPU, every ``log_interval`` steps elsewhere,
    and always before a mid-epoch checkpoint: a non-finite value raises before anything is written.
    When ``ctx.stop`` reports a signal after a step, that step's checkpoint is written and
    :class:`TrainingInterrupted` raised.
    """
    tc, device, run = parts.cfg, parts.device, ctx.run
    settle_every = settle_interval(device, tc)
    stats = DeviceStats(device, check_grads=not parts.scaler.is_enabled())
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
        if (loop.global_step + 1) % settle_every == 0 or _checkpoint_due(tc, loop, ctx.steps_per_epoch):
            settle(stats, loop, run, parts.scaler)
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
        ctx.bar.update()
        if loop.global_step % tc.log_interval == 0:
            ctx.log(loop)
        if ctx.stop is not None and (signum := ctx.stop.requested()):
            settle(stats, loop, run, parts.scaler)
            ctx.save_last()
            raise _interrupted(signum, loop, run)
        if _checkpoint_due(tc, loop, ctx.steps_per_epoch, after_step=True):
            ctx.save_last()
    settle(stats, loop, run, parts.scaler)  # the epoch's rest, before it is validated and saved


def _loss(parts: TrainParts, x: Tensor, labels: Tensor, loop: LoopState, run: RunDir) -> Tensor:
    """The training task's loss of one batch, under autocast when enabled."""
    with parts.autocast():
        try:
            outputs = parts.forward(x)
        except NonFiniteCoefficientsError as err:  # diverged weights upstream of a basis layer
            raise non_finite(f"coefficients ({err})", float("nan"), loop, run) from err
        return parts.task.loss(outputs, labels, x)


def _interrupted(signum: int, loop: LoopState, run: RunDir) -> TrainingInterrupted:
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


def _checkpoint_due(tc: TrainConfig, loop: LoopState, steps_per_epoch: int, after_step: bool = False) -> bool:
    """A mid-epoch checkpoint follows this step (``after_step``: the step just taken)."""
    step, batch = (loop.global_step, loop.batch) if after_step else (loop.global_step + 1, loop.batch + 1)
    return bool(tc.checkpoint_every_steps) and step % tc.checkpoint_every_steps == 0 and batch < steps_per_epoch


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
        correct = torch.zeros(unwrap(model).num_exits, dtype=torch.int64)
    *counts, total = _all_reduce_sum([*map(float, correct.tolist()), float(total)], device)
    if total == 0:
        raise ValueError("validation loader yielded no images on any rank")
    return [100.0 * c / total for c in counts]


def _all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    if not is_distributed():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def fit(model: nn.Module, data: TrainData, cfg: RunConfig, run_dir: str | Path, *, teacher: nn.Module | None = None,
        resume: bool = False, progress: bool | None = None) -> dict[str, Any]:
    """Train ``model`` (already on its device, optionally DDP-wrapped) on ``data`` for ``cfg.train.epochs``.

    ``teacher`` enables distillation on the final exit. ``resume=True`` continues exactly from
    ``run_dir/last.state.pt``. ``progress=None`` shows a bar only on a terminal.

    Returns ``{"best_top1", "best_epoch", "last_top1" (per exit), "global_step", "history"}``.
    Raises ``NonFiniteLossError`` (after nothing more is written) if the loss is NaN/inf, and
    ``TrainingInterrupted`` after SIGTERM/SIGINT, once the step in progress is done and checkpointed.
    """
    validate_config(cfg)
    tc, run = cfg.train, RunDir(run_dir)
    task = TrainingTask.from_config(tc, teacher)
    if resume and not run.state.is_file():
        raise FileNotFoundError(f"cannot resume: {run.state} does not exist")
    if not resume and run.holds_run():
        raise FileExistsError(f"{run} already holds a run ({run.state}); pass resume=True or use a new run_dir")
    shape = data_shape(data.train_loader)
    steps_per_epoch = shape["steps_per_epoch"]
    parts = build_parts(model, tc, steps_per_epoch, task, resume)
    loop, pending_rng = _resume(parts, cfg, run, shape) if resume else (_start(parts, cfg, run), None)
    main_rank = rank() == 0
    if tc.tensorboard:
        TensorBoard.require()  # on every rank: a missing package must not leave the others waiting in DDP
    board = TensorBoard(run) if tc.tensorboard and main_rank else None
    save_last = lambda: _save_last(parts, cfg, run, loop, shape)  # noqa: E731 - sees the current loop
    show_bar = main_rank and (sys.stderr.isatty() if progress is None else progress)
    total_steps = tc.epochs * steps_per_epoch
    model.train()
    with StopSignals() as stop, contextlib.ExitStack() as cleanup:
        if board is not None:
            cleanup.callback(board.close)
        while loop.epoch < tc.epochs:
            epoch = loop.epoch
            parts.begin_epoch(epoch, step=loop.batch == 0)
            batches = epoch_batches(data.train_loader, loop, pending_rng, parts.augment)
            pending_rng = None
            bar = tqdm(total=steps_per_epoch, initial=loop.batch, desc=f"epoch {epoch + 1}/{tc.epochs}",
                       disable=not show_bar, dynamic_ncols=True, file=sys.stderr)

            def log(state: LoopState) -> None:
                bar.set_postfix(_bar_stats(state, total_steps), refresh=False)
                if board is not None:
                    board.log(state.global_step, {"train/loss": state.loss_sum / max(state.samples, 1),
                                                  "train/lr": state.lr,
                                                  "train/images_per_s": state.samples / max(state.train_seconds, 1e-9)})

            train_one_epoch(parts, batches, data.train_transform, loop,
                            EpochContext(run, steps_per_epoch, save_last, bar, log, stop))
            row = _end_epoch(parts, cfg, run, loop, data)
            top1 = val_top1(row)
            bar.set_postfix(_bar_stats(loop, total_steps) | ({"val_top1": f"{top1[-1]:.2f}"} if top1 else {}),
                            refresh=False)
            bar.close()
            if board is not None:
                board.log(loop.global_step, {f"epoch/{k}": v for k, v in row.items() if k != "epoch"})
            loop = loop.next_epoch()
            if main_rank:
                write_summary(run.summary, loop.history)
            save_last()
            if loop.epoch < tc.epochs and (signum := stop.requested()):  # e.g. a signal during validation
                raise _interrupted(signum, loop, run)
    evaluated = [top1 for top1 in map(val_top1, loop.history) if top1]
    last_top1 = evaluated[-1] if evaluated else []
    return {"best_top1": loop.best_top1, "best_epoch": loop.best_epoch, "last_top1": last_top1,
            "global_step": loop.global_step, "history": loop.history}


def _start(parts: TrainParts, cfg: RunConfig, run: RunDir) -> LoopState:
    start_streams(cfg.train.seed, parts.augment)
    if rank() == 0:
        run.path.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run.config)
    return LoopState()


def _resume(parts: TrainParts, cfg: RunConfig, run: RunDir, shape: dict[str, Any]
            ) -> tuple[LoopState, dict[str, Any] | None]:
    """Parts and loop position from ``last.state.pt``; the random streams are returned, to be restored where
    the interrupted run saved them (``resume.epoch_batches``)."""
    saved = read_resumable(run, cfg, shape)
    parts.load_state_dict(saved)
    loop = LoopState(**saved["loop"])
    loop.history = [renumbered(row) for row in loop.history]  # a run logged with exits counted from 0
    pending = resumed_streams(saved, cfg.train.seed, parts.augment)
    if loop.epoch >= cfg.train.epochs:
        _logger.info("%s has finished its %d epoch(s): nothing left to train", run, cfg.train.epochs)
    else:
        _logger.info("resuming %s in epoch %d after step %d", run, loop.epoch + 1, loop.batch)
    return loop, pending


def _save_last(parts: TrainParts, cfg: RunConfig, run: RunDir, loop: LoopState, shape: dict[str, Any]) -> None:
    """``last.state.pt`` (every rank's random streams gathered) and ``last.safetensors``; rank 0 writes."""
    if save_training_state(run, parts.state_dict, loop, parts.augment, cfg, shape):
        save_weights(parts.eval_model, run.last_weights,
                     weights_metadata(cfg.model, loop.epoch, loop.global_step, parts.ema is not None))


def _end_epoch(parts: TrainParts, cfg: RunConfig, run: RunDir, loop: LoopState, data: TrainData) -> dict[str, float]:
    """Validate when due, keep the best weights, append the epoch's row to ``loop.history``."""
    tc, epoch = cfg.train, loop.epoch
    row: dict[str, float] = {"epoch": epoch + 1, "lr": loop.lr, "train_loss": loop.loss_sum / max(loop.samples, 1)}
    eval_start = time.perf_counter()
    if (epoch + 1) % tc.eval_every == 0 or epoch + 1 == tc.epochs:
        top1 = validate(parts.eval_model, data.val_loader, data.eval_transform, tc.channels_last, parts.autocast)
        row.update({val_top1_key(k): acc for k, acc in enumerate(top1, start=1)})
        if top1[-1] > loop.best_top1:
            loop.best_top1, loop.best_epoch = top1[-1], epoch + 1
            if rank() == 0:
                save_weights(parts.eval_model, run.best_weights,
                             weights_metadata(cfg.model, epoch + 1, loop.global_step, parts.ema is not None, top1[-1]))
    row["seconds"] = loop.train_seconds + time.perf_counter() - eval_start
    row["images_per_s"] = loop.samples / max(loop.train_seconds, 1e-9)
    loop.history.append(row)
    _logger.info("epoch %d/%d  %s", epoch + 1, tc.epochs,
                 "  ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "epoch"))
    return row


def _bar_stats(loop: LoopState, total_steps: int) -> dict[str, str]:
    """Progress-bar postfix: running epoch loss, lr, throughput and the ETA of the whole run."""
    seconds = max(loop.train_seconds, 1e-9)
    eta = (total_steps - loop.global_step) * seconds / max(loop.batch, 1)
    return {"loss": f"{loop.loss_sum / max(loop.samples, 1):.4f}", "lr": f"{loop.lr:.3g}",
            "img/s": f"{loop.samples / seconds:.0f}", "eta": tqdm.format_interval(eta)}
