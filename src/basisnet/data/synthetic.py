"""SHAPES: the embedded demo data set, generated procedurally so the demo needs no download.

Ten classes of coloured shapes and textures. Every image draws a difficulty ``d`` uniformly
from [0, 1]: at ``d = 0`` the shape is large, high-contrast and clean; towards ``d = 1`` it
shrinks, fades into its background, drowns in noise and picks up clutter strokes and an
occluding patch. A cheap model solves the easy end and a bigger one is needed for the hard
end, which is the trade-off early exit and BasisNet's two-stage synthesis exploit.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .dataset import ImageTensorDataset

SHAPE_CLASSES = (
    "circle",
    "square",
    "triangle",
    "cross",
    "ring",
    "horizontal_stripes",
    "vertical_stripes",
    "diagonal_stripes",
    "checkerboard",
    "dots",
)
_CHUNK = 1024  # images rendered at once: bounds the [chunk, strokes, H, W] temporaries
_STROKES = 4  # clutter line segments drawn (with probability rising with difficulty) per image

_A = np.ndarray
# mask(u, v, freq, phase_a, phase_b): u, v are shape coordinates in radius units
_Mask = Callable[[_A, _A, _A, _A, _A], _A]


def make_shapes(
    num_train: int = 10_000, num_test: int = 2_000, image_size: int = 32, seed: int = 0
) -> tuple[ImageTensorDataset, ImageTensorDataset]:
    """Train and test sets of SHAPES, fully determined by ``seed`` (independent streams per split).

    Classes are balanced (counts differ by at most one) and shuffled. The defaults take about two
    seconds on one CPU core.
    """
    if num_train < 1 or num_test < 1:
        raise ValueError(f"num_train and num_test must be positive, got {num_train} and {num_test}")
    if image_size < 8:
        raise ValueError(f"image_size must be at least 8 pixels, got {image_size}")
    train_seq, test_seq = np.random.SeedSequence(seed).spawn(2)
    return (
        _render_split(num_train, image_size, np.random.default_rng(train_seq)),
        _render_split(num_test, image_size, np.random.default_rng(test_seq)),
    )


def _render_split(n: int, size: int, rng: np.random.Generator) -> ImageTensorDataset:
    labels = rng.permutation(np.arange(n) % len(SHAPE_CLASSES))
    d = rng.random(n)
    # Per-image parameters, all drawn up front so the result does not depend on chunking.
    radius = size * (0.40 - 0.22 * d) * rng.uniform(0.85, 1.15, n)
    params = {
        "radius": radius,
        "cx": rng.uniform(0.8 * radius, size - 0.8 * radius),
        "cy": rng.uniform(0.8 * radius, size - 0.8 * radius),
        "angle": rng.uniform(-np.pi / 12, np.pi / 12, n),
        "freq": radius / rng.uniform(3.5, 5.5, n),  # pattern cycles per radius: ~4.5 px period at any scale
        "phase": rng.random((n, 2)),
        "bg": rng.uniform(0.1, 0.9, (n, 3)),
        "gradient": rng.normal(0.0, 1.0, (n, 2)) * (0.04 + 0.12 * d)[:, None],
        "contrast": 0.75 - 0.5 * d,
        "direction": rng.uniform(0.3, 1.0, (n, 3)) * np.where(rng.random((n, 3)) < 0.8, 1.0, -1.0),
        "noise": 0.03 + 0.10 * d,
        "strokes": rng.uniform(0, size, (n, _STROKES, 4)),
        "stroke_on": rng.random((n, _STROKES)) < np.clip(1.2 * (d - 0.4), 0.0, 1.0)[:, None],
        "stroke_like_fg": rng.random((n, _STROKES)) < 0.5,
        "stroke_colour": rng.uniform(0, 1, (n, _STROKES, 3)),
        "occluder": rng.uniform(0, 1, (n, 4)),
        "occluder_on": rng.random(n) < np.clip(d - 0.55, 0.0, 1.0),
    }
    images = np.empty((n, 3, size, size), dtype=np.uint8)
    for start in range(0, n, _CHUNK):
        part = slice(start, min(n, start + _CHUNK))
        # float32 halves the cost of the [chunk, H, W] arithmetic; float64 precision buys nothing here
        chunk = {k: v[part].astype(np.float32) if v.dtype == np.float64 else v[part] for k, v in params.items()}
        images[part] = _render(labels[part], chunk, size, rng)
    return ImageTensorDataset(torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64)), SHAPE_CLASSES)


def _render(labels: np.ndarray, p: dict[str, np.ndarray], size: int, rng: np.random.Generator) -> np.ndarray:
    """``[m, 3, size, size]`` uint8 images for one chunk of per-image parameters."""
    m = len(labels)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    # Shape coordinates: centred, rotated, in units of the radius.
    dx, dy = xs - p["cx"][:, None, None], ys - p["cy"][:, None, None]
    cos, sin = np.cos(p["angle"])[:, None, None], np.sin(p["angle"])[:, None, None]
    r = p["radius"][:, None, None]
    u, v = (cos * dx + sin * dy) / r, (-sin * dx + cos * dy) / r

    shape = np.zeros((m, size, size), dtype=bool)
    freq, phase_a, phase_b = p["freq"][:, None, None], p["phase"][:, 0, None, None], p["phase"][:, 1, None, None]
    for k, mask_fn in enumerate(_MASKS):
        idx = np.flatnonzero(labels == k)
        if len(idx):
            shape[idx] = mask_fn(u[idx], v[idx], freq[idx], phase_a[idx], phase_b[idx])

    # Background: flat colour plus a linear gradient; foreground: shifted away from it by `contrast`.
    bg = p["bg"][:, :, None, None] + (
        p["gradient"][:, 0, None, None] * (xs / size - 0.5) + p["gradient"][:, 1, None, None] * (ys / size - 0.5)
    )[:, None]
    towards_far_side = np.where(p["bg"] < 0.5, 1.0, -1.0) * p["direction"]
    step = towards_far_side / np.abs(towards_far_side).max(axis=1, keepdims=True)
    fg = np.clip(p["bg"] + p["contrast"][:, None] * step, 0.0, 1.0)
    img = np.where(shape[:, None], fg[:, :, None, None], bg)

    # Clutter: line segments, half of them in the foreground colour so they can mislead.
    ax, ay, bx, by = (p["strokes"][..., i, None, None] for i in range(4))
    ex, ey = bx - ax, by - ay
    t = np.clip(((xs - ax) * ex + (ys - ay) * ey) / (ex * ex + ey * ey + 1e-6), 0.0, 1.0)
    near = np.hypot(xs - ax - t * ex, ys - ay - t * ey) < 0.75
    colour = np.where(p["stroke_like_fg"][..., None], fg[:, None], p["stroke_colour"])
    for s in range(_STROKES):
        on = (near[:, s] & p["stroke_on"][:, s, None, None])[:, None]
        img = np.where(on, colour[:, s, :, None, None], img)

    # Occlusion: a background-coloured patch about the size of the shape's radius.
    ox, oy, ow, oh = (p["occluder"][:, i, None, None] for i in range(4))
    width, height = (0.5 + 0.7 * ow) * r, (0.5 + 0.7 * oh) * r
    cx = p["cx"][:, None, None] + (ox - 0.5) * 2 * r
    cy = p["cy"][:, None, None] + (oy - 0.5) * 2 * r
    occluded = (np.abs(xs - cx) < width / 2) & (np.abs(ys - cy) < height / 2) & p["occluder_on"][:, None, None]
    img = np.where(occluded[:, None], bg, img)

    img = img + rng.standard_normal(img.shape, dtype=np.float32) * p["noise"][:, None, None, None]
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


def _circle(u: _A, v: _A, f: _A, a: _A, b: _A) -> _A:
    return u * u + v * v <= 1.0


def _square(u: _A, v: _A, f: _A, a: _A, b: _A) -> _A:
    return np.maximum(np.abs(u), np.abs(v)) <= 0.85


def _triangle(u: _A, v: _A, f: _A, a: _A, b: _A) -> _A:
    return (v <= 0.8) & (np.abs(u) * 1.8 <= v + 1.0)


def _cross(u: _A, v: _A, f: _A, a: _A, b: _A) -> _A:
    return ((np.abs(u) <= 0.3) & (np.abs(v) <= 1.0)) | ((np.abs(v) <= 0.3) & (np.abs(u) <= 1.0))


def _ring(u: _A, v: _A, f: _A, a: _A, b: _A) -> _A:
    r2 = u * u + v * v
    return (r2 <= 1.0) & (r2 >= 0.55**2)


def _patch(u: _A, v: _A) -> _A:
    """Textures fill the same square patch, so only the pattern inside tells them apart."""
    return np.maximum(np.abs(u), np.abs(v)) <= 1.0


def _h_stripes(u: _A, v: _A, f: _A, a: _A, b: _A) -> _A:
    return _patch(u, v) & (np.sin(2 * np.pi * (f * v + a)) > 0)


def _v_stripes(u: _A, v: _A, f: _A, a: _A, b: _A) -> _A:
    return _patch(u, v) & (np.sin(2 * np.pi * (f * u + a)) > 0)


def _d_stripes(u: _A, v: _A, f: _A, a: _A, b: _A) -> _A:
    return _patch(u, v) & (np.sin(2 * np.pi * (f * (u + v) / np.sqrt(2) + a)) > 0)


def _checkerboard(u: _A, v: _A, f: _A, a: _A, b: _A) -> _A:
    return _patch(u, v) & (np.sin(2 * np.pi * (0.8 * f * u + a)) * np.sin(2 * np.pi * (0.8 * f * v + b)) > 0)


def _dots(u: _A, v: _A, f: _A, a: _A, b: _A) -> _A:
    gu, gv = np.mod(f * u + a, 1.0) - 0.5, np.mod(f * v + b, 1.0) - 0.5
    return _patch(u, v) & (gu * gu + gv * gv < 0.3**2)


_MASKS: tuple[_Mask, ...] = (
    _circle,
    _square,
    _triangle,
    _cross,
    _ring,
    _h_stripes,
    _v_stripes,
    _d_stripes,
    _checkerboard,
    _dots,
)
