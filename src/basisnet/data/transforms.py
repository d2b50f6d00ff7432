"""Batch-level transforms on uint8 ``[B, 3, H, W]`` tensors: no per-sample PIL work in the loop."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

PADDING_MODES = ("zeros", "reflect")


class _Normalize:
    """uint8 -> float32 ``(x / 255 - mean) / std`` as one fused multiply-subtract."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std need 3 values each with std > 0, got mean={mean} std={std}")
        self.mean, self.std = tuple(mean), tuple(std)
        self._scale = torch.tensor([1.0 / (255.0 * s) for s in std]).view(3, 1, 1)
        self._shift = torch.tensor([m / s for m, s in zip(mean, std)]).view(3, 1, 1)

    def _normalize(self, images: Tensor) -> Tensor:
        if self._scale.device != images.device:  # moved once, not copied to the device every batch
            self._scale, self._shift = self._scale.to(images.device), self._shift.to(images.device)
        return images.float().mul_(self._scale).sub_(self._shift)


def _to_device(t: Tensor, device: torch.device) -> Tensor:
    """CPU-drawn augmentation parameters to the batch's device; to a GPU through pinned memory, so the
    copy does not make the host wait for the work already queued."""
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def _check_batch(images: Tensor) -> None:
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected a uint8 batch [B, 3, H, W], got {images.dtype} {tuple(images.shape)}")


class TrainAugment(_Normalize):
    """Random crop from a padded image, random horizontal flip, then normalize; all in one gather.

    Padding, crop and flip are folded into a per-sample index map, so the padded batch is never
    materialised. ``padding_mode`` is ``"zeros"`` (black border, the usual CIFAR recipe) or
    ``"reflect"`` (needs ``padding`` smaller than the image). An image smaller than ``crop_size``
    after padding raises ``ValueError`` rather than being silently upscaled.
    """

    def __init__(
        self,
        crop_size: int,
        padding: int = 4,
        flip: bool = True,
        mean: Sequence[float] = CIFAR10_MEAN,
        std: Sequence[float] = CIFAR10_STD,
        padding_mode: str = "zeros",
    ) -> None:
        super().__init__(mean, std)
        if crop_size < 1 or padding < 0:
            raise ValueError(f"need crop_size >= 1 and padding >= 0, got crop_size={crop_size} padding={padding}")
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
        self.crop_size, self.padding, self.flip, self.padding_mode = crop_size, padding, flip, padding_mode

    def __call__(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Augmented float32 ``[B, 3, crop, crop]``; a CPU ``generator`` makes it reproducible."""
        _check_batch(images)
        b, c, h, w = images.shape
        pad, crop = self.padding, self.crop_size
        if min(h, w) + 2 * pad < crop:
            raise ValueError(f"images of {h}x{w} padded by {pad} are smaller than crop_size {crop}")
        if self.padding_mode == "reflect" and pad >= min(h, w):
            raise ValueError(f"reflect padding {pad} must be smaller than the image side {min(h, w)}")
        top = torch.randint(0, h + 2 * pad - crop + 1, (b, 1), generator=generator)
        left = torch.randint(0, w + 2 * pad - crop + 1, (b, 1), generator=generator)
        step = torch.arange(crop)
        rows = top - pad + step  # [B, crop] source rows; out-of-range ones are padding
        cols = left - pad + step
        if self.flip:
            flipped = torch.rand(b, 1, generator=generator) < 0.5
            cols = torch.where(flipped, cols.flip(1), cols)
        rows, row_ok = self._source_index(rows, h)
        cols, col_ok = self._source_index(cols, w)
        index = _to_device((rows[:, :, None] * w + cols[:, None, :]).view(b, 1, crop * crop), images.device)
        out = images.reshape(b, c, h * w).gather(2, index.expand(b, c, -1)).view(b, c, crop, crop)
        if self.padding_mode == "zeros" and pad:
            inside = _to_device(row_ok[:, :, None] & col_ok[:, None, :], images.device)
            out = out * inside[:, None]
        return self._normalize(out)

    def _source_index(self, index: Tensor, size: int) -> tuple[Tensor, Tensor]:
        """Map padded coordinates into ``[0, size)``; the mask marks those that were inside."""
        inside = (index >= 0) & (index < size)
        if self.padding_mode == "reflect":
            index = index.abs()
            index = torch.where(index >= size, 2 * (size - 1) - index, index)
        return index.clamp(0, size - 1), inside

    def __repr__(self) -> str:
        return (
            f"TrainAugment(crop_size={self.crop_size}, padding={self.padding}, flip={self.flip}, "
            f"padding_mode={self.padding_mode!r}, mean={self.mean}, std={self.std})"
        )


class Normalize(_Normalize):
    """Only normalise: the train transform of the streaming path, whose workers augment already.

    Takes (and ignores) the ``generator`` a train transform is called with."""

    def __call__(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        _check_batch(images)
        return self._normalize(images)

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean}, std={self.std})"


class EvalTransform(_Normalize):
    """Normalize, and if ``size`` is given resize the shorter side to it and center-crop a square."""

    def __init__(
        self, mean: Sequence[float] = CIFAR10_MEAN, std: Sequence[float] = CIFAR10_STD, size: int | None = None
    ) -> None:
        super().__init__(mean, std)
        if size is not None and size < 1:
            raise ValueError(f"size must be a positive int or None, got {size}")
        self.size = size

    def __call__(self, images: Tensor) -> Tensor:
        """Float32 ``[B, 3, size, size]`` (or the input size when ``size`` is None)."""
        _check_batch(images)
        x = self._normalize(images)
        h, w = x.shape[-2:]
        if self.size is None or (h, w) == (self.size, self.size):
            return x
        scale = self.size / min(h, w)
        new_h, new_w = max(self.size, round(h * scale)), max(self.size, round(w * scale))
        x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True)
        top, left = (new_h - self.size) // 2, (new_w - self.size) // 2
        return x[:, :, top : top + self.size, left : left + self.size]

    def __repr__(self) -> str:
        return f"EvalTransform(mean={self.mean}, std={self.std}, size={self.size})"


def channel_stats(images: Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of a uint8 ``[N, 3, H, W]`` set in [0, 1] units, for data sets
    without published constants (custom folders, SHAPES). Chunked so no float copy of the set is made."""
    _check_batch(images)
    total = torch.zeros(3, dtype=torch.float64)
    squares = torch.zeros(3, dtype=torch.float64)
    for start in range(0, len(images), chunk):
        part = images[start : start + chunk].double()
        total += part.sum(dim=(0, 2, 3))
        squares += part.square().sum(dim=(0, 2, 3))
    count = images.numel() / 3
    if count == 0:
        raise ValueError("channel_stats needs at least one image")
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt()
    return tuple((mean / 255).tolist()), tuple((std / 255).tolist())
