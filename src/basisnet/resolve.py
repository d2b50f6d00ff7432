"""A config resolved once into the run it describes, before any work.

A config leaves things open that only the machine and the data can settle: which kind of source
``data.source`` names, which loader reads it (``data.loader=auto``), which JPEG decoder (``auto``), how
many classes the model predicts and at which resolution, where it trains (``train.device=auto``) and on
how many processes. :func:`resolve_run` decides all of them in one pure step and checks every setting that
needs them, so a bad combination fails in the first second, naming the option as typed; what it returns
is frozen and everything downstream (data, model, training, evaluation, benches) reads it. The input config
is never changed: the resolved one is a new object, the one saved as the run's ``config.yaml``.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from .data.decode import resolve_decoder
from .data.files import FileIndex
from .data.sources import source_classes, source_kind, split_dir
from .models import check_options
from .models.registry import model_class
from .train import ConfigError, RunConfig, check_train_options, config_diff, config_to_dict, validate_config
from .train.distributed import launch_env

__all__ = ["ResolvedRun", "resolve_run", "same_run"]

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResolvedRun:
    """What a run is, every choice made: the config with nothing left to decide, and the facts it implies.

    ``config`` has ``model.kwargs.num_classes`` and ``resolution`` filled from the data and, for the stream
    loader, the JPEG decoder named (decoders differ slightly in pixels, so a run records its own).
    """

    config: RunConfig
    source_kind: str  # data.sources.SOURCE_KINDS
    loader: str  # "memory" or "stream"
    classes: tuple[str, ...]
    device: str  # "cpu" or "cuda"
    world_size: int  # processes the global batches are split over
    # The training split's file index when resolving had to scan it (auto sizing, tar shards): read once.
    train_index: FileIndex | None = field(default=None, compare=False, repr=False)

    @property
    def model_kwargs(self) -> dict[str, Any]:
        return self.config.model.kwargs

    @property
    def batch_size(self) -> int:
        """Training images per process and step."""
        return self.config.data.batch_size // self.world_size

    @property
    def eval_batch_size(self) -> int:
        """Evaluation images per process and batch (the last process may get fewer)."""
        return -(-self.config.data.eval_batch_size // self.world_size)

    def describe(self) -> dict[str, Any]:
        """The resolved facts beside the config, as ``basisnet train --dry-run`` prints them."""
        return {"source_kind": self.source_kind, "loader": self.loader, "classes": len(self.classes),
                "device": self.device, "world_size": self.world_size}


def resolve_run(cfg: RunConfig, training: bool = True) -> ResolvedRun:
    """Settle everything ``cfg`` leaves open and check every setting that depends on it; ``cfg`` is untouched.

    ``training=False`` resolves a run for evaluation on this machine (the CPU, one process): the settings
    that only training reads (``train.device``, ``train.amp``, the per-process batch split) are not checked,
    so a run trained on a GPU cluster evaluates anywhere.
    """
    validate_config(cfg)
    check_options(cfg.model.name, cfg.model.kwargs, "model.kwargs.")  # a typo costs no data scan
    check_train_options(model_class(cfg.model.name), cfg.train)
    device, world = _placement(cfg) if training else ("cpu", 1)
    kind, loader, classes, index = _resolve_data(cfg)
    data = cfg.data
    if loader == "stream":
        data = dataclasses.replace(data, decoder=_decoder(data.decoder))
    model = dataclasses.replace(cfg.model, kwargs=_model_kwargs(cfg, len(classes)))
    resolved = dataclasses.replace(cfg, model=model, data=data)
    return ResolvedRun(resolved, kind, loader, tuple(classes), device, world, index)


def same_run(a: RunConfig, b: RunConfig) -> list[str]:
    """``key: old -> new`` for every setting in which the runs of two configs differ once resolved (a
    config that leaves ``num_classes`` to the data and one that names it are the same run)."""
    old, new = (config_to_dict(resolve_run(c, training=False).config) for c in (a, b))
    return config_diff(old, new)


def _placement(cfg: RunConfig) -> tuple[str, int]:
    """Device and process count, and the settings that depend on them."""
    t, d = cfg.train, cfg.data
    if t.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is 'cuda' but no CUDA device is visible (train.device=auto falls back to CPU)")
    device = "cuda" if t.device == "cuda" or (t.device == "auto" and torch.cuda.is_available()) else "cpu"
    if t.amp == "fp16" and device != "cuda":
        raise ConfigError(f"train.amp=fp16 needs a CUDA device (this run is on {device}): use bf16 or off")
    world = launch_env().world_size
    if d.batch_size % world:
        raise ConfigError(f"data.batch_size={d.batch_size} is the global batch size and must be divisible by the "
                          f"{world} processes")
    return device, world


def _resolve_data(cfg: RunConfig) -> tuple[str, str, list[str], FileIndex | None]:
    """Source kind, loader kind (``data.loader=auto`` decided), class names and the training index when
    deciding needed one. Settings that only the other loader honours are errors, not silently ignored."""
    d = cfg.data
    kind = source_kind(d.source)
    if kind in ("shapes", "cifar"):
        if d.loader == "stream" or d.train_crop == "resized":
            raise ConfigError(f"{d.source!r} is decoded into memory as a whole (no image files to stream), so "
                              "data.loader=stream and data.train_crop=resized do not apply: use a folder tree")
        return kind, _memory_only(cfg), source_classes(d.source, kind), None
    train_dir = split_dir(d.source, "train")
    if d.loader == "memory":
        if kind == "shards":
            raise ConfigError(f"{train_dir} holds tar shards, which only data.loader=stream (or auto) reads")
        return kind, _memory_only(cfg), source_classes(d.source, kind), None
    if d.loader == "stream" or kind == "shards" or d.train_crop == "resized":
        index = FileIndex.from_split(train_dir)  # the stream reads this index: one scan
        return kind, "stream", list(index.classes), index
    index = FileIndex.from_folder(train_dir)
    decoded_gb = len(index) * 3 * d.image_size**2 / 1e9
    loader = "stream" if decoded_gb > d.memory_limit_gb else "memory"
    _logger.info("data.loader=auto: %d training images, %.1f GB decoded -> %s", len(index), decoded_gb, loader)
    if loader == "memory":
        return kind, _memory_only(cfg), list(index.classes), None
    return kind, loader, list(index.classes), index


def _memory_only(cfg: RunConfig) -> str:
    """"memory", once no stream-only setting is asked for."""
    if cfg.data.eval_crop != 1.0:
        raise ConfigError(f"data.eval_crop={cfg.data.eval_crop} applies to the stream loader; the memory loader "
                          "evaluates on the whole shorter side (set data.loader=stream, or eval_crop=1)")
    return "memory"


def _decoder(name: str) -> str:
    try:
        return resolve_decoder(name)
    except ValueError as err:
        raise ConfigError(f"data.decoder: {err}") from None


def _model_kwargs(cfg: RunConfig, num_classes: int) -> dict[str, Any]:
    """The model's options with what the data decides filled in: the class count and the input side."""
    kwargs = dict(cfg.model.kwargs)
    given = kwargs.setdefault("num_classes", num_classes)
    if given != num_classes:
        raise ConfigError(f"model.kwargs.num_classes is {given} but {cfg.data.source} has {num_classes} classes")
    kwargs.setdefault("resolution", cfg.data.image_size)
    return kwargs
