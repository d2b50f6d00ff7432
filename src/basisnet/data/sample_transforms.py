"""Per-image transforms of the streaming path, run in DataLoader workers on Pillow images.

Each takes an encoded image (:mod:`basisnet.data.decode`: header read, pixels not yet) and a
``random.Random`` seeded for that image and epoch, and returns an RGB image of the network's input size.
JPEGs are decoded at reduced DCT scale whenever the crop still keeps at least its output resolution.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Protocol

from PIL import Image

from .decode import EncodedImage

__all__ = ["CenterCrop", "RandomResizedCrop", "SampleTransform", "rrc_box"]

Box = tuple[float, float, float, float]  # left, top, width, height in source pixels


class SampleTransform(Protocol):
    def __call__(self, img: EncodedImage, rng: random.Random) -> Image.Image: ...


def rrc_box(width: int, height: int, scale: tuple[float, float], ratio: tuple[float, float],
            rng: random.Random) -> Box:
    """RandomResizedCrop's box: area ``scale`` of the image, aspect ``ratio`` drawn log-uniformly, ten
    tries, then the central crop with the aspect clamped into ``ratio`` (the Inception recipe)."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, width - w), rng.randint(0, height - h), w, h
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif aspect > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def _crop_resize(img: EncodedImage, box: Box, size: int) -> Image.Image:
    """``box`` of the source resized to ``size`` x ``size`` in one resampling pass, decoded at the smallest
    DCT scale that still leaves the box at least ``size`` pixels on its shorter side."""
    width, height = img.size
    left, top, w, h = box
    rgb = img.decode(reduce=min(w, h) / size)
    sx, sy = rgb.size[0] / width, rgb.size[1] / height
    return rgb.resize((size, size), Image.Resampling.BILINEAR,
                      box=(left * sx, top * sy, (left + w) * sx, (top + h) * sy))


class RandomResizedCrop:
    """Training: random box (``rrc_box``) resized to ``size``, horizontal flip, then an optional policy
    (RandAugment, TrivialAugment: :mod:`basisnet.data.autoaugment`)."""

    def __init__(self, size: int, scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), flip: bool = True,
                 policy: Callable[[Image.Image, random.Random], Image.Image] | None = None) -> None:
        if size < 1:
            raise ValueError(f"size must be positive, got {size}")
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {scale}")
        if not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < min <= max, got {ratio}")
        self.size, self.scale, self.ratio, self.flip, self.policy = size, tuple(scale), tuple(ratio), flip, policy

    def __call__(self, img: EncodedImage, rng: random.Random) -> Image.Image:
        out = _crop_resize(img, rrc_box(*img.size, self.scale, self.ratio, rng), self.size)
        if self.flip and rng.random() < 0.5:
            out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return self.policy(out, rng) if self.policy is not None else out

    def __repr__(self) -> str:
        return (f"RandomResizedCrop(size={self.size}, scale={self.scale}, ratio={self.ratio}, flip={self.flip}, "
                f"policy={self.policy!r})")


class CenterCrop:
    """Evaluation (and the base of pad-crop training): shorter side to ``size / crop_pct``, then the central
    ``size`` square; ``crop_pct`` 0.875 is ImageNet's 256 -> 224, 1.0 keeps the whole shorter side."""

    def __init__(self, size: int, crop_pct: float = 1.0) -> None:
        if size < 1 or not 0 < crop_pct <= 1:
            raise ValueError(f"need size >= 1 and 0 < crop_pct <= 1, got size={size} crop_pct={crop_pct}")
        self.size, self.crop_pct = size, crop_pct

    def __call__(self, img: EncodedImage, rng: random.Random | None = None) -> Image.Image:
        width, height = img.size
        if (width, height) == (self.size, self.size):
            return img.decode()
        side = min(width, height) * self.crop_pct
        return _crop_resize(img, ((width - side) / 2, (height - side) / 2, side, side), self.size)

    def __repr__(self) -> str:
        return f"CenterCrop(size={self.size}, crop_pct={self.crop_pct})"
