"""A config's ``data`` section turned into what training and evaluation read: splits, loaders, transforms.

Two kinds, by ``data.loader``: ``memory`` decodes a set once into one uint8 tensor (fast batches for
CIFAR-size sets); ``stream`` keeps only a file index and decodes per image in DataLoader workers
(ImageNet-size sets, tar shards, random-resized crops). Both give uint8 batches that the transforms
here normalise (and, for ``pad`` crops, augment) on the training device.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

from .data import BatchLoader, EvalTransform, ImageTensorDataset, TrainAugment, find_cifar_dir, load_dataset, train_val_split
from .data.autoaugment import create_policy
from .data.decode import resolve_decoder
from .data.files import TAR_SUFFIX, FileIndex
from .data.sample_transforms import CenterCrop, RandomResizedCrop
from .data.sources import SHAPES, split_dir
from .data.streaming import StreamDataset, StreamLoader
from .data.transforms import Normalize
from .train import ConfigError, RunConfig
from .train.distributed import DistributedInfo
from .train.loop import TrainLoader

__all__ = ["Inputs", "INPUT_KINDS", "MemoryInputs", "SPLITS", "StreamInputs", "Splits", "choose_loader", "eval_transform",
           "load_splits", "open_inputs", "per_rank"]

_logger = logging.getLogger(__name__)
SPLITS = ("val", "test")
Batches = Iterable[tuple[Tensor, Tensor]]


def _single(info: DistributedInfo | None) -> tuple[int, int]:
    return (0, 1) if info is None else (info.rank, info.world_size)


def per_rank(global_batch: int, world: int, key: str) -> int:
    """Batch sizes in the config are global (summed over processes), so a run means the same at any scale."""
    if global_batch % world:
        raise ConfigError(f"{key}={global_batch} is the global batch size and must be divisible by the "
                          f"{world} processes")
    return global_batch // world


def eval_transform(cfg: RunConfig) -> EvalTransform:
    return EvalTransform(cfg.data.mean, cfg.data.std, size=cfg.data.image_size)


def _carve(targets: Tensor, cfg: RunConfig) -> tuple[Tensor, Tensor]:
    """Train and held-out validation indices of the training split (``data.val_size``, ``data.subset``)."""
    if not cfg.data.val_size:
        raise ValueError("data.val_size is 0: a held-out validation split is needed for model selection and "
                         "threshold calibration")
    train_idx, val_idx = train_val_split(targets, cfg.data.val_size, seed=cfg.data.seed)
    if cfg.data.subset > len(train_idx):  # silently fewer images would make every count that follows wrong
        raise ValueError(f"data.subset={cfg.data.subset} exceeds the {len(train_idx)} training images left after "
                         f"data.val_size={cfg.data.val_size} of {cfg.data.source}")
    if cfg.data.subset:
        # A seeded random sample: folder trees list images class by class, so a prefix would hold one class.
        pick = torch.randperm(len(train_idx), generator=torch.Generator().manual_seed(cfg.data.seed))
        train_idx = train_idx[pick[: cfg.data.subset].sort().values]
    return train_idx, val_idx


def _check_classes(test: list[str], train: list[str], source: str) -> None:
    if test != train:
        raise ValueError(f"test classes {test} differ from train classes {train} in {source}")


class Inputs(Protocol):
    """What training and evaluation need from a data source, whichever loader reads it."""

    classes: list[str]

    def train_loader(self, info: DistributedInfo, batch_size: int, device: torch.device) -> TrainLoader: ...
    def eval_loader(self, split: str, batch_size: int, info: DistributedInfo | None = None) -> Batches: ...
    def train_transform(self) -> Callable[..., Tensor]: ...
    def eval_transform(self) -> Callable[[Tensor], Tensor]: ...


@dataclass
class Splits:
    train: ImageTensorDataset
    val: ImageTensorDataset
    test: ImageTensorDataset | None


def _reader_kwargs(cfg: RunConfig) -> dict[str, Any]:
    source = cfg.data.source
    if source == SHAPES:
        return {"image_size": cfg.data.image_size}
    if find_cifar_dir(Path(source).expanduser()) is not None:
        return {}
    return {"image_size": cfg.data.image_size, "skip_bad": cfg.data.skip_bad}


def load_splits(cfg: RunConfig, with_test: bool = False) -> Splits:
    """Train / held-out validation (carved deterministically from train) / test, decoded into memory."""
    full = load_dataset(cfg.data.source, "train", **_reader_kwargs(cfg))
    train_idx, val_idx = _carve(full.targets, cfg)
    test = load_dataset(cfg.data.source, "test", **_reader_kwargs(cfg)) if with_test else None
    if test is not None:
        _check_classes(test.classes, full.classes, cfg.data.source)
    return Splits(full.subset(train_idx), full.subset(val_idx), test)


class MemoryInputs:
    """Every split decoded once into RAM; on a GPU the training split moves to device memory when it fits
    in a quarter of what is free (no host-to-device copy per step)."""

    def __init__(self, cfg: RunConfig, with_test: bool = False) -> None:
        self.cfg = cfg
        self.splits = load_splits(cfg, with_test)
        self.classes = self.splits.train.classes

    def train_loader(self, info: DistributedInfo, batch_size: int, device: torch.device) -> TrainLoader:
        data = self.splits.train
        on_gpu = device.type == "cuda" and data.images.numel() < torch.cuda.mem_get_info(device)[0] // 4
        if on_gpu:
            data = ImageTensorDataset(data.images.to(device), data.targets.to(device), data.classes)
        return BatchLoader(data, batch_size, shuffle=True, drop_last=True, seed=self.cfg.data.seed, rank=info.rank,
                           world_size=info.world_size, num_workers=self.cfg.data.num_workers,
                           pin_memory=device.type == "cuda" and not on_gpu)

    def eval_loader(self, split: str, batch_size: int, info: DistributedInfo | None = None) -> Batches:
        data = self.splits.val if split == "val" else self.splits.test
        if data is None:
            raise ValueError("the test split was not loaded (with_test=False)")
        rank, world = _single(info)
        return BatchLoader(data, batch_size, shuffle=False, rank=rank, world_size=world)

    def train_transform(self) -> Callable[..., Tensor]:
        d = self.cfg.data
        return TrainAugment(d.image_size, d.crop_padding, d.flip, d.mean, d.std)

    def eval_transform(self) -> Callable[[Tensor], Tensor]:
        return eval_transform(self.cfg)


class StreamInputs:
    """File indexes only; images decoded per sample in ``data.num_workers`` DataLoader workers.

    ``data.decoder=auto`` is resolved here and written back into ``cfg``, so a run's ``config.yaml`` records
    the decoder it trained with (decoders differ slightly in pixels)."""

    def __init__(self, cfg: RunConfig, with_test: bool = False, train_index: FileIndex | None = None) -> None:
        self.cfg = cfg
        d = cfg.data
        d.decoder = resolve_decoder(d.decoder)
        if d.source == SHAPES or find_cifar_dir(Path(d.source).expanduser()) is not None:
            raise ConfigError(f"data.loader=stream reads image files (an ImageFolder tree or tar shards); "
                              f"{d.source!r} is not one: use data.loader=memory")
        full = train_index if train_index is not None else FileIndex.from_split(split_dir(d.source, "train"))
        train_idx, val_idx = _carve(full.targets, cfg)
        self.index = {"train": full.subset(train_idx.numpy()), "val": full.subset(val_idx.numpy())}
        if with_test:
            self.index["test"] = FileIndex.from_split(split_dir(d.source, "test"))
            _check_classes(list(self.index["test"].classes), list(full.classes), d.source)
        self.classes = list(full.classes)

    def _dataset(self, split: str, transform: Callable[..., Any]) -> StreamDataset:
        if split not in self.index:
            raise ValueError(f"the {split} split was not indexed (with_test=False)")
        return StreamDataset(self.index[split], transform, seed=self.cfg.train.seed, skip_bad=self.cfg.data.skip_bad,
                             decoder=self.cfg.data.decoder)

    def train_loader(self, info: DistributedInfo, batch_size: int, device: torch.device) -> TrainLoader:
        d = self.cfg.data
        if d.train_crop == "resized":
            policy = create_policy(d.augment, **({"num_ops": d.augment_ops, "magnitude": d.augment_magnitude}
                                                 if d.augment == "randaugment" else {}))
            sample = RandomResizedCrop(d.image_size, tuple(d.crop_scale), tuple(d.crop_ratio), d.flip, policy)
        else:  # pad crops and flips happen on the device, from whole images at image_size
            sample = CenterCrop(d.image_size)
        return StreamLoader(self._dataset("train", sample), batch_size, shuffle=True, drop_last=True, seed=d.seed,
                            rank=info.rank, world_size=info.world_size, num_workers=d.num_workers,
                            pin_memory=device.type == "cuda")

    def eval_loader(self, split: str, batch_size: int, info: DistributedInfo | None = None) -> Batches:
        d = self.cfg.data
        rank, world = _single(info)
        return StreamLoader(self._dataset(split, CenterCrop(d.image_size, d.eval_crop)), batch_size, shuffle=False,
                            rank=rank, world_size=world, num_workers=d.num_workers)

    def train_transform(self) -> Callable[..., Tensor]:
        d = self.cfg.data
        if d.train_crop == "resized":
            return Normalize(d.mean, d.std)
        return TrainAugment(d.image_size, d.crop_padding, d.flip, d.mean, d.std)

    def eval_transform(self) -> Callable[[Tensor], Tensor]:
        return eval_transform(self.cfg)


INPUT_KINDS: dict[str, Callable[..., Inputs]] = {"memory": MemoryInputs, "stream": StreamInputs}


def choose_loader(cfg: RunConfig) -> str:
    """``data.loader``, with ``auto`` resolved: memory for the built-in and CIFAR python sets, stream for tar
    shards, random-resized crops or a training set whose decoded size exceeds ``data.memory_limit_gb``.

    Settings that only the other kind honours are errors, not silently ignored."""
    return _resolve_loader(cfg)[0]


def _resolve_loader(cfg: RunConfig) -> tuple[str, FileIndex | None]:
    """:func:`choose_loader`, plus the training index when sizing the tree needed one (so it is scanned once)."""
    d = cfg.data
    if d.source == SHAPES or find_cifar_dir(Path(d.source).expanduser()) is not None:
        if d.loader == "stream" or d.train_crop == "resized":
            raise ConfigError(f"{d.source!r} is decoded into memory as a whole (no image files to stream), so "
                              "data.loader=stream and data.train_crop=resized do not apply: use a folder tree")
        return _memory_only_settings(cfg), None
    train_dir = split_dir(d.source, "train")
    shards = any(train_dir.glob(f"*{TAR_SUFFIX}"))
    if d.loader == "memory":
        if shards:
            raise ConfigError(f"{train_dir} holds tar shards, which only data.loader=stream (or auto) reads")
        return _memory_only_settings(cfg), None
    if d.loader == "stream" or shards or d.train_crop == "resized":
        return "stream", None
    index = FileIndex.from_folder(train_dir)
    images = len(index)
    decoded_gb = images * 3 * d.image_size**2 / 1e9
    kind = "stream" if decoded_gb > d.memory_limit_gb else "memory"
    _logger.info("data.loader=auto: %d training images, %.1f GB decoded -> %s", images, decoded_gb, kind)
    return (kind, index) if kind == "stream" else (_memory_only_settings(cfg), None)


def _memory_only_settings(cfg: RunConfig) -> str:
    """"memory", once no stream-only setting is asked for."""
    if cfg.data.eval_crop != 1.0:
        raise ConfigError(f"data.eval_crop={cfg.data.eval_crop} applies to the stream loader; the memory loader "
                          "evaluates on the whole shorter side (set data.loader=stream, or eval_crop=1)")
    return "memory"


def open_inputs(cfg: RunConfig, with_test: bool = False) -> Inputs:
    """The data of ``cfg`` read the way ``data.loader`` says."""
    kind, scanned = _resolve_loader(cfg)
    if scanned is not None:  # auto indexed the tree to size it: the stream reads that index, not a second scan
        return StreamInputs(cfg, with_test, train_index=scanned)
    return INPUT_KINDS[kind](cfg, with_test)
