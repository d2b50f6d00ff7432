"""The one in-memory dataset type every reader in :mod:`basisnet.data` produces."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset


class ImageTensorDataset(Dataset[tuple[Tensor, int]]):
    """Decoded images held as one uint8 tensor.

    Keeping the whole set as ``images[N, 3, H, W]`` lets :class:`~basisnet.data.loader.BatchLoader`
    build a batch with a single index operation instead of collating N small tensors.
    """

    def __init__(self, images: Tensor, targets: Tensor, classes: Sequence[str]) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(
                f"images must be a uint8 tensor [N, 3, H, W], got {images.dtype} {tuple(images.shape)}"
            )
        if targets.dim() != 1 or targets.dtype.is_floating_point or targets.dtype == torch.bool:
            raise ValueError(f"targets must be a 1-D integer tensor, got {targets.dtype} {tuple(targets.shape)}")
        if len(targets) != len(images):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        if not classes:
            raise ValueError("classes must name at least one class")
        targets = targets.to(torch.int64)
        if len(targets) and (int(targets.min()) < 0 or int(targets.max()) >= len(classes)):
            raise ValueError(
                f"targets must lie in [0, {len(classes)}) for {len(classes)} classes, "
                f"got [{int(targets.min())}, {int(targets.max())}]"
            )
        self.images = images
        self.targets = targets
        self.classes = list(classes)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.images[index], int(self.targets[index])

    def subset(self, indices: Tensor | Sequence[int]) -> ImageTensorDataset:
        """A copy holding only ``indices``, still in-memory (unlike ``torch.utils.data.Subset``)."""
        index = torch.as_tensor(indices, dtype=torch.int64)
        return ImageTensorDataset(self.images[index], self.targets[index], self.classes)

    def __repr__(self) -> str:
        _, c, h, w = self.images.shape
        return f"ImageTensorDataset({len(self)} images {c}x{h}x{w}, {len(self.classes)} classes)"
