"""Per-sample augmentation policies (RandAugment, TrivialAugmentWide) on PIL images.

Why a separate, PIL-based module: the batch transforms in :mod:`basisnet.data.transforms` are
cheap tensor gathers, but search-free policies such as RandAugment (Cubuk et al., 2020) and
TrivialAugment (Müller & Hutter, 2021) need photometric and geometric ops that are simplest and
best-tested in Pillow.  Everything here is written from the published algorithms with Pillow and
the standard library only.

Determinism: every random choice comes from the ``random.Random`` handed to the policy, never from
global state, so a caller that seeds one generator per sample gets the same images whatever the
number of DataLoader workers.

Magnitudes follow torchvision's conventions so that published hyper-parameters carry over: a
policy's magnitude is a *bin index* into a per-op range of ``num_magnitude_bins`` evenly spaced
values, and signed ops (shear, translate, rotate, enhance) flip their sign with probability 0.5.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from typing import Protocol

from PIL import Image, ImageEnhance, ImageOps

__all__ = [
    "AUGMENT_OPS",
    "AUGMENT_POLICIES",
    "FILL",
    "AugmentOp",
    "AugmentPolicy",
    "RandAugment",
    "TrivialAugmentWide",
    "create_policy",
]

FILL: tuple[int, int, int] = (128, 128, 128)
"""Constant grey for pixels that geometric ops move in from outside the image."""

_RESAMPLE = Image.Resampling.NEAREST  # torchvision's default for these policies, and 3-4x faster than bilinear

AugmentOp = Callable[[Image.Image, float, random.Random], Image.Image]
"""``op(img, magnitude, rng) -> img``; magnitude is in the op's own unit (factor, px, degrees, bits, level)."""


class AugmentPolicy(Protocol):
    """A per-sample policy: ``policy(img, rng) -> img`` with all randomness drawn from ``rng``."""

    def __call__(self, img: Image.Image, rng: random.Random) -> Image.Image: ...


# ----------------------------------------------------------------------------- ops


def _signed(magnitude: float, rng: random.Random) -> float:
    """Flip the sign with probability 0.5 so one magnitude range covers both directions."""
    return -magnitude if rng.random() < 0.5 else magnitude


def _affine(img: Image.Image, coeffs: tuple[float, float, float, float, float, float]) -> Image.Image:
    """Inverse-mapped affine warp: output (x, y) samples input (a x + b y + c, d x + e y + f)."""
    return img.transform(img.size, Image.Transform.AFFINE, coeffs, resample=_RESAMPLE, fillcolor=FILL)


def _identity(img: Image.Image, magnitude: float, rng: random.Random) -> Image.Image:
    """No change; keeps the op count (and thus each op's probability) as in the papers."""
    return img.copy()


def _shear_x(img: Image.Image, magnitude: float, rng: random.Random) -> Image.Image:
    """Horizontal shear by factor ``magnitude`` about the image centre (centre stays put)."""
    m = _signed(magnitude, rng)
    if m == 0:
        return img.copy()
    cy = img.height / 2.0
    return _affine(img, (1.0, m, -m * cy, 0.0, 1.0, 0.0))


def _shear_y(img: Image.Image, magnitude: float, rng: random.Random) -> Image.Image:
    """Vertical shear by factor ``magnitude`` about the image centre."""
    m = _signed(magnitude, rng)
    if m == 0:
        return img.copy()
    cx = img.width / 2.0
    return _affine(img, (1.0, 0.0, 0.0, m, 1.0, -m * cx))


def _translate_x(img: Image.Image, magnitude: float, rng: random.Random) -> Image.Image:
    """Shift right (or left) by ``magnitude`` pixels, truncated to whole pixels as torchvision does."""
    t = float(int(_signed(magnitude, rng)))
    if t == 0:
        return img.copy()
    return _affine(img, (1.0, 0.0, -t, 0.0, 1.0, 0.0))


def _translate_y(img: Image.Image, magnitude: float, rng: random.Random) -> Image.Image:
    """Shift down (or up) by ``magnitude`` pixels (whole pixels)."""
    t = float(int(_signed(magnitude, rng)))
    if t == 0:
        return img.copy()
    return _affine(img, (1.0, 0.0, 0.0, 0.0, 1.0, -t))


def _rotate(img: Image.Image, magnitude: float, rng: random.Random) -> Image.Image:
    """Rotate by ``magnitude`` degrees about the centre, keeping the canvas size."""
    angle = _signed(magnitude, rng)
    if angle == 0:
        return img.copy()
    return img.rotate(angle, resample=_RESAMPLE, fillcolor=FILL)


def _enhancer(kind: type[ImageEnhance._Enhance]) -> AugmentOp:
    """Build an op that applies ``kind`` with factor ``1 +/- magnitude`` (1 is the identity)."""

    def op(img: Image.Image, magnitude: float, rng: random.Random) -> Image.Image:
        factor = 1.0 + _signed(magnitude, rng)
        if factor == 1.0:
            return img.copy()
        return kind(img).enhance(factor)  # type: ignore[call-arg]

    op.__name__ = f"_{kind.__name__.lower()}"
    op.__doc__ = f"{kind.__name__} enhancement with factor 1 +/- magnitude."
    return op


def _posterize(img: Image.Image, magnitude: float, rng: random.Random) -> Image.Image:
    """Keep the top ``int(magnitude)`` bits (1..8) of each channel."""
    bits = int(magnitude)
    if not 1 <= bits <= 8:
        raise ValueError(f"posterize bits must be in [1, 8], got {magnitude}")
    return img.copy() if bits == 8 else ImageOps.posterize(img, bits)


def _solarize(img: Image.Image, magnitude: float, rng: random.Random) -> Image.Image:
    """Invert every channel value >= ``magnitude`` (0..255)."""
    return ImageOps.solarize(img, magnitude)  # type: ignore[arg-type]


def _autocontrast(img: Image.Image, magnitude: float, rng: random.Random) -> Image.Image:
    """Stretch each channel to the full 0..255 range; magnitude is ignored."""
    return ImageOps.autocontrast(img)


def _equalize(img: Image.Image, magnitude: float, rng: random.Random) -> Image.Image:
    """Histogram-equalize each channel; magnitude is ignored."""
    return ImageOps.equalize(img)


AUGMENT_OPS: Mapping[str, AugmentOp] = {
    "Identity": _identity,
    "ShearX": _shear_x,
    "ShearY": _shear_y,
    "TranslateX": _translate_x,
    "TranslateY": _translate_y,
    "Rotate": _rotate,
    "Brightness": _enhancer(ImageEnhance.Brightness),
    "Color": _enhancer(ImageEnhance.Color),
    "Contrast": _enhancer(ImageEnhance.Contrast),
    "Sharpness": _enhancer(ImageEnhance.Sharpness),
    "Posterize": _posterize,
    "Solarize": _solarize,
    "AutoContrast": _autocontrast,
    "Equalize": _equalize,
}
"""Op name -> op; the order is the order policies draw from, so it is part of determinism."""

_OP_NAMES: tuple[str, ...] = tuple(AUGMENT_OPS)


# ----------------------------------------------------------------------------- policies


def _check_int(name: str, value: object, low: int, high: int | None = None) -> int:
    """Reject bools, floats and out-of-range values with a message that names the argument."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be an int {bound}, got {value!r}")
    return value


class _BinnedPolicy:
    """Shared machinery: map (op, bin index, image size) to a magnitude and apply sampled ops.

    Subclasses set ``_max`` (op -> top of its linear range, or a callable of the image size),
    ``_posterize_min_bits`` and implement :meth:`sample`.
    """

    _max: Mapping[str, float | Callable[[tuple[int, int]], float]]
    _posterize_min_bits: int

    def __init__(self, num_magnitude_bins: int) -> None:
        self.num_magnitude_bins = _check_int("num_magnitude_bins", num_magnitude_bins, 2)
        self.ops: tuple[str, ...] = _OP_NAMES

    def magnitude_of(self, op: str, bin_index: int, image_size: tuple[int, int]) -> float:
        """Magnitude (in the op's unit) that ``op`` gets at ``bin_index`` for an image of ``(width, height)``.

        Ops without a magnitude (Identity, AutoContrast, Equalize) get 0.0.
        """
        if op not in AUGMENT_OPS:
            raise ValueError(f"op must be one of {', '.join(_OP_NAMES)}, got {op!r}")
        last = self.num_magnitude_bins - 1
        _check_int("bin_index", bin_index, 0, last)
        if op == "Posterize":
            # torchvision: 8 - round(b / (last / (8 - min_bits))), half-to-even like torch.round.
            return float(8 - round(bin_index / (last / (8 - self._posterize_min_bits))))
        if op == "Solarize":
            return 255.0 * (1.0 - bin_index / last)
        top = self._max.get(op)
        if top is None:
            return 0.0
        if callable(top):
            top = top(image_size)
        return top * bin_index / last

    def sample(self, rng: random.Random, image_size: tuple[int, int]) -> list[tuple[str, float]]:
        """Draw the ``(op name, magnitude)`` pairs to apply; all randomness comes from ``rng``."""
        raise NotImplementedError

    def __call__(self, img: Image.Image, rng: random.Random) -> Image.Image:
        """Augment one RGB image; returns a new RGB image of the same size."""
        if img.mode != "RGB":
            img = img.convert("RGB")
        for name, magnitude in self.sample(rng, img.size):
            img = AUGMENT_OPS[name](img, magnitude, rng)
        return img


class RandAugment(_BinnedPolicy):
    """RandAugment: ``num_ops`` ops drawn uniformly with replacement, all at one fixed magnitude.

    ``magnitude`` is a bin index in ``[0, num_magnitude_bins - 1]`` into per-op ranges matching
    torchvision: shear 0..0.3, translate 0..150/331 of the image side, rotate 0..30 degrees,
    enhance factor 1 +/- 0..0.9, posterize 8..4 bits, solarize threshold 255..0.
    """

    _max = {
        "ShearX": 0.3,
        "ShearY": 0.3,
        "TranslateX": lambda size: 150.0 / 331.0 * size[0],
        "TranslateY": lambda size: 150.0 / 331.0 * size[1],
        "Rotate": 30.0,
        "Brightness": 0.9,
        "Color": 0.9,
        "Contrast": 0.9,
        "Sharpness": 0.9,
    }
    _posterize_min_bits = 4

    def __init__(self, num_ops: int = 2, magnitude: int = 9, num_magnitude_bins: int = 31) -> None:
        super().__init__(num_magnitude_bins)
        self.num_ops = _check_int("num_ops", num_ops, 0)
        self.magnitude = _check_int("magnitude", magnitude, 0, self.num_magnitude_bins - 1)

    def sample(self, rng: random.Random, image_size: tuple[int, int]) -> list[tuple[str, float]]:
        names = [self.ops[rng.randrange(len(self.ops))] for _ in range(self.num_ops)]
        return [(name, self.magnitude_of(name, self.magnitude, image_size)) for name in names]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_ops={self.num_ops}, magnitude={self.magnitude}, "
            f"num_magnitude_bins={self.num_magnitude_bins})"
        )


class TrivialAugmentWide(_BinnedPolicy):
    """TrivialAugment (wide ranges): one uniformly drawn op at a uniformly drawn magnitude bin.

    Ranges: shear 0..0.99, translate 0..32 px, rotate 0..135 degrees, enhance factor
    1 +/- 0..0.99, posterize 8..2 bits, solarize threshold 255..0.  No tuning knobs by design.
    """

    _max = {
        "ShearX": 0.99,
        "ShearY": 0.99,
        "TranslateX": 32.0,
        "TranslateY": 32.0,
        "Rotate": 135.0,
        "Brightness": 0.99,
        "Color": 0.99,
        "Contrast": 0.99,
        "Sharpness": 0.99,
    }
    _posterize_min_bits = 2

    def __init__(self, num_magnitude_bins: int = 31) -> None:
        super().__init__(num_magnitude_bins)

    def sample(self, rng: random.Random, image_size: tuple[int, int]) -> list[tuple[str, float]]:
        name = self.ops[rng.randrange(len(self.ops))]
        bin_index = rng.randrange(self.num_magnitude_bins)
        return [(name, self.magnitude_of(name, bin_index, image_size))]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_magnitude_bins={self.num_magnitude_bins})"


# ----------------------------------------------------------------------------- registry


def _no_policy(**kwargs: object) -> None:
    """The "none" entry: no per-sample augmentation, so callers can skip the PIL round trip."""
    if kwargs:
        raise ValueError(f"augmentation policy 'none' takes no arguments, got {sorted(kwargs)}")
    return None


AUGMENT_POLICIES: dict[str, Callable[..., AugmentPolicy | None]] = {
    "none": _no_policy,
    "randaugment": RandAugment,
    "trivialaugment": TrivialAugmentWide,
}
"""Policy name (as used in configs and on the command line) -> factory."""


def create_policy(name: str, **kwargs: object) -> AugmentPolicy | None:
    """Build the policy registered as ``name`` (case-insensitive); ``"none"`` gives None."""
    key = name.strip().lower() if isinstance(name, str) else name
    factory = AUGMENT_POLICIES.get(key)  # type: ignore[arg-type]
    if factory is None:
        raise ValueError(f"unknown augmentation policy {name!r}; valid names: {', '.join(AUGMENT_POLICIES)}")
    return factory(**kwargs)
