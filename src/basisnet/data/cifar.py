"""CIFAR-10 / CIFAR-100 in the official "python version" pickle format."""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .dataset import ImageTensorDataset

SPLITS = ("train", "test")


@dataclass(frozen=True)
class _Layout:
    folder: str
    meta_file: str
    files: dict[str, tuple[str, ...]]
    names_key: dict[str, str]  # label_mode -> key of the class names in the meta file
    labels_key: dict[str, str]  # label_mode -> key of the labels in a batch file


_LAYOUTS = (
    _Layout(
        folder="cifar-10-batches-py",
        meta_file="batches.meta",
        files={"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
        names_key={"fine": "label_names"},
        labels_key={"fine": "labels"},
    ),
    _Layout(
        folder="cifar-100-python",
        meta_file="meta",
        files={"train": ("train",), "test": ("test",)},
        names_key={"fine": "fine_label_names", "coarse": "coarse_label_names"},
        labels_key={"fine": "fine_labels", "coarse": "coarse_labels"},
    ),
)


def find_cifar_dir(root: str | Path) -> Path | None:
    """The CIFAR python folder that ``root`` is or contains, or None if it holds none.

    A folder counts as CIFAR if it has the official name or its meta file; a parent holding
    both CIFAR-10 and CIFAR-100 is ambiguous and raises ``ValueError``.
    """
    found = _locate(Path(root).expanduser())
    return found[0] if found else None


def _locate(root: Path) -> tuple[Path, _Layout] | None:
    if not root.is_dir():
        return None
    for lay in _LAYOUTS:  # by name first: a misnamed meta file must not switch the layout
        if root.name == lay.folder:
            return root, lay
    for lay in _LAYOUTS:
        if (root / lay.meta_file).is_file():
            return root, lay
    found = [(root / lay.folder, lay) for lay in _LAYOUTS if (root / lay.folder).is_dir()]
    if len(found) > 1:
        raise ValueError(f"{root} holds both {found[0][0].name} and {found[1][0].name}; pass the one you want")
    return found[0] if found else None


def cifar_classes(root: str | Path, label_mode: str = "fine") -> list[str]:
    """The class names of a CIFAR python folder, from its meta file alone (no image batch is read)."""
    folder, layout = _require(Path(root).expanduser(), label_mode)
    meta_path = folder / layout.meta_file
    return _names(_unpickle(meta_path), layout.names_key[label_mode], meta_path)


def _require(root: Path, label_mode: str) -> tuple[Path, _Layout]:
    found = _locate(root)
    if found is None:
        raise FileNotFoundError(
            f"no CIFAR data in {root}: expected {root / _LAYOUTS[0].folder} or {root / _LAYOUTS[1].folder} "
            "(the official python version)"
        )
    folder, layout = found
    if label_mode not in layout.labels_key:
        modes = tuple(layout.labels_key)
        raise ValueError(f"label_mode for {layout.folder} must be one of {modes}, got {label_mode!r}")
    return folder, layout


def load_cifar(root: str | Path, split: str = "train", label_mode: str = "fine") -> ImageTensorDataset:
    """Read CIFAR-10 or CIFAR-100 from ``root`` (the ``cifar-*`` folder itself or its parent).

    ``label_mode`` picks CIFAR-100's 100 ``"fine"`` or 20 ``"coarse"`` labels; CIFAR-10 has only
    ``"fine"``. The pickles are read with a restricted unpickler that admits numpy arrays and
    nothing else, so a hostile file cannot run code.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    folder, layout = _require(Path(root).expanduser(), label_mode)
    classes = cifar_classes(folder, label_mode)
    images, targets = [], []
    for name in layout.files[split]:
        path = folder / name
        batch_images, batch_targets = _batch(_unpickle(path), layout.labels_key[label_mode], len(classes), path)
        images.append(batch_images)
        targets.append(batch_targets)
    return ImageTensorDataset(torch.cat(images), torch.cat(targets), classes)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Admits the few globals a pickled numpy array needs; anything else is a malformed file."""

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),  # protocol-2 pickles written by Python 3 store bytes this way
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR file")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict[str, Any]:
    """The file's dict with ``str`` keys (the official files, from Python 2, have ``bytes`` keys)."""
    if not path.is_file():
        raise FileNotFoundError(f"missing CIFAR file {path}")
    # Read it whole first: a corrupt length field then cannot make the unpickler ask the file for gigabytes.
    raw = path.read_bytes()
    try:
        obj = _NumpyOnlyUnpickler(io.BytesIO(raw), encoding="bytes").load()
    # A corrupt pickle can fail in almost any way (UnpicklingError, EOFError, ValueError,
    # IndexError, RecursionError, ...); each means the same thing to the caller.
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"{path} is not a valid CIFAR pickle: {type(exc).__name__}: {exc}") from exc
    if not isinstance(obj, dict):
        raise ValueError(f"{path} is not a valid CIFAR pickle: holds a {type(obj).__name__}, not a dict")
    return {_text(k): v for k, v in obj.items()}


def _text(value: Any) -> Any:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value


def _names(meta: dict[str, Any], key: str, path: Path) -> list[str]:
    names = meta.get(key)
    if not isinstance(names, (list, tuple)) or not names or not all(isinstance(n, (bytes, str)) for n in names):
        raise ValueError(f"{path} has no list of class names under {key!r}")
    return [_text(n) for n in names]


def _batch(batch: dict[str, Any], labels_key: str, num_classes: int, path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``[n, 3, 32, 32]`` (rows hold the R, G, B planes in turn) and int64 labels."""
    data = batch.get("data")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        found = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise ValueError(f"{path}: 'data' must be a uint8 array of shape [n, 3072], found {found}")
    try:
        labels = np.asarray(batch.get(labels_key))
    except ValueError as exc:  # ragged nesting
        raise ValueError(f"{path}: {labels_key!r} is not a list of integers ({exc})") from exc
    if labels.size and labels.dtype.kind not in "iu":  # refuse to truncate floats or parse strings into labels
        raise ValueError(f"{path}: {labels_key!r} is not a list of integers (found {labels.dtype})")
    labels = labels.astype(np.int64)
    if labels.shape != (len(data),):
        raise ValueError(f"{path}: {len(data)} images but {labels_key!r} has shape {labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{path}: labels outside [0, {num_classes}) for {num_classes} class names")
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
    return images, torch.from_numpy(labels)
