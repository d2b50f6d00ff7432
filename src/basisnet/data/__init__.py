"""Data: in-memory uint8 sets with batch-level augmentation, and a streaming path over file indexes.

In memory, every reader returns an :class:`ImageTensorDataset`, so training batches are one tensor index
away. Streaming, a :class:`FileIndex` (ImageFolder tree or tar shards) is decoded per image in DataLoader
workers (:class:`StreamDataset`, :class:`StreamLoader`, sharded by :class:`ShardSampler`).
"""

from .cifar import find_cifar_dir, load_cifar
from .dataset import ImageTensorDataset
from .files import FileIndex
from .sample_transforms import CenterCrop, RandomResizedCrop, rrc_box
from .sampler import ShardSampler
from .streaming import StreamDataset, StreamLoader, sample_seed
from .folder import IMAGE_EXTENSIONS, default_cache_dir, load_image_files, load_image_folder
from .loader import BatchLoader
from .sources import load_dataset
from .split import train_val_split
from .synthetic import SHAPE_CLASSES, make_shapes
from .transforms import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    EvalTransform,
    Normalize,
    TrainAugment,
    channel_stats,
)

__all__ = [
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "IMAGE_EXTENSIONS",
    "SHAPE_CLASSES",
    "BatchLoader",
    "CenterCrop",
    "FileIndex",
    "Normalize",
    "RandomResizedCrop",
    "ShardSampler",
    "StreamDataset",
    "StreamLoader",
    "EvalTransform",
    "ImageTensorDataset",
    "TrainAugment",
    "channel_stats",
    "default_cache_dir",
    "find_cifar_dir",
    "load_cifar",
    "load_dataset",
    "load_image_files",
    "load_image_folder",
    "make_shapes",
    "rrc_box",
    "sample_seed",
    "train_val_split",
]
