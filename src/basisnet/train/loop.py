"""The training loop: multi-exit loss (+ optional distillation), EMA, validation, resumable checkpoints.

Run directory layout::

    config.yaml         resolved config, written at the start
    summary.csv         one row per finished epoch
    last.state.pt       everything needed to resume exactly (weights, optimizer, scheduler,
                        EMA, RNG streams, position in the epoch); torch.load(weights_only=True)
    last.safetensors    weights of the evaluated model (EMA if enabled) after the last save
    best.safetensors    same, at the best final-exit validation top-1

Resuming is exact: a run stopped at any checkpoint and resumed produces bitwise the same
weights as an uninterrupted run (on CPU; cuDNN kernels may be nondeterministic on GPU).
"""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

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

__all__ = ["fit", "evaluate", "NonFiniteLossError", "seed_everything"]

_logger = logging.getLogger(__name__)

LAST_STATE = "last.state.pt"
LAST_WEIGHTS = "last.safetensors"
BEST_WEIGHTS = "best.safetensors"
_AUG_SEED_OFFSET = 0x5EED  # augmentation draws from its own stream, not a copy of the global one
_UPCYCLE_SEED_OFFSET = 0xB1A5  # the noise that separates the bases after the static phase
# Keys that only change bookkeeping, so a resumed run may change them without losing exactness.
_RESUME_FREE_KEYS = frozenset({
    "train.log_interval", "train.checkpoint_every_steps", "data.num_workers", "data.eval_batch_size",
})


class TrainLoader(Protocol):
    """What ``fit`` needs from a training loader (``basisnet.data.BatchLoader`` provides it)."""

    def __len__(self) -> int: ...
    def set_epoch(self, epoch: int) -> None: ...
    def iterate(self, start_batch: int = 0) -> Iterable[tuple[Tensor, Tensor]]: ...


class NonFiniteLossError(RuntimeError):
    """The loss (or its gradient norm) became NaN/inf; training stopped before the optimizer step of
    that batch, and nothing was saved after it."""

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
    loss_sum: float = 0.0  # sum of (batch mean loss * batch size) over the epoch so far
    samples: int = 0
    train_seconds: float = 0.0  # training time of the epoch so far (survives a resume)
    lr: float = 0.0  # learning rate of the latest step
    best_top1: float = -1.0
    best_epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


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


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loader: Iterable[tuple[Tensor, Tensor]],
    transform: Callable[[Tensor], Tensor],
    channels_last: bool = False,
) -> list[float]:
    """Top-1 accuracy (%) of every exit over ``loader`` (summed over ranks when distributed)."""
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
            hits = torch.stack([(out.argmax(dim=1) == labels).sum() for out in model(x)])
            correct = hits if correct is None else correct + hits
            total += len(labels)
    finally:
        model.train(was_training)
    if correct is None:
        raise ValueError("validation loader yielded no batches")
    *counts, total = _all_reduce_sum([*map(float, correct.tolist()), float(total)], device)
    return [100.0 * c / total for c in counts]


def _write_summary(path: Path, history: list[dict[str, float]]) -> None:
    """Rewrite ``summary.csv`` from the history kept in the checkpoint, so a resume never duplicates rows."""
    exits = sorted({k for row in history for k in row if k.startswith("val_top1_exit")}, key=lambda k: int(k[13:]))
    columns = ["epoch", "lr", "train_loss", *exits, "seconds", "images_per_s"]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    atomic_write_bytes(path, text.getvalue().encode())


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
    Raises ``NonFiniteLossError`` (after nothing more is written) if the loss is NaN/inf.
    """
    validate_config(cfg)
    tc = cfg.train
    run_dir = Path(run_dir)
    state_path = run_dir / LAST_STATE
    main_rank = rank() == 0
    net = _unwrap(model)
    device = next(net.parameters()).device
    steps_per_epoch = len(train_loader)
    if tc.kd_teacher is not None and teacher is None:
        raise ValueError(f"train.kd_teacher is {tc.kd_teacher!r} but fit() got no teacher model")
    if resume and not state_path.is_file():
        raise FileNotFoundError(f"cannot resume: {state_path} does not exist")
    if not resume and state_path.exists():
        raise FileExistsError(f"{run_dir} already holds a run ({state_path}); pass resume=True or use a new run_dir")

    static_epochs = static_phase_epochs(net, tc)
    if static_epochs and not resume:
        net.begin_static_phase()
    if tc.channels_last:
        to_channels_last(net)
    optimizer = create_optimizer(net, tc)
    params = [p for p in net.parameters() if p.requires_grad]
    scheduler = create_scheduler(optimizer, tc, steps_per_epoch)
    ema = ModelEma(net, tc.ema_decay) if tc.ema_decay > 0 else None
    eval_model = ema.module if ema is not None else net
    criterion = MultiExitLoss(tc.aux_weight, tc.label_smoothing)
    use_kd = teacher is not None and tc.kd_weight > 0
    if teacher is not None:
        teacher.eval()
    augment = torch.Generator()  # CPU: augmentation parameters are drawn on the CPU, then applied on device
    cfg_dict = config_to_dict(cfg)

    pending_rng: dict[str, Any] | None = None  # restored where the interrupted run saved it, see below
    if resume:
        saved = load_state(state_path)
        diffs = config_diff(saved["config"], cfg_dict)
        if diffs:
            raise ConfigError(f"config differs from the run in {run_dir}, so resuming would not continue it:\n  "
                              + "\n  ".join(diffs))
        if saved["steps_per_epoch"] != steps_per_epoch:
            raise ValueError(f"train_loader has {steps_per_epoch} batches per epoch, the run in {run_dir} had "
                             f"{saved['steps_per_epoch']}: resume needs the same data and world size")
        net.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])  # before the scheduler: it restores the current lr
        scheduler.load_state_dict(saved["scheduler"])
        if ema is not None:
            ema.load_state_dict(saved["ema"])
        loop = _LoopState(**saved["loop"])
        rngs = saved["rng"]
        if len(rngs) == world_size():
            pending_rng = rngs[rank()]
        else:
            _logger.warning("resuming with %d processes instead of %d: random streams are re-seeded",
                            world_size(), len(rngs))
            seed_everything(tc.seed + rank() + loop.global_step)
            augment.manual_seed(tc.seed + rank() + loop.global_step + _AUG_SEED_OFFSET)
        _logger.info("resuming %s at epoch %d, step %d", run_dir, loop.epoch + 1, loop.batch)
    else:
        loop = _LoopState()
        seed_everything(tc.seed + rank())
        augment.manual_seed(tc.seed + rank() + _AUG_SEED_OFFSET)
        if main_rank:
            run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, run_dir / "config.yaml")

    def save_last() -> None:
        rng = _rng_state(augment)
        rngs = [rng]
        if is_distributed():  # every rank's streams, so each resumes its own
            rngs = [None] * world_size()
            dist.all_gather_object(rngs, rng)
        if not main_rank:
            return
        save_state({
            "model": net.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "ema": ema.state_dict() if ema is not None else None, "rng": rngs, "loop": asdict(loop),
            "config": cfg_dict, "steps_per_epoch": steps_per_epoch,
        }, state_path)
        save_weights(eval_model, run_dir / LAST_WEIGHTS, _weights_meta(cfg, loop.epoch, loop.global_step, ema))

    # Compiled forward for training; evaluation and checkpoints use the module itself.
    forward = torch.compile(model, backend="inductor" if tc.compile is True else tc.compile) if tc.compile else model
    show_bar = main_rank and (sys.stderr.isatty() if progress is None else progress)
    total_steps = tc.epochs * steps_per_epoch
    model.train()
    while loop.epoch < tc.epochs:
        epoch = loop.epoch
        if static_epochs:
            _enter_phase([net, eval_model], epoch, static_epochs, loop.batch == 0, tc)
        train_loader.set_epoch(epoch)
        # A loader may draw from the global RNG when it starts an epoch (torch DataLoader does). A
        # mid-epoch checkpoint was saved after that draw, an epoch-end one before it: restore around it.
        if pending_rng is not None and loop.batch == 0:
            _set_rng_state(pending_rng, augment)
        batches = iter(train_loader.iterate(loop.batch))
        if pending_rng is not None and loop.batch > 0:
            _set_rng_state(pending_rng, augment)
        pending_rng = None
        bar = tqdm(total=steps_per_epoch, initial=loop.batch, desc=f"epoch {epoch + 1}/{tc.epochs}",
                   disable=not show_bar, dynamic_ncols=True, file=sys.stderr)
        start = time.perf_counter() - loop.train_seconds
        for images, labels in batches:
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            x = train_transform(images, generator=augment)
            if tc.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            try:
                outputs = forward(x)
            except NonFiniteCoefficientsError as err:  # diverged weights upstream of a basis layer
                raise _non_finite(f"coefficients ({err})", float("nan"), loop, run_dir) from err
            loss = criterion(outputs, labels)
            if use_kd:
                with torch.no_grad():
                    teacher_logits = final_logits(teacher(x))
                loss = (1 - tc.kd_weight) * loss + tc.kd_weight * kd_loss(
                    outputs[-1], teacher_logits, tc.kd_temperature)
            batch_loss, batch_size = _all_reduce_sum([float(loss.detach()) * len(labels), float(len(labels))], device)
            if not math.isfinite(batch_loss):
                raise _non_finite("loss", batch_loss, loop, run_dir)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            # A finite loss can still give inf gradients, which turn the weights into NaN one step
            # later (and into the next checkpoint): check the gradient norm too (DDP: same on all ranks).
            grads = [p.grad for p in params if p.grad is not None]
            grad_norm = nn.utils.get_total_norm(grads)
            if not math.isfinite(float(grad_norm)):
                raise _non_finite("gradient norm", float(grad_norm), loop, run_dir)
            if tc.grad_clip > 0:
                nn.utils.clip_grads_with_norm_(params, tc.grad_clip, grad_norm)
            loop.lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            if ema is not None:
                ema.update(net)
            loop.batch += 1
            loop.global_step += 1
            loop.loss_sum += batch_loss
            loop.samples += int(batch_size)
            loop.train_seconds = time.perf_counter() - start
            bar.update()
            if loop.global_step % tc.log_interval == 0:
                bar.set_postfix(_bar_stats(loop, total_steps), refresh=False)
            if (tc.checkpoint_every_steps and loop.global_step % tc.checkpoint_every_steps == 0
                    and loop.batch < steps_per_epoch):
                save_last()

        row: dict[str, float] = {"epoch": epoch + 1, "lr": loop.lr, "train_loss": loop.loss_sum / max(loop.samples, 1)}
        eval_start = time.perf_counter()
        last_top1: list[float] = []
        if (epoch + 1) % tc.eval_every == 0 or epoch + 1 == tc.epochs:
            last_top1 = evaluate(eval_model, val_loader, eval_transform, tc.channels_last)
            row.update({f"val_top1_exit{i}": acc for i, acc in enumerate(last_top1)})
            if last_top1[-1] > loop.best_top1:
                loop.best_top1, loop.best_epoch = last_top1[-1], epoch + 1
                if main_rank:
                    save_weights(eval_model, run_dir / BEST_WEIGHTS,
                                 _weights_meta(cfg, epoch + 1, loop.global_step, ema, last_top1[-1]))
        row["seconds"] = loop.train_seconds + time.perf_counter() - eval_start
        row["images_per_s"] = loop.samples / max(loop.train_seconds, 1e-9)
        loop.history.append(row)
        bar.set_postfix(_bar_stats(loop, total_steps) | (
            {"val_top1": f"{last_top1[-1]:.2f}"} if last_top1 else {}), refresh=False)
        bar.close()
        _logger.info("epoch %d/%d  %s", epoch + 1, tc.epochs,
                     "  ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "epoch"))
        loop = _LoopState(epoch=epoch + 1, global_step=loop.global_step, lr=loop.lr, best_top1=loop.best_top1,
                          best_epoch=loop.best_epoch, history=loop.history)
        if main_rank:
            _write_summary(run_dir / "summary.csv", loop.history)
        save_last()
    evaluated = [row for row in loop.history if "val_top1_exit0" in row]
    last_top1 = [v for k, v in evaluated[-1].items() if k.startswith("val_top1_exit")] if evaluated else []
    return {"best_top1": loop.best_top1, "best_epoch": loop.best_epoch, "last_top1": last_top1,
            "global_step": loop.global_step, "history": loop.history}


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


def _non_finite(quantity: str, value: float, loop: _LoopState, run_dir: Path) -> NonFiniteLossError:
    """The error for the step ``loop`` is about to take (1-based epoch and step in the message)."""
    checkpoint = run_dir / LAST_WEIGHTS if (run_dir / LAST_STATE).is_file() else None
    return NonFiniteLossError(quantity, value, loop.epoch + 1, loop.batch + 1, loop.global_step + 1, checkpoint)


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
