"""Data sets as in-memory uint8 tensors, batch-level augmentation, and a resumable sharded loader.

Every reader returns an :class:`ImageTensorDataset`, so training batches are one tensor index away.
"""

from .cifar import find_cifar_dir, load_cifar
from .dataset import ImageTensorDataset
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
    "train_val_split",
]
