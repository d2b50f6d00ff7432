"""ImageFolder trees (``root/<class>/<image>``) decoded once into an :class:`ImageTensorDataset`."""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from .dataset import ImageTensorDataset
from .decode import UnreadableImageError, open_image
from .sample_transforms import CenterCrop

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm", ".pgm", ".pbm")
CACHE_ENV = "BASISNET_CACHE"
_CACHE_VERSION = 2  # 2: decoded by the streaming path's decoder and center crop
_CHUNK = 256  # files per thread-pool task: large enough to amortise scheduling, small enough for a live bar


def default_cache_dir() -> Path:
    """``$BASISNET_CACHE`` if set, else ``~/.cache/basisnet``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "basisnet"


def load_image_folder(
    root: str | Path,
    image_size: int | None = None,
    skip_bad: bool = False,
    cache_dir: str | Path | Literal[False] | None = None,
    progress: bool = True,
    num_workers: int | None = None,
) -> ImageTensorDataset:
    """Decode every image under ``root/<class>/`` (recursively) into one uint8 tensor.

    Classes are the sorted names of the non-hidden sub-folders, as in torchvision's ``ImageFolder``;
    an empty class folder keeps its label (with a warning) so labels never shift. Files whose
    extension is not in :data:`IMAGE_EXTENSIONS` and hidden files/folders (``.name``) are ignored.

    ``image_size``: resize the shorter side to this and center-crop a square. Without it all images
    must share one size. Every image becomes RGB; 16-bit grey is scaled (not clipped) to 8 bits,
    alpha is dropped as torchvision's loader does.

    ``skip_bad``: unreadable files raise ``ValueError`` naming the file unless this is set, in
    which case they are left out and reported with one warning.

    ``cache_dir``: the decoded tensor is cached there, keyed by the root path, the file list with
    sizes and mtimes, ``image_size`` and ``skip_bad``, so an unchanged tree loads instantly.
    ``None`` means :func:`default_cache_dir`; ``False`` disables the cache.

    ``num_workers``: decoding threads (Pillow releases the GIL while decoding, and threads avoid
    the fork/pickling costs of processes); default ``min(8, cpu_count)``.

    The whole set is held in memory (and in the cache file): N x 3 x H x W bytes.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist or is not a directory")
    if image_size is not None and image_size < 1:
        raise ValueError(f"image_size must be a positive int or None, got {image_size}")
    classes, files, labels = scan_image_folder(root)

    cache_file = None
    if cache_dir is not False:
        cache_file = _cache_file(root, classes, files, image_size, skip_bad, cache_dir)
        cached = _read_cache(cache_file)
        if cached is not None:
            dataset, skipped = cached
            _report(root, dataset, skipped)
            return dataset

    workers = num_workers if num_workers is not None else min(8, os.cpu_count() or 1)
    images, keep, skipped = _decode_all(root, files, image_size, skip_bad, progress, max(1, workers))
    dataset = ImageTensorDataset(images, torch.tensor(labels, dtype=torch.int64)[keep], classes)
    if cache_file is not None:
        _write_cache(cache_file, dataset, skipped)
    _report(root, dataset, skipped)
    return dataset


def class_folders(root: str | Path) -> list[str]:
    """The class names of an ImageFolder split: its sorted, visible sub-folders (labels follow this order)."""
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise ValueError(f"no class folders in {root}: expected {root}/<class>/<image files>")
    return classes


def scan_image_folder(root: Path) -> tuple[list[str], list[str], list[int]]:
    """Sorted class folders and, per class, its image files' paths (relative to root, sorted).

    Plain strings, not Path objects: pathlib costs seconds on 50k files, which would dominate
    a cache hit.
    """
    classes = class_folders(root)
    files: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        found = []
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, name), followlinks=True):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel = os.path.relpath(dirpath, root)
            found += [
                os.path.join(rel, f)
                for f in filenames
                if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)
            ]
        found.sort()
        files += found
        labels += [label] * len(found)
    if not files:
        raise ValueError(
            f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in the class folders of {root}"
        )
    return classes, files, labels


def _decode_all(
    root: Path, files: list[str], image_size: int | None, skip_bad: bool, progress: bool, workers: int
) -> tuple[torch.Tensor, torch.Tensor, list[tuple[str, str]]]:
    """Decode ``files`` on a thread pool into ``[N, 3, H, W]`` uint8; returns images, kept mask, skipped."""

    def work(start: int) -> list[np.ndarray | str]:
        return [_try_decode(os.path.join(root, rel), image_size) for rel in files[start : start + _CHUNK]]

    buffer: np.ndarray | None = None  # [N, H, W, 3]; allocated once the first readable image fixes H, W
    first = files[0]  # the file that fixed H, W (named in size-mismatch errors)
    keep = np.zeros(len(files), dtype=bool)
    skipped: list[tuple[str, str]] = []
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="basisnet-decode")
    bar = tqdm(total=len(files), desc=f"decoding {root.name}", unit="img", disable=not progress)
    try:
        for start, chunk in zip(range(0, len(files), _CHUNK), pool.map(work, range(0, len(files), _CHUNK))):
            for i, result in enumerate(chunk, start):
                if isinstance(result, str):
                    if not skip_bad:
                        raise ValueError(
                            f"cannot read image {root / files[i]}: {result} (data.skip_bad=true skips unreadable files)"
                        )
                    skipped.append((files[i], result))
                    continue
                if buffer is None:
                    buffer = np.empty((len(files), *result.shape), dtype=np.uint8)
                    first = files[i]
                elif result.shape != buffer.shape[1:]:
                    raise ValueError(
                        f"images differ in size: {root / first} is {buffer.shape[2]}x{buffer.shape[1]} but "
                        f"{root / files[i]} is {result.shape[1]}x{result.shape[0]}; pass image_size to resize them all"
                    )
                buffer[i] = result
                keep[i] = True
            bar.update(len(chunk))
    finally:
        bar.close()
        pool.shutdown(wait=True, cancel_futures=True)
    if buffer is None:
        raise ValueError(f"none of the {len(files)} image files under {root} could be read")
    if skipped:
        buffer = buffer[keep]
    return torch.from_numpy(buffer).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(keep), skipped


def _try_decode(path: str, image_size: int | None) -> np.ndarray | str:
    """``[H, W, 3]`` uint8 pixels, or the reason the file cannot be read: the streaming path's decoder and
    center crop (:mod:`basisnet.data.decode`), so both paths see the same pixels."""
    try:
        with open(path, "rb") as f:
            image = open_image(f.read(), "pillow")
        rgb = image.decode() if image_size is None else CenterCrop(image_size)(image)
    except (UnreadableImageError, OSError) as exc:
        return str(exc) if isinstance(exc, UnreadableImageError) else f"{type(exc).__name__}: {exc}"
    return np.asarray(rgb)


def _report(root: Path, dataset: ImageTensorDataset, skipped: list[tuple[str, str]]) -> None:
    """Warn about anything that would otherwise go unnoticed: skipped files, empty or lone classes."""
    if skipped:
        shown = "; ".join(f"{name}: {reason}" for name, reason in skipped[:5])
        more = f" (and {len(skipped) - 5} more)" if len(skipped) > 5 else ""
        warnings.warn(f"skipped {len(skipped)} unreadable image(s) under {root}: {shown}{more}", stacklevel=3)
    counts = torch.bincount(dataset.targets, minlength=len(dataset.classes))
    empty = [name for name, count in zip(dataset.classes, counts.tolist()) if count == 0]
    if empty:
        warnings.warn(
            f"class folder(s) with no readable images under {root}: {', '.join(empty)} "
            "(kept in classes so labels stay aligned with the sorted folder names)",
            stacklevel=3,
        )
    if len(dataset.classes) == 1:
        warnings.warn(f"{root} has a single class folder ({dataset.classes[0]})", stacklevel=3)


def _cache_file(
    root: Path,
    classes: list[str],
    files: list[str],
    image_size: int | None,
    skip_bad: bool,
    cache_dir: str | Path | None,
) -> Path:
    """``<cache_dir>/imagefolder-<setting hash>-<content hash>.pt``; the first hash groups stale versions."""
    setting = json.dumps([_CACHE_VERSION, str(root.resolve()), image_size, skip_bad])
    content = hashlib.sha256(json.dumps(classes).encode())
    for rel in files:
        try:
            st = os.stat(os.path.join(root, rel))
            stamp = f"{st.st_size}\0{st.st_mtime_ns}"
        except OSError:  # e.g. a dangling symlink: decoding will report it as a bad file
            stamp = "unreadable"
        content.update(f"\0{rel}\0{stamp}".encode())
    directory = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    setting_hash = hashlib.sha256(setting.encode()).hexdigest()[:16]
    return directory / f"imagefolder-{setting_hash}-{content.hexdigest()[:16]}.pt"


def _read_cache(path: Path) -> tuple[ImageTensorDataset, list[tuple[str, str]]] | None:
    """The cached dataset, or None when absent or unreadable (then it is rebuilt)."""
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, weights_only=True)
        dataset = ImageTensorDataset(blob["images"], blob["targets"], blob["classes"])
        return dataset, [(str(name), str(reason)) for name, reason in blob["skipped"]]
    except Exception as exc:  # noqa: BLE001 - any damage to a cache file just means "rebuild it"
        warnings.warn(f"ignoring unreadable cache file {path}: {exc}", stacklevel=3)
        return None


def _write_cache(path: Path, dataset: ImageTensorDataset, skipped: list[tuple[str, str]]) -> None:
    """Atomically write the cache and drop older versions for the same root and settings."""
    blob = {"images": dataset.images, "targets": dataset.targets, "classes": dataset.classes, "skipped": skipped}
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(blob, tmp)
        os.replace(tmp, path)
        for stale in path.parent.glob(f"{path.name.rsplit('-', 1)[0]}-*.pt"):
            if stale != path:
                stale.unlink(missing_ok=True)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        warnings.warn(f"could not write image cache {path}: {exc}", stacklevel=3)


def load_image_files(paths: Sequence[str | Path], image_size: int) -> Tensor:
    """Decode individual image files (for prediction) into one uint8 batch ``[N, 3, size, size]``.

    Any unreadable file raises ``ValueError`` naming it, before any work is done on the others.
    """
    if not paths:
        raise ValueError("no image files given")
    pixels = []
    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"image file not found: {path}")
        decoded = _try_decode(str(path), image_size)
        if isinstance(decoded, str):
            raise ValueError(f"cannot read image {path}: {decoded}")
        pixels.append(torch.from_numpy(decoded.copy()).permute(2, 0, 1))
    return torch.stack(pixels)
