"""Encoded images and the decoders that open them: Pillow always, simplejpeg when installed (faster JPEGs).

A transform first sees only the header (its size), picks its crop, then asks for pixels at the smallest
DCT scale that keeps the crop at its output resolution (1/2, 1/4 or 1/8 of the pixels to decode when the
file is that much larger than the network input).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from typing import Protocol

import numpy as np
from PIL import Image, UnidentifiedImageError


__all__ = ["DECODERS", "EncodedImage", "UnreadableImageError", "available_decoders", "open_image", "resolve_decoder",
           "to_rgb"]


class UnreadableImageError(ValueError):
    """The bytes are not an image the decoder can read (corrupt, truncated, unknown format).

    Only this counts as bad data: an error anywhere else (a transform, a missing package) stays itself."""


class EncodedImage(Protocol):
    """An image whose header is read and whose pixels are not decoded yet."""

    size: tuple[int, int]  # width, height at full scale

    def decode(self, reduce: float = 1.0) -> Image.Image:
        """RGB pixels, downscaled by a power of two no larger than ``reduce`` where the format allows."""
        ...


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB view of any Pillow mode; 16/32-bit grey is scaled 0..65535 -> 0..255, not clipped; alpha is
    dropped as torchvision's loader does."""
    if img.mode == "RGB":
        return img
    if img.mode == "I" or img.mode.startswith("I;16"):
        wide = np.clip(np.asarray(img).astype(np.int64), 0, 65535)
        return Image.fromarray(((wide + 128) // 257).astype(np.uint8)).convert("RGB")
    if img.mode == "F":
        raise ValueError("floating-point images (mode F) have no defined 8-bit range")
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA")  # applies palette transparency the way Pillow recommends
    return img.convert("RGB")


def _scale(reduce: float) -> int:
    """The largest JPEG DCT scale (1, 2, 4 or 8) not above ``reduce``."""
    return next(k for k in (8, 4, 2, 1) if k <= max(reduce, 1.0))


class PillowImage:
    """Any format Pillow reads; JPEGs downscale in the DCT domain through ``Image.draft``."""

    def __init__(self, data: bytes) -> None:
        self.image = Image.open(io.BytesIO(data))  # reads the header only
        self.size = self.image.size

    def decode(self, reduce: float = 1.0) -> Image.Image:
        width, height, k = *self.size, _scale(reduce)
        if self.image.format == "JPEG" and k > 1:  # Pillow picks the scale from integer ratios: ask for w // k
            self.image.draft("RGB", (max(1, width // k), max(1, height // k)))
        rgb = to_rgb(self.image)
        rgb.load()
        return rgb


class SimpleJpegImage:
    """JPEGs through simplejpeg (libjpeg-turbo without Pillow's per-image overhead); other files through Pillow."""

    def __init__(self, data: bytes) -> None:
        import simplejpeg

        self._decode = simplejpeg.decode_jpeg
        self.data = data
        height, width, _, _ = simplejpeg.decode_jpeg_header(data)
        self.size = (width, height)

    def decode(self, reduce: float = 1.0) -> Image.Image:
        width, height, k = *self.size, _scale(reduce)
        if k > 1:  # the smallest libjpeg-turbo scale that is at least 1/k: exactly 1/k
            pixels = self._decode(self.data, colorspace="RGB", min_height=math.ceil(height / k),
                                  min_width=math.ceil(width / k), strict=False)
        else:  # strict=False: a truncated file decodes with its missing rows filled, as Pillow does
            pixels = self._decode(self.data, colorspace="RGB", strict=False)
        return Image.fromarray(np.ascontiguousarray(pixels))


def _simplejpeg(data: bytes) -> EncodedImage:
    return SimpleJpegImage(data) if data[:2] == b"\xff\xd8" else PillowImage(data)


DECODERS: dict[str, Callable[[bytes], EncodedImage]] = {"pillow": PillowImage, "simplejpeg": _simplejpeg}


class _Checked:
    """An encoded image whose header and pixel errors surface as :class:`UnreadableImageError`."""

    def __init__(self, image: EncodedImage) -> None:
        self.image, self.size = image, image.size

    def decode(self, reduce: float = 1.0) -> Image.Image:
        try:
            return self.image.decode(reduce)
        except Exception as exc:  # noqa: BLE001 - decoders raise OSError, SyntaxError, ValueError, ... for bad data
            raise UnreadableImageError(f"{type(exc).__name__}: {exc}") from exc


def open_image(data: bytes, decoder: str) -> EncodedImage:
    """Read the header of ``data`` with ``decoder`` (a key of :data:`DECODERS`)."""
    try:
        image = DECODERS[decoder](data)
    except UnidentifiedImageError as exc:  # its message names an in-memory buffer, not the file: say what it means
        raise UnreadableImageError("not an image file (no format Pillow reads)") from exc
    except Exception as exc:  # noqa: BLE001 - as above
        raise UnreadableImageError(f"{type(exc).__name__}: {exc}") from exc
    return _Checked(image)


def available_decoders() -> list[str]:
    """The decoders usable here (simplejpeg is the optional extra ``basisnet[fast-jpeg]``)."""
    try:
        import simplejpeg  # noqa: F401  (only whether it imports)
    except ImportError:
        return ["pillow"]
    return ["pillow", "simplejpeg"]


def resolve_decoder(name: str) -> str:
    """``auto``: simplejpeg when installed, else Pillow; a named decoder must be installed."""
    available = available_decoders()
    if name == "auto":
        return available[-1]
    if name not in DECODERS:
        raise ValueError(f"unknown JPEG decoder {name!r}; choose from auto, {', '.join(DECODERS)}")
    if name not in available:
        raise ValueError(f"decoder {name!r} is not installed: pip install 'basisnet[fast-jpeg]'")
    return name
