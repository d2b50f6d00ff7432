"""Crash-safe checkpoints: safetensors weights plus a ``weights_only``-loadable training state.

Every file is written to a temporary file in the same directory, fsynced and then
``os.replace``d over the old one, so a crash, a full disk or a SIGKILL mid-write
leaves the previous checkpoint intact.
"""
from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from .config import ModelConfig, config_to_dict
from .run_dir import RunDir

__all__ = [
    "CheckpointError", "CheckpointMismatchError", "atomic_write_bytes", "save_weights", "load_weights",
    "read_weights", "read_weights_metadata",
    "save_state", "load_state", "resolve_weights", "load_run_model", "weights_metadata",
]

_MAX_LISTED = 20


class CheckpointError(RuntimeError):
    """A checkpoint file is missing or unreadable."""


class CheckpointMismatchError(CheckpointError):
    """A weights file does not fit the model (other architecture, class count, ...)."""


def _fsync_dir(directory: Path) -> None:
    """Persist the rename itself; directories cannot be opened for fsync on Windows."""
    if os.name == "posix":
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _umask_mode() -> int:
    """0666 less the process umask: the mode ``open()`` gives a new file."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_FILE_MODE = _umask_mode()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Replace ``path`` by ``data`` all-or-nothing (temp file in the same dir, fsync, ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if hasattr(os, "fchmod"):  # mkstemp makes 0600; a checkpoint is as readable as the run's other files
            os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def save_weights(model: nn.Module, path: str | Path, metadata: Mapping[str, str] | None = None) -> None:
    """Write ``model.state_dict()`` (parameters and buffers) as safetensors, atomically.

    Tensors are copied to contiguous CPU memory first: safetensors refuses tied/shared
    storage and strided (e.g. channels_last) tensors, and each key must stand alone.
    """
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(path, st_save(tensors, metadata=dict(metadata or {})))


def weights_metadata(model: ModelConfig, epoch: int, global_step: int, ema: bool,
                     top1: float | None = None) -> dict[str, str]:
    """safetensors metadata: enough to rebuild the model (:func:`load_run_model`) and to tell files apart."""
    meta = {"model": json.dumps(config_to_dict(model)), "epoch": str(epoch),
            "global_step": str(global_step), "ema": str(ema).lower()}
    if top1 is not None:
        meta["val_top1"] = f"{top1:.4f}"
    return meta


def _read_bytes(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{what} not found: {path}") from None


def _mismatch_report(model_state: Mapping[str, torch.Tensor], ckpt: Mapping[str, torch.Tensor]) -> list[str]:
    def listed(title: str, items: list[str]) -> list[str]:
        more = [f"    ... and {len(items) - _MAX_LISTED} more"] if len(items) > _MAX_LISTED else []
        return [f"  {title} ({len(items)}):"] + [f"    {s}" for s in items[:_MAX_LISTED]] + more if items else []

    missing = sorted(set(model_state) - set(ckpt))
    unexpected = sorted(set(ckpt) - set(model_state))
    shapes = [
        f"{k}: checkpoint {tuple(ckpt[k].shape)} vs model {tuple(v.shape)}"
        for k, v in model_state.items() if k in ckpt and ckpt[k].shape != v.shape
    ]
    return (listed("missing in checkpoint", missing) + listed("unexpected in checkpoint", unexpected)
            + listed("shape mismatch", shapes))


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and string metadata of a safetensors file, read once (a corrupt file: ``CheckpointError``)."""
    path = Path(path)
    data = _read_bytes(path, "weights file")
    try:
        header_len = int.from_bytes(data[:8], "little")  # format: u64 length, JSON header, tensor bytes
        metadata = json.loads(data[8:8 + header_len]).get("__metadata__") or {}
        return st_load(data), metadata
    except Exception as e:  # safetensors raises its own error types for truncated / foreign files
        raise CheckpointError(f"cannot read weights file {path}: {e}") from None


def read_weights_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata stored by ``save_weights`` (model config, epoch, ...)."""
    return read_weights(path)[1]


def _load_checked(model: nn.Module, tensors: dict[str, torch.Tensor], path: Path) -> None:
    problems = _mismatch_report(model.state_dict(), tensors)
    if problems:
        raise CheckpointMismatchError(f"weights file {path} does not match the model:\n" + "\n".join(problems))
    model.load_state_dict(tensors)


def load_weights(model: nn.Module, path: str | Path) -> dict[str, str]:
    """Load a safetensors file written by ``save_weights`` into ``model``; return its metadata.

    Every key and shape must match; otherwise ``CheckpointMismatchError`` lists what differs
    (e.g. a checkpoint of another architecture or class count) and the model is left untouched.
    """
    tensors, metadata = read_weights(Path(path))
    _load_checked(model, tensors, Path(path))
    return metadata


def save_state(state: Mapping[str, Any], path: str | Path) -> None:
    """Atomically ``torch.save`` a training state made of plain containers, numbers, strings and tensors."""
    buffer = io.BytesIO()
    torch.save(dict(state), buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_state(path: str | Path) -> dict[str, Any]:
    """Read a ``save_state`` file with ``weights_only=True`` (no pickled code can run), tensors on CPU."""
    path = Path(path)
    data = _read_bytes(path, "training state")
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated / non-plain files
        raise CheckpointError(f"cannot read training state {path}: {e}") from None


def resolve_weights(path: str | Path) -> Path:
    """A weights file, or a run directory's ``best.safetensors`` (falling back to ``last.safetensors``)."""
    path = Path(path)
    if path.is_dir():
        run = RunDir(path)
        for weights in (run.best_weights, run.last_weights):
            if weights.is_file():
                return weights
        raise CheckpointError(f"run directory {path} has neither {run.best_weights.name} nor {run.last_weights.name}")
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    return path


def load_run_model(path: str | Path, create_model: Callable[..., nn.Module]) -> nn.Module:
    """Rebuild a trained model (e.g. a distillation teacher) from a run directory or weights file.

    The architecture comes from the ``model`` entry the training loop stores in the weights'
    metadata; ``create_model(name, **kwargs)`` is passed in so training code does not depend on
    the model zoo. Returned in eval mode.
    """
    weights = resolve_weights(path)
    tensors, metadata = read_weights(weights)
    if "model" not in metadata:
        raise CheckpointError(f"{weights} does not record its model (no 'model' metadata): build the model "
                              "yourself and use load_weights")
    spec = json.loads(metadata["model"])
    model = create_model(spec["name"], **spec["kwargs"])
    _load_checked(model, tensors, weights)
    return model.eval()
