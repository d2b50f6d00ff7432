"""One entry point that turns a config's ``source`` string into a data set."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .cifar import find_cifar_dir, load_cifar
from .dataset import ImageTensorDataset
from .folder import load_image_folder
from .synthetic import make_shapes

SHAPES = "shapes"


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
