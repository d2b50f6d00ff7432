"""An index of image files (an ImageFolder tree or tar shards): what the streaming path reads from.

Paths live in one fixed-width numpy byte array, not a list of Python strings: DataLoader workers fork
the index, and touching millions of Python objects' reference counts would copy every page of it into
every worker (the well-known "memory grows with workers" effect).
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from .folder import IMAGE_EXTENSIONS, default_cache_dir, scan_image_folder

__all__ = ["FileIndex", "TAR_SUFFIX"]

TAR_SUFFIX = ".tar"


@dataclass(frozen=True)
class FileIndex:
    """``len(index)`` images: where each one's bytes are and its class.

    Folder: ``paths`` are relative to ``root``. Tar shards (uncompressed ``*.tar`` in ``root`` holding
    ``.../<class>/<image>`` members): ``paths`` name the shard and ``offsets``/``sizes`` locate the
    member's bytes, read with ``os.pread`` so forked workers never share a file position.
    """

    root: str
    classes: tuple[str, ...]
    paths: np.ndarray  # bytes, fixed width
    labels: np.ndarray  # int64
    offsets: np.ndarray | None = None  # int64, tar shards only
    sizes: np.ndarray | None = None

    @classmethod
    def from_folder(cls, root: str | Path) -> FileIndex:
        """``root/<class>/**/<image>``, classes and files sorted as in :func:`load_image_folder`."""
        root = Path(root).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"image folder {root} does not exist or is not a directory")
        classes, files, labels = scan_image_folder(root)
        return cls(str(root), tuple(classes), np.array([os.fsencode(f) for f in files]),
                   np.asarray(labels, dtype=np.int64))

    @classmethod
    def from_tars(cls, root: str | Path, cache_dir: str | Path | None = None, progress: bool = True) -> FileIndex:
        """Every image member of ``root/*.tar`` (sorted by shard, then member order); a member's class is
        the name of the folder that holds it.

        Reading the headers of a million members takes minutes, so the index is cached in ``cache_dir``
        (default :func:`default_cache_dir`), keyed by the shards' names, sizes and modification times.
        """
        root = Path(root).expanduser()
        shards = sorted(p for p in root.glob(f"*{TAR_SUFFIX}") if p.is_file())
        if not shards:
            raise ValueError(f"no {TAR_SUFFIX} shards in {root}")
        cache = _tar_cache_file(root, shards, cache_dir)
        cached = _read_tar_cache(cache, root)
        if cached is not None:
            return cached
        index = cls._scan_tars(root, shards, progress)
        _write_tar_cache(cache, index)
        return index

    @classmethod
    def _scan_tars(cls, root: Path, shards: list[Path], progress: bool) -> FileIndex:
        entries: list[tuple[bytes, str, int, int]] = []
        for shard in tqdm(shards, desc=f"indexing {root.name} shards", unit="shard", disable=not progress):
            try:
                with tarfile.open(shard, "r:") as tar:
                    for m in tar:
                        parts = m.name.split("/")
                        if m.isfile() and len(parts) >= 2 and m.name.lower().endswith(IMAGE_EXTENSIONS):
                            entries.append((os.fsencode(shard.name), parts[-2], m.offset_data, m.size))
            except tarfile.TarError as exc:
                raise ValueError(f"cannot read tar shard {shard} (uncompressed tar needed): {exc}") from exc
        if not entries:
            raise ValueError(f"the shards in {root} hold no image files ({', '.join(IMAGE_EXTENSIONS)}) "
                             "inside <class>/ folders")
        classes = sorted({e[1] for e in entries})
        label_of = {name: i for i, name in enumerate(classes)}
        return cls(str(root), tuple(classes), np.array([e[0] for e in entries]),
                   np.array([label_of[e[1]] for e in entries], dtype=np.int64),
                   np.array([e[2] for e in entries], dtype=np.int64), np.array([e[3] for e in entries], dtype=np.int64))

    @classmethod
    def from_split(cls, root: str | Path) -> FileIndex:
        """Tar shards if ``root`` holds ``*.tar`` files, else an ImageFolder tree."""
        root = Path(root).expanduser()
        return cls.from_tars(root) if any(root.glob(f"*{TAR_SUFFIX}")) else cls.from_folder(root)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def targets(self) -> Tensor:
        return torch.from_numpy(self.labels)

    def name(self, i: int) -> str:
        """Where image ``i`` comes from, for error messages."""
        path = os.path.join(self.root, os.fsdecode(self.paths[i]))
        return path if self.offsets is None else f"{path} (member at byte {int(self.offsets[i])})"

    def read(self, i: int) -> bytes:
        """The encoded bytes of image ``i`` (a file, or a tar member read at its offset)."""
        path = os.path.join(self.root, os.fsdecode(self.paths[i]))
        if self.offsets is None or self.sizes is None:
            with open(path, "rb") as f:
                return f.read()
        fd = os.open(path, os.O_RDONLY)
        try:
            return os.pread(fd, int(self.sizes[i]), int(self.offsets[i]))
        finally:
            os.close(fd)

    def subset(self, indices: Tensor | np.ndarray) -> FileIndex:
        pick = np.asarray(indices, dtype=np.int64)
        part = (lambda a: None if a is None else a[pick])
        return FileIndex(self.root, self.classes, self.paths[pick], self.labels[pick], part(self.offsets),
                         part(self.sizes))

    def __repr__(self) -> str:
        kind = "tar shards" if self.offsets is not None else "folder"
        return f"FileIndex({len(self)} images, {len(self.classes)} classes, {kind} {self.root})"


_TAR_CACHE_VERSION = 1


def _tar_cache_file(root: Path, shards: list[Path], cache_dir: str | Path | None) -> Path:
    stamps = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in shards]
    key = hashlib.sha256(json.dumps([_TAR_CACHE_VERSION, str(root.resolve()), stamps]).encode()).hexdigest()[:24]
    directory = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return directory / f"tarindex-{key}.npz"


def _read_tar_cache(path: Path, root: Path) -> FileIndex | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return FileIndex(str(root), tuple(str(c) for c in z["classes"]), z["paths"], z["labels"], z["offsets"],
                             z["sizes"])
    except Exception as exc:  # noqa: BLE001 - a damaged cache only means "index again"
        warnings.warn(f"ignoring unreadable tar index cache {path}: {exc}", stacklevel=3)
        return None


def _write_tar_cache(path: Path, index: FileIndex) -> None:
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(tmp, classes=np.array(index.classes), paths=index.paths, labels=index.labels,
                 offsets=index.offsets, sizes=index.sizes)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        warnings.warn(f"could not write tar index cache {path}: {exc}", stacklevel=3)
