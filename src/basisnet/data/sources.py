"""One entry point that turns a config's ``source`` string into a data set."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .cifar import cifar_classes, find_cifar_dir, load_cifar
from .dataset import ImageTensorDataset
from .files import TAR_SUFFIX
from .folder import class_folders, load_image_folder
from .synthetic import SHAPE_CLASSES, make_shapes

SHAPES = "shapes"
# What a ``data.source`` string names: the built-in set and CIFAR's python batches are decoded into memory
# as a whole; an ImageFolder tree can be read either way; tar shards only by streaming.
SOURCE_KINDS = ("shapes", "cifar", "folder", "shards")


def source_kind(source: str | Path) -> str:
    """Which of :data:`SOURCE_KINDS` ``source`` is (its training split is looked at, nothing is read)."""
    if str(source) == SHAPES:
        return "shapes"
    if find_cifar_dir(Path(source).expanduser()) is not None:
        return "cifar"
    return "shards" if any(split_dir(source, "train").glob(f"*{TAR_SUFFIX}")) else "folder"


def source_classes(source: str | Path, kind: str) -> list[str] | None:
    """The class names of a shapes, CIFAR or folder source without decoding an image; None for tar shards,
    whose classes only their index holds."""
    if kind == "shapes":
        return list(SHAPE_CLASSES)
    if kind == "cifar":
        return cifar_classes(source)
    if kind == "folder":
        return class_folders(split_dir(source, "train"))
    return None


def load_dataset(source: str | Path, split: str = "train", **kwargs: Any) -> ImageTensorDataset:
    """Load ``split`` of ``source`` with the matching reader; ``kwargs`` go to that reader.

    ``source`` is ``"shapes"`` (:func:`make_shapes`; split ``train`` or ``test``), a CIFAR python
    folder or its parent (:func:`load_cifar`), or an ImageFolder tree (:func:`load_image_folder`):
    either a root holding ``<split>/<class>/...`` or the split folder itself (its name must be
    ``split``, so asking for ``test`` can never silently return a train folder).
    """
    if str(source) == SHAPES:
        if split not in ("train", "test"):
            raise ValueError(f"the shapes data set has splits 'train' and 'test', got {split!r}")
        train, test = make_shapes(**kwargs)
        return train if split == "train" else test
    path = Path(source).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"data source {str(source)!r} is neither {SHAPES!r} nor an existing directory")
    if find_cifar_dir(path) is not None:
        return load_cifar(path, split, **kwargs)
    return load_image_folder(split_dir(path, split), **kwargs)


def split_dir(source: str | Path, split: str) -> Path:
    """The folder holding ``split`` of a file-based source: ``source/<split>``, or ``source`` itself when its
    name is ``split`` (so asking for ``test`` can never silently return a train folder)."""
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"data source {str(source)!r} does not exist")
    if (path / split).is_dir():
        return path / split
    if path.name == split and path.is_dir():
        return path
    raise ValueError(
        f"cannot tell what {path} holds for split {split!r}: expected a CIFAR python folder, "
        f"{path / split}/<class>/<images> (or *.tar shards), or the split folder itself named {split!r}"
    )
