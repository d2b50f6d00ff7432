"""A resolved run's data turned into what training and evaluation read: splits, loaders, transforms.

Two kinds, by the resolved loader (:class:`basisnet.resolve.ResolvedRun`): ``memory`` decodes a set once into one uint8 tensor (fast batches for
CIFAR-size sets); ``stream`` keeps only a file index and decodes per image in DataLoader workers
(ImageNet-size sets, tar shards, random-resized crops). Both give uint8 batches that the transforms
here normalise (and, for ``pad`` crops, augment) on the training device.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from .data import BatchLoader, EvalTransform, ImageTensorDataset, TrainAugment, load_dataset, train_val_split
from .data.autoaugment import create_policy
from .data.files import FileIndex
from .data.sample_transforms import CenterCrop, RandomResizedCrop
from .data.sources import split_dir
from .data.streaming import StreamDataset, StreamLoader
from .data.transforms import Normalize
from .resolve import ResolvedRun
from .train import RunConfig, TrainLoader
from .train.distributed import DistributedInfo

__all__ = ["Inputs", "INPUT_KINDS", "MemoryInputs", "SPLITS", "StreamInputs", "Splits", "eval_transform",
           "load_splits", "open_inputs"]

SPLITS = ("val", "test")
Batches = Iterable[tuple[Tensor, Tensor]]


def _single(info: DistributedInfo | None) -> tuple[int, int]:
    return (0, 1) if info is None else (info.rank, info.world_size)


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


def _check_classes(found: list[str], run: ResolvedRun, split: str) -> None:
    """The classes a split holds are the ones the run was resolved with (labels index them)."""
    if list(found) != list(run.classes):
        raise ValueError(f"{split} classes {list(found)} differ from train classes {list(run.classes)} in "
                         f"{run.config.data.source}")


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


def _reader_kwargs(run: ResolvedRun) -> dict[str, Any]:
    d = run.config.data
    if run.source_kind == "shapes":
        return {"image_size": d.image_size}
    if run.source_kind == "cifar":
        return {}
    return {"image_size": d.image_size, "skip_bad": d.skip_bad}


def load_splits(run: ResolvedRun, with_test: bool = False) -> Splits:
    """Train / held-out validation (carved deterministically from train) / test, decoded into memory."""
    source = run.config.data.source
    full = load_dataset(source, "train", **_reader_kwargs(run))
    _check_classes(full.classes, run, "train")
    train_idx, val_idx = _carve(full.targets, run.config)
    test = load_dataset(source, "test", **_reader_kwargs(run)) if with_test else None
    if test is not None:
        _check_classes(test.classes, run, "test")
    return Splits(full.subset(train_idx), full.subset(val_idx), test)


class MemoryInputs:
    """Every split decoded once into RAM; on a GPU the training split moves to device memory when it fits
    in a quarter of what is free (no host-to-device copy per step)."""

    def __init__(self, run: ResolvedRun, with_test: bool = False) -> None:
        self.cfg = run.config
        self.splits = load_splits(run, with_test)
        self.classes = list(run.classes)

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
    """File indexes only; images decoded per sample in ``data.num_workers`` DataLoader workers, by the decoder
    the run was resolved with."""

    def __init__(self, run: ResolvedRun, with_test: bool = False) -> None:
        self.cfg, d = run.config, run.config.data
        full = run.train_index if run.train_index is not None else FileIndex.from_split(split_dir(d.source, "train"))
        train_idx, val_idx = _carve(full.targets, run.config)
        self.index = {"train": full.subset(train_idx.numpy()), "val": full.subset(val_idx.numpy())}
        if with_test:
            self.index["test"] = FileIndex.from_split(split_dir(d.source, "test"))
            _check_classes(list(self.index["test"].classes), run, "test")
        self.classes = list(run.classes)

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


def open_inputs(run: ResolvedRun, with_test: bool = False) -> Inputs:
    """The data of ``run`` read by the loader it was resolved with."""
    return INPUT_KINDS[run.loader](run, with_test)
