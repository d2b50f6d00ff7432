"""Tests for basisnet.data.autoaugment: op contracts, determinism, magnitudes, validation, registry."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from PIL import Image

from basisnet.data.autoaugment import (
    AUGMENT_OPS,
    AUGMENT_POLICIES,
    RandAugment,
    TrivialAugmentWide,
    create_policy,
)

GEOMETRIC = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")


def _image(seed: int, size: tuple[int, int] = (24, 16)) -> Image.Image:
    gen = random.Random(seed)
    data = bytes(gen.randrange(256) for _ in range(size[0] * size[1] * 3))
    return Image.frombytes("RGB", size, data)


def _op_magnitude(name: str) -> float:
    return {"Posterize": 3.0, "Solarize": 100.0, "TranslateX": 5.5, "TranslateY": 3.0, "Rotate": 20.0}.get(name, 0.4)


@pytest.mark.parametrize("name", list(AUGMENT_OPS))
def test_op_keeps_mode_and_size(name: str) -> None:
    img = _image(0)
    out = AUGMENT_OPS[name](img, _op_magnitude(name), random.Random(1))
    assert out.mode == "RGB" and out.size == img.size
    assert img.tobytes() == _image(0).tobytes()  # input untouched


@pytest.mark.parametrize("name", GEOMETRIC)
def test_geometric_ops_at_zero_are_identity(name: str) -> None:
    img = _image(1)
    for seed in range(4):  # both signs of zero
        assert AUGMENT_OPS[name](img, 0.0, random.Random(seed)).tobytes() == img.tobytes()


@pytest.mark.parametrize("name", GEOMETRIC)
def test_randaugment_magnitude_zero_geometric_is_identity(name: str) -> None:
    img = _image(2)
    policy = RandAugment(magnitude=0)
    magnitude = policy.magnitude_of(name, policy.magnitude, img.size)
    assert magnitude == 0.0
    assert AUGMENT_OPS[name](img, magnitude, random.Random(0)).tobytes() == img.tobytes()


def _low_contrast(seed: int, size: tuple[int, int] = (24, 16)) -> Image.Image:
    """Random pixels in 60..180: not yet stretched (AutoContrast) nor flat in histogram (Equalize)."""
    gen = random.Random(seed)
    return Image.frombytes("RGB", size, bytes(60 + gen.randrange(121) for _ in range(size[0] * size[1] * 3)))


@pytest.mark.parametrize("name", [n for n in AUGMENT_OPS if n != "Identity"])
def test_every_op_at_a_nonzero_magnitude_changes_the_image(name: str) -> None:
    """Each op does something, in both directions of a signed op (seeds 0..3 draw both signs)."""
    img = _low_contrast(0)
    for seed in range(4):
        out = AUGMENT_OPS[name](img, _op_magnitude(name), random.Random(seed))
        assert out.tobytes() != img.tobytes(), (name, seed)


def test_identity_returns_the_image_unchanged_as_a_copy() -> None:
    img = _low_contrast(1)
    out = AUGMENT_OPS["Identity"](img, 0.4, random.Random(0))
    assert out.tobytes() == img.tobytes() and out is not img


def test_pixel_ops_compute_their_formula() -> None:
    """Posterize keeps the top bits, Solarize inverts at and above the threshold, TranslateX shifts by whole
    pixels and fills grey, Brightness scales (to within PIL's rounding)."""
    img = _low_contrast(2)
    raw = img.tobytes()
    assert AUGMENT_OPS["Posterize"](img, 3.0, random.Random(0)).tobytes() == bytes(v & 0b11100000 for v in raw)
    assert AUGMENT_OPS["Solarize"](img, 100.0, random.Random(0)).tobytes() == bytes(
        255 - v if v >= 100 else v for v in raw)
    red = Image.new("RGB", (16, 16), (255, 0, 0))
    moved = [AUGMENT_OPS["TranslateX"](red, 4.0, random.Random(seed)) for seed in range(4)]
    for out in moved:  # 4 columns of grey on one side, red elsewhere
        columns = [out.getpixel((x, 8)) for x in range(16)]
        assert columns.count((128, 128, 128)) == 4 and columns.count((255, 0, 0)) == 12
        assert columns[:4] == [(128, 128, 128)] * 4 or columns[12:] == [(128, 128, 128)] * 4
    assert {out.getpixel((0, 8)) for out in moved} == {(128, 128, 128), (255, 0, 0)}  # both directions drawn
    for seed in range(4):
        out = AUGMENT_OPS["Brightness"](img, 0.4, random.Random(seed)).tobytes()
        ratios = {round(o / v, 1) for o, v in zip(out, raw) if v >= 100}
        assert ratios in ({0.6}, {1.4}), ratios


@pytest.mark.parametrize("policy", [RandAugment(), RandAugment(num_ops=3, magnitude=20), TrivialAugmentWide()])
def test_policy_deterministic_given_seed(policy: RandAugment | TrivialAugmentWide) -> None:
    images = [_image(s) for s in range(6)]
    first = [policy(img, random.Random(100 + i)).tobytes() for i, img in enumerate(images)]
    again = [policy(img, random.Random(100 + i)).tobytes() for i, img in enumerate(images)]
    other = [policy(img, random.Random(900 + i)).tobytes() for i, img in enumerate(images)]
    assert first == again
    assert first != other
    for img in images:
        out = policy(img, random.Random(3))
        assert out.mode == "RGB" and out.size == img.size


def test_policy_converts_non_rgb_input() -> None:
    out = TrivialAugmentWide()(_image(4).convert("L"), random.Random(0))
    assert out.mode == "RGB" and out.size == (24, 16)


def test_magnitude_ranges_match_published_bins() -> None:
    size = (331, 100)
    ra, ta = RandAugment(), TrivialAugmentWide()
    assert ra.magnitude_of("ShearX", 30, size) == pytest.approx(0.3)
    assert ra.magnitude_of("TranslateX", 30, size) == pytest.approx(150.0)
    assert ra.magnitude_of("TranslateY", 30, size) == pytest.approx(150.0 / 331.0 * 100)
    assert ra.magnitude_of("Rotate", 15, size) == pytest.approx(15.0)
    assert ra.magnitude_of("Brightness", 30, size) == pytest.approx(0.9)
    assert [ra.magnitude_of("Posterize", b, size) for b in (0, 30)] == [8.0, 4.0]
    assert [ra.magnitude_of("Solarize", b, size) for b in (0, 30)] == [255.0, 0.0]
    assert ra.magnitude_of("Equalize", 30, size) == 0.0
    assert ta.magnitude_of("ShearY", 30, size) == pytest.approx(0.99)
    assert ta.magnitude_of("TranslateX", 30, size) == pytest.approx(32.0)
    assert ta.magnitude_of("Rotate", 30, size) == pytest.approx(135.0)
    assert ta.magnitude_of("Color", 30, size) == pytest.approx(0.99)
    assert [ta.magnitude_of("Posterize", b, size) for b in (0, 30)] == [8.0, 2.0]


@pytest.mark.parametrize(
    ("factory", "kwargs", "argument"),
    [
        (RandAugment, {"magnitude": 31}, "magnitude"),
        (RandAugment, {"magnitude": -1}, "magnitude"),
        (RandAugment, {"magnitude": 2.5}, "magnitude"),
        (RandAugment, {"num_magnitude_bins": 5, "magnitude": 5}, "magnitude"),
        (RandAugment, {"num_ops": -1}, "num_ops"),
        (RandAugment, {"num_magnitude_bins": 1}, "num_magnitude_bins"),
        (TrivialAugmentWide, {"num_magnitude_bins": 0}, "num_magnitude_bins"),
        (TrivialAugmentWide, {"num_magnitude_bins": True}, "num_magnitude_bins"),
    ],
)
def test_invalid_arguments_name_the_argument(factory: type, kwargs: dict[str, object], argument: str) -> None:
    with pytest.raises(ValueError, match=rf"^{argument} must be"):
        factory(**kwargs)


def test_repr_shows_arguments() -> None:
    assert repr(RandAugment(num_ops=1, magnitude=5)) == "RandAugment(num_ops=1, magnitude=5, num_magnitude_bins=31)"
    assert repr(TrivialAugmentWide(num_magnitude_bins=11)) == "TrivialAugmentWide(num_magnitude_bins=11)"


def test_registry_and_create_policy() -> None:
    assert set(AUGMENT_POLICIES) == {"none", "randaugment", "trivialaugment"}
    assert create_policy("none") is None
    policy = create_policy("RandAugment", num_ops=1, magnitude=3)
    assert isinstance(policy, RandAugment) and policy.num_ops == 1 and policy.magnitude == 3
    assert isinstance(create_policy("trivialaugment"), TrivialAugmentWide)
    with pytest.raises(ValueError, match="magnitude"):
        create_policy("randaugment", magnitude=99)


def test_create_policy_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="autoaugmentx") as info:
        create_policy("autoaugmentx")
    for name in AUGMENT_POLICIES:
        assert name in str(info.value)


def test_trivialaugment_uses_every_op_and_bin() -> None:
    policy, rng = TrivialAugmentWide(), random.Random(0)
    ops: Counter[str] = Counter()
    for _ in range(2000):
        ((name, _magnitude),) = policy.sample(rng, (32, 32))
        ops[name] += 1
    assert set(ops) == set(AUGMENT_OPS)
    assert min(ops.values()) > 2000 / len(AUGMENT_OPS) / 2  # roughly uniform
    rotations = set()
    for _ in range(3000):
        ((name, magnitude),) = policy.sample(rng, (32, 32))
        if name == "Rotate":
            rotations.add(magnitude)
    assert len(rotations) == policy.num_magnitude_bins  # every bin is reachable


def test_randaugment_samples_num_ops_with_replacement() -> None:
    policy, rng = RandAugment(num_ops=3, magnitude=9), random.Random(0)
    draws = [policy.sample(rng, (32, 32)) for _ in range(500)]
    assert all(len(d) == 3 for d in draws)
    assert any(len({name for name, _ in d}) < 3 for d in draws)  # repeats happen
    assert RandAugment(num_ops=0)(_image(5), random.Random(0)).tobytes() == _image(5).tobytes()
