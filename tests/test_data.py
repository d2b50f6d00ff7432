"""Tests for basisnet.data: readers, splits, batch transforms, the loader and the SHAPES set."""

from __future__ import annotations

import io
import os
import pickle
import warnings
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from torch.utils.data import Dataset
from torch.utils.data.distributed import DistributedSampler

from basisnet.data import (
    SHAPE_CLASSES,
    BatchLoader,
    EvalTransform,
    ImageTensorDataset,
    ShardSampler,
    TrainAugment,
    channel_stats,
    load_cifar,
    load_dataset,
    load_image_folder,
    make_shapes,
    train_val_split,
)
from basisnet.data import folder as folder_module

# On top of the derandomized profile of conftest.py (same examples every run, no deadline): 40 examples, and the
# function-scoped tmp_path shared by the examples (each example rewrites the file it reads).
HYPOTHESIS = settings(max_examples=40, suppress_health_check=[*settings.default.suppress_health_check,
                                                              HealthCheck.function_scoped_fixture])
assert HYPOTHESIS.derandomize and HYPOTHESIS.database is None and HYPOTHESIS.deadline is None


# ----------------------------------------------------------------------------- helpers


def _rgb(seed: int, size: tuple[int, int] = (8, 8)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)


def _save(path: Path, image: Image.Image | np.ndarray, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(path, fmt)
    return path


def _encoded(array: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, fmt)
    return buf.getvalue()


def _load(root: Path, **kw: object) -> ImageTensorDataset:
    kw = {"cache_dir": False, "progress": False, **kw}
    return load_image_folder(root, **kw)  # type: ignore[arg-type]


def _pickle(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=2))


def _write_cifar10(root: Path, per_batch: int = 4) -> dict[str, tuple[np.ndarray, list[int]]]:
    """Official layout with bytes keys, as the Python-2 era files have."""
    folder = root / "cifar-10-batches-py"
    rng = np.random.default_rng(0)
    names = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]
    written = {}
    for name in names:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, per_batch).tolist()
        _pickle(folder / name, {b"batch_label": name.encode(), b"data": data, b"labels": labels})
        written[name] = (data, labels)
    names = "airplane automobile bird cat deer dog frog horse ship truck".split()
    _pickle(folder / "batches.meta", {b"label_names": [n.encode() for n in names], b"num_vis": 3072})
    return written


def _write_cifar100(root: Path, n: int = 6) -> dict[str, tuple[np.ndarray, list[int], list[int]]]:
    folder = root / "cifar-100-python"
    rng = np.random.default_rng(1)
    written = {}
    for name in ("train", "test"):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        fine, coarse = rng.integers(0, 100, n).tolist(), rng.integers(0, 20, n).tolist()
        _pickle(folder / name, {b"data": data, b"fine_labels": fine, b"coarse_labels": coarse})
        written[name] = (data, fine, coarse)
    fine_names, coarse_names = [f"f{i}".encode() for i in range(100)], [f"c{i}".encode() for i in range(20)]
    _pickle(folder / "meta", {b"fine_label_names": fine_names, b"coarse_label_names": coarse_names})
    return written


# ----------------------------------------------------------------------------- CIFAR


@pytest.mark.parametrize("use_parent", [True, False])
def test_cifar10_pixels_and_labels(tmp_path: Path, use_parent: bool) -> None:
    written = _write_cifar10(tmp_path)
    root = tmp_path if use_parent else tmp_path / "cifar-10-batches-py"
    train, test = load_cifar(root, "train"), load_cifar(root, "test")
    assert train.images.shape == (20, 3, 32, 32) and test.images.shape == (4, 3, 32, 32)
    assert train.classes[0] == "airplane" and len(train.classes) == 10
    data, labels = written["data_batch_2"]
    # image 1 of batch 2 is row 5 of train; pixel (channel G, y=3, x=7) lives at 1024 + 3 * 32 + 7
    assert int(train.images[5, 1, 3, 7]) == int(data[1, 1024 + 3 * 32 + 7])
    assert train.targets[4:8].tolist() == labels
    assert test.targets.tolist() == written["test_batch"][1]
    assert torch.equal(test.images.reshape(4, -1), torch.from_numpy(written["test_batch"][0]))


def test_cifar100_fine_and_coarse(tmp_path: Path) -> None:
    written = _write_cifar100(tmp_path)
    data, fine, coarse = written["test"]
    fine_set = load_cifar(tmp_path, "test", "fine")
    coarse_set = load_cifar(tmp_path / "cifar-100-python", "test", label_mode="coarse")
    assert fine_set.targets.tolist() == fine and len(fine_set.classes) == 100
    assert coarse_set.targets.tolist() == coarse and coarse_set.classes[3] == "c3"
    assert int(fine_set.images[2, 2, 31, 31]) == int(data[2, 3071])


def test_cifar_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        load_cifar(tmp_path)
    _write_cifar10(tmp_path)
    with pytest.raises(ValueError, match="label_mode"):
        load_cifar(tmp_path, label_mode="coarse")
    with pytest.raises(ValueError, match="split"):
        load_cifar(tmp_path, split="val")
    missing = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    missing.unlink()
    with pytest.raises(FileNotFoundError, match=str(missing)):
        load_cifar(tmp_path)


def test_cifar_malformed_files(tmp_path: Path) -> None:
    _write_cifar10(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(b"\x80\x02garbage")
    with pytest.raises(ValueError, match="test_batch"):
        load_cifar(tmp_path, "test")
    _pickle(batch, {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]})
    with pytest.raises(ValueError, match="3072"):
        load_cifar(tmp_path, "test")
    _pickle(batch, {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]})
    with pytest.raises(ValueError, match="labels outside"):
        load_cifar(tmp_path, "test")
    _pickle(batch, {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0.5, 1.0]})
    with pytest.raises(ValueError, match="not a list of integers"):
        load_cifar(tmp_path, "test")


def test_cifar_pickle_cannot_run_code(tmp_path: Path) -> None:
    _write_cifar10(tmp_path)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.mkdir, (str(marker),))

    _pickle(tmp_path / "cifar-10-batches-py" / "test_batch", {b"data": Evil()})
    with pytest.raises(ValueError, match="not allowed"):
        load_cifar(tmp_path, "test")
    assert not marker.exists()


_junk = st.recursive(
    st.none() | st.integers() | st.binary(max_size=8) | st.text(max_size=4) | st.floats(allow_nan=False),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.binary(max_size=8), children, max_size=4),
    max_leaves=10,
)
_arrays = st.builds(
    lambda shape, dtype: np.zeros(shape, dtype=dtype),
    st.tuples(st.integers(0, 3), st.sampled_from([0, 1, 3072])),
    st.sampled_from([np.uint8, np.int64, np.float32]),
)


@HYPOTHESIS
@given(
    raw=st.one_of(
        st.binary(max_size=64),
        st.builds(
            lambda data, labels: pickle.dumps({b"data": data, b"labels": labels}, protocol=2),
            _arrays | _junk,
            st.lists(st.integers(-3, 12), max_size=4) | _junk,
        ),
    )
)
def test_cifar_random_bytes_never_crash(tmp_path: Path, raw: bytes) -> None:
    if not (tmp_path / "cifar-10-batches-py").exists():
        _write_cifar10(tmp_path, per_batch=1)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(raw)
    try:
        dataset = load_cifar(tmp_path, "test")
    except ValueError:
        return
    assert dataset.images.dtype == torch.uint8 and dataset.images.shape[1:] == (3, 32, 32)
    assert len(dataset.targets) == len(dataset.images)


# ----------------------------------------------------------------------------- image folders


def test_folder_jpeg_and_png(tmp_path: Path) -> None:
    png = _rgb(0)
    _save(tmp_path / "cat" / "a.png", png)
    _save(tmp_path / "cat" / "sub" / "b.JPG", _rgb(1), "JPEG")
    _save(tmp_path / "dog" / "c.jpeg", _rgb(2), "JPEG")
    (tmp_path / "dog" / "notes.txt").write_text("ignored")
    (tmp_path / "dog" / ".DS_Store").write_bytes(b"\0junk")
    _save(tmp_path / ".hidden" / "x.png", png)  # hidden folder: not a class
    dataset = _load(tmp_path)
    assert dataset.classes == ["cat", "dog"]
    assert dataset.targets.tolist() == [0, 0, 1]
    assert dataset.images.shape == (3, 3, 8, 8) and dataset.images.dtype == torch.uint8
    assert torch.equal(dataset.images[0], torch.from_numpy(png).permute(2, 0, 1))
    image, label = dataset[2]
    assert label == 1 and image.shape == (3, 8, 8)


RED, GREY = (255, 0, 0), (128, 128, 128)


def _palette() -> Image.Image:
    img = Image.new("P", (4, 4), 1)
    img.putpalette([0, 0, 0, *RED] + [0] * 762)
    return img


def _grey16(value: int) -> Image.Image:
    return Image.fromarray(np.full((4, 4), value, dtype=np.uint16))


@pytest.mark.parametrize(
    ("name", "image", "expected"),
    [
        ("grey.png", Image.new("L", (4, 4), 128), GREY),
        ("bilevel.png", Image.new("1", (4, 4), 1), (255, 255, 255)),
        ("grey_alpha.png", Image.new("LA", (4, 4), (128, 10)), GREY),
        ("rgba.png", Image.new("RGBA", (4, 4), (255, 0, 0, 0)), RED),
        ("palette.png", _palette(), RED),
        ("palette.gif", _palette(), RED),
        ("grey16_max.png", _grey16(65535), (255, 255, 255)),
        ("grey16_mid.png", _grey16(128 * 257), GREY),
        ("grey16_low.png", _grey16(1000), (4, 4, 4)),  # 1000 / 257 = 3.9: scaled, not clipped to 255
        ("cmyk.tif", Image.new("CMYK", (4, 4), (0, 255, 255, 0)), RED),
        ("cmyk.jpg", Image.new("CMYK", (4, 4), (0, 0, 0, 127)), GREY),
    ],
)
def test_folder_converts_modes_to_rgb(
    tmp_path: Path, name: str, image: Image.Image, expected: tuple[int, int, int]
) -> None:
    _save(tmp_path / "only" / name, image)
    with pytest.warns(UserWarning, match="single class"):
        dataset = _load(tmp_path)
    pixel = dataset.images[0, :, 1, 1].tolist()
    tolerance = 3 if name.endswith(".jpg") else 0
    assert all(abs(got - want) <= tolerance for got, want in zip(pixel, expected)), pixel


def test_folder_mode_i_is_scaled(tmp_path: Path) -> None:
    with Image.open(_save(tmp_path / "x" / "a.png", _grey16(65535))) as img:
        assert img.mode.startswith("I")  # the conversion under test really sees a wide mode
    img32 = Image.fromarray(np.full((4, 4), 257 * 200, dtype=np.int32), mode="I")
    _save(tmp_path / "x" / "b.tif", img32)
    with pytest.warns(UserWarning):
        dataset = _load(tmp_path)
    assert dataset.images[:, 0, 0, 0].tolist() == [255, 200]


def _bad_files() -> dict[str, bytes]:
    jpg, png = _encoded(_rgb(3, (32, 32)), "JPEG"), _encoded(_rgb(4, (32, 32)), "PNG")
    return {
        "truncated.jpg": jpg[: len(jpg) // 2],
        "truncated.png": png[: len(png) // 2],
        "broken_stream.png": png[:200] + bytes(50) + png[250:],
        "zero.png": b"",
        "text.jpg": b"this is not an image\n",
        "mangled_header.jpg": jpg[:20] + b"\xff" * 30 + jpg[50:],
    }


@pytest.mark.parametrize("bad_name", list(_bad_files()))
def test_folder_bad_file_raises_or_is_skipped(tmp_path: Path, bad_name: str) -> None:
    _save(tmp_path / "a" / "good1.png", _rgb(5))
    _save(tmp_path / "b" / "good2.png", _rgb(6))
    bad = tmp_path / "b" / bad_name
    bad.write_bytes(_bad_files()[bad_name])
    with pytest.raises(ValueError, match=bad_name):
        _load(tmp_path)
    with pytest.warns(UserWarning, match=f"skipped 1 unreadable.*{bad_name}"):
        dataset = _load(tmp_path, skip_bad=True)
    assert dataset.targets.tolist() == [0, 1]
    assert torch.equal(dataset.images[1], torch.from_numpy(_rgb(6)).permute(2, 0, 1))


def test_skip_bad_config_key_skips_a_corrupt_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``data.skip_bad=true``, set as a config key, reaches the reader: the corrupt file is left out with a
    warning; without it loading fails naming the file."""
    from basisnet.inputs import load_splits
    from basisnet.resolve import resolve_run
    from basisnet.train import load_config

    monkeypatch.setenv("BASISNET_CACHE", str(tmp_path / "cache"))
    tree = tmp_path / "tree"
    for c in ("a", "b"):
        for i in range(4):
            _save(tree / "train" / c / f"{i}.png", _rgb(20 + 4 * (c == "b") + i))
    (tree / "train" / "b" / "corrupt.png").write_bytes(_encoded(_rgb(30), "PNG")[:40])
    keys = [f"data.source={tree}", "data.val_size=2", "data.image_size=8"]
    with pytest.raises(ValueError, match="corrupt.png"):
        load_splits(resolve_run(load_config(None, keys)))
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable.*corrupt\.png"):
        splits = load_splits(resolve_run(load_config(None, [*keys, "data.skip_bad=true"])))
    assert len(splits.train) + len(splits.val) == 8 and len(splits.val) == 2


def test_folder_all_bad_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(b"")
    with pytest.raises(ValueError, match="none of the 1 image files"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _load(tmp_path, skip_bad=True)


def test_folder_empty_class_keeps_labels_aligned(tmp_path: Path) -> None:
    _save(tmp_path / "apple" / "0.png", _rgb(7))
    (tmp_path / "banana").mkdir()
    _save(tmp_path / "cherry" / "0.png", _rgb(8))
    with pytest.warns(UserWarning, match="banana"):
        dataset = _load(tmp_path)
    assert dataset.classes == ["apple", "banana", "cherry"]
    assert dataset.targets.tolist() == [0, 2]


def test_folder_empty_roots(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing"):
        _load(tmp_path / "missing")
    with pytest.raises(ValueError, match="no class folders"):
        _load(tmp_path)
    (tmp_path / "cls").mkdir()
    (tmp_path / "cls" / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match="no image files"):
        _load(tmp_path)


def test_folder_sizes_must_match_unless_resized(tmp_path: Path) -> None:
    _save(tmp_path / "a" / "small.png", _rgb(9, (8, 8)))
    wide = np.zeros((32, 64, 3), dtype=np.uint8)
    wide[:, :32] = RED  # left half red, right half blue: the centre crop is half and half
    wide[:, 32:] = (0, 0, 255)
    _save(tmp_path / "b" / "wide.png", wide)
    with pytest.raises(ValueError, match="image_size"):
        _load(tmp_path)
    dataset = _load(tmp_path, image_size=16)
    assert dataset.images.shape == (2, 3, 16, 16)
    assert dataset.images[1, :, 8, 0].tolist() == list(RED)
    assert dataset.images[1, :, 8, 15].tolist() == [0, 0, 255]


def test_folder_cache_hit_and_invalidation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, cache = tmp_path / "tree", tmp_path / "cache"
    _save(root / "a" / "0.png", _rgb(10))
    _save(root / "b" / "0.png", _rgb(11))
    first = load_image_folder(root, cache_dir=cache, progress=False)
    assert len(list(cache.glob("*.pt"))) == 1
    with mock.patch.object(folder_module, "_try_decode", side_effect=AssertionError("decoded despite cache")):
        second = load_image_folder(root, cache_dir=cache, progress=False)
    assert torch.equal(first.images, second.images) and torch.equal(first.targets, second.targets)
    assert second.classes == first.classes

    _save(root / "b" / "0.png", _rgb(12))  # new content: the cache must not be used
    os.utime(root / "b" / "0.png", ns=(1, 1))
    third = load_image_folder(root, cache_dir=cache, progress=False)
    assert torch.equal(third.images[1], torch.from_numpy(_rgb(12)).permute(2, 0, 1))
    assert len(list(cache.glob("*.pt"))) == 1  # the stale version was replaced, not accumulated

    monkeypatch.setenv("BASISNET_CACHE", str(tmp_path / "env_cache"))
    load_image_folder(root, progress=False)
    assert len(list((tmp_path / "env_cache").glob("*.pt"))) == 1
    load_image_folder(root, cache_dir=False, progress=False)
    assert len(list((tmp_path / "env_cache").glob("*.pt"))) == 1


def test_folder_cache_remembers_skipped_files(tmp_path: Path) -> None:
    root, cache = tmp_path / "tree", tmp_path / "cache"
    _save(root / "a" / "0.png", _rgb(13))
    _save(root / "b" / "0.png", _rgb(14))
    (root / "b" / "bad.png").write_bytes(b"nope")
    for _ in range(2):  # the second load is a cache hit and must warn just the same
        with pytest.warns(UserWarning, match="bad.png"):
            load_image_folder(root, skip_bad=True, cache_dir=cache, progress=False)
    with pytest.raises(ValueError, match="bad.png"):
        load_image_folder(root, cache_dir=cache, progress=False)
    (cache / next(cache.iterdir()).name).write_bytes(b"corrupt cache")
    with pytest.warns(UserWarning, match="unreadable cache"), pytest.warns(UserWarning, match="bad.png"):
        load_image_folder(root, skip_bad=True, cache_dir=cache, progress=False)


@HYPOTHESIS
@given(
    data=st.one_of(
        st.binary(max_size=200),
        st.tuples(
            st.sampled_from(["PNG", "JPEG", "BMP", "GIF"]),
            st.integers(0, 400),
            st.binary(min_size=1, max_size=4),
            st.just(0) | st.integers(0, 400),
        ),
    )
)
def test_folder_random_bytes_never_crash(tmp_path: Path, data: bytes | tuple[str, int, bytes, int]) -> None:
    if isinstance(data, tuple):  # a valid image, mangled at one offset and truncated at another
        fmt, at, patch, cut = data
        raw = bytearray(_encoded(_rgb(15, (16, 16)), fmt))
        raw[at : at + len(patch)] = patch
        raw = bytes(raw[: max(1, len(raw) - cut)])
    else:
        raw = data
    (tmp_path / "c").mkdir(exist_ok=True)
    (tmp_path / "c" / "x.png").write_bytes(raw)
    with warnings.catch_warnings(), mock.patch.object(Image, "MAX_IMAGE_PIXELS", 1 << 16):
        warnings.simplefilter("ignore")
        try:
            dataset = _load(tmp_path, image_size=16)
        except ValueError as exc:
            assert "x.png" in str(exc)
            return
    assert dataset.images.shape == (1, 3, 16, 16) and dataset.targets.tolist() == [0]


# ----------------------------------------------------------------------------- dataset, split


def test_dataset_validation_and_subset() -> None:
    images = torch.arange(4 * 3 * 2 * 2, dtype=torch.uint8).view(4, 3, 2, 2)
    dataset = ImageTensorDataset(images, torch.tensor([0, 1, 1, 0], dtype=torch.int32), ["x", "y"])
    assert dataset.targets.dtype == torch.int64
    part = dataset.subset([3, 1])
    assert isinstance(part, ImageTensorDataset) and part.classes == ["x", "y"]
    assert torch.equal(part.images[0], images[3]) and part.targets.tolist() == [0, 1]
    with pytest.raises(ValueError, match="uint8"):
        ImageTensorDataset(images.float(), dataset.targets, ["x", "y"])
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        ImageTensorDataset(images, torch.tensor([0, 1, 2, 0]), ["x", "y"])


def test_train_val_split_is_stratified_and_deterministic() -> None:
    targets = torch.arange(1000) % 10
    targets = targets[torch.randperm(1000, generator=torch.Generator().manual_seed(1))]
    train, val = train_val_split(targets, 100, seed=3)
    assert torch.bincount(targets[val]).tolist() == [10] * 10
    assert len(train) == 900 and set(train.tolist()).isdisjoint(val.tolist())
    assert sorted(train.tolist() + val.tolist()) == list(range(1000))
    again = train_val_split(targets, 100, seed=3)
    assert torch.equal(again[0], train) and torch.equal(again[1], val)
    assert not torch.equal(train_val_split(targets, 100, seed=4)[1], val)
    assert len(train_val_split(targets, 0.25)[1]) == 250


def test_train_val_split_uneven_classes_and_errors() -> None:
    targets = torch.tensor([0] * 7 + [1] * 2 + [2] * 1)
    _, val = train_val_split(targets, 3)
    assert len(val) == 3 and torch.bincount(targets[val], minlength=3)[0] == 2
    for bad in (0, 10, -1, 0.0, 1.0, 1.5, True):
        with pytest.raises(ValueError, match="val_size"):
            train_val_split(targets, bad)


# ----------------------------------------------------------------------------- transforms


def _batch(b: int = 6, size: int = 8) -> torch.Tensor:
    return torch.randint(0, 256, (b, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def test_train_augment_shape_dtype_determinism() -> None:
    images = _batch()
    augment = TrainAugment(crop_size=8, padding=2)
    out = augment(images, torch.Generator().manual_seed(5))
    assert out.shape == (6, 3, 8, 8) and out.dtype == torch.float32
    assert torch.equal(out, augment(images, torch.Generator().manual_seed(5)))
    assert not torch.equal(out, augment(images, torch.Generator().manual_seed(6)))


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect"])
def test_train_augment_outputs_are_padded_crops(padding_mode: str) -> None:
    """Every output equals some (crop, flip) of the reference-padded image, found by brute force."""
    images, pad, crop = _batch(size=8), 2, 7
    augment = TrainAugment(crop, padding=pad, mean=(0, 0, 0), std=(1 / 255,) * 3, padding_mode=padding_mode)
    out = augment(images, torch.Generator().manual_seed(0))
    torch_mode = "constant" if padding_mode == "zeros" else "reflect"
    padded = torch.nn.functional.pad(images.float(), (pad,) * 4, mode=torch_mode)
    for sample, source in zip(out, padded):
        candidates = [
            view
            for top in range(8 + 2 * pad - crop + 1)
            for left in range(8 + 2 * pad - crop + 1)
            for view in (source[:, top : top + crop, left : left + crop],)
            for view in (view, view.flip(-1))
        ]
        assert any(torch.equal(sample, c) for c in candidates)


def test_train_augment_flip_flips() -> None:
    images = _batch(b=64)
    augment = TrainAugment(crop_size=8, padding=0, mean=(0, 0, 0), std=(1 / 255,) * 3)
    out = augment(images, torch.Generator().manual_seed(0))
    same = [torch.equal(o, i.float()) for o, i in zip(out, images)]
    flipped = [torch.equal(o, i.float().flip(-1)) for o, i in zip(out, images)]
    assert all(s or f for s, f in zip(same, flipped)) and any(flipped) and any(same)
    never = TrainAugment(crop_size=8, padding=0, flip=False, mean=(0, 0, 0), std=(1 / 255,) * 3)
    assert torch.equal(never(images), images.float())


def test_transform_errors_and_eval() -> None:
    with pytest.raises(ValueError, match="crop_size"):
        TrainAugment(crop_size=20, padding=2)(_batch(size=8))
    with pytest.raises(ValueError, match="reflect"):
        TrainAugment(crop_size=8, padding=8, padding_mode="reflect")(_batch(size=8))
    with pytest.raises(ValueError, match="uint8"):
        EvalTransform()(_batch().float())
    images = torch.full((2, 3, 8, 8), 255, dtype=torch.uint8)
    out = EvalTransform(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))(images)
    assert torch.allclose(out, torch.ones_like(out))
    resized = EvalTransform(size=4)(torch.zeros(2, 3, 8, 12, dtype=torch.uint8))
    assert resized.shape == (2, 3, 4, 4)


def test_channel_stats() -> None:
    images = _batch(b=10)
    mean, std = channel_stats(images, chunk=3)
    reference = images.double() / 255
    assert torch.allclose(torch.tensor(mean, dtype=torch.float64), reference.mean(dim=(0, 2, 3)))
    assert torch.allclose(torch.tensor(std, dtype=torch.float64), reference.std(dim=(0, 2, 3), unbiased=False))


# ----------------------------------------------------------------------------- loader


def _numbered(n: int = 10) -> ImageTensorDataset:
    """Image i is filled with the value i, so batches reveal their indices."""
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, 2, 2).contiguous()
    return ImageTensorDataset(images, torch.arange(n) % 3, ["a", "b", "c"])


def _order(loader: BatchLoader, start_batch: int = 0) -> list[int]:
    return [int(v) for images, _ in loader.iterate(start_batch) for v in images[:, 0, 0, 0]]


def test_loader_order_is_a_function_of_seed_and_epoch() -> None:
    dataset = _numbered()
    loader = BatchLoader(dataset, batch_size=3, shuffle=True, seed=7)
    loader.set_epoch(2)
    order = _order(loader)
    assert sorted(order) == list(range(10)) and len(loader) == 4
    again = BatchLoader(dataset, batch_size=3, shuffle=True, seed=7)
    again.set_epoch(2)
    assert _order(again) == order
    reference = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=7)
    reference.set_epoch(2)
    assert order == list(reference)  # one process: the order torch's sampler gave, so older runs resume exactly
    loader.set_epoch(3)
    assert _order(loader) != order
    assert _order(BatchLoader(dataset, batch_size=4, shuffle=False)) == list(range(10))


def test_loader_rank_sharding_covers_the_dataset() -> None:
    """The in-memory loader shards as the stream does (ShardSampler): evaluation reads every image exactly
    once over the ranks, no wrap-around padding; training cuts global batches."""
    dataset = _numbered(10)
    shards = []
    for rank in range(3):
        loader = BatchLoader(dataset, batch_size=2, shuffle=True, seed=1, rank=rank, world_size=3)
        loader.set_epoch(5)
        shards.append(_order(loader))
        reference = ShardSampler(10, 2, rank, 3, shuffle=True, seed=1)
        reference.set_epoch(5)
        assert shards[-1] == [int(i) for batch in reference.batches() for i in batch]
    assert [len(s) for s in shards] == [4, 3, 3]
    assert sorted(i for s in shards for i in s) == list(range(10))
    train = [BatchLoader(dataset, batch_size=2, shuffle=True, drop_last=True, seed=1, rank=r, world_size=2)
             for r in range(2)]
    single = BatchLoader(dataset, batch_size=4, shuffle=True, drop_last=True, seed=1)
    ranks = [[images[:, 0, 0, 0].tolist() for images, _ in loader] for loader in train]
    assert [a + b for a, b in zip(*ranks)] == [images[:, 0, 0, 0].tolist() for images, _ in single]
    with pytest.raises(ValueError, match="rank"):
        BatchLoader(dataset, batch_size=2, shuffle=True, rank=3, world_size=3)


def test_loader_start_batch_and_drop_last() -> None:
    loader = BatchLoader(_numbered(10), batch_size=3, shuffle=True, drop_last=True)
    loader.set_epoch(1)
    full = list(loader)
    assert len(loader) == len(full) == 3 and all(len(labels) == 3 for _, labels in full)
    resumed = list(loader.iterate(start_batch=2))
    assert len(resumed) == 1 and torch.equal(resumed[0][0], full[2][0])
    assert list(loader.iterate(start_batch=3)) == []
    with pytest.raises(ValueError, match="start_batch"):
        loader.iterate(start_batch=4)


class _PlainDataset(Dataset[tuple[torch.Tensor, int]]):
    def __init__(self, inner: ImageTensorDataset) -> None:
        self.inner = inner

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.inner[index]


def test_loader_generic_dataset_matches_fast_path() -> None:
    dataset = _numbered(11)
    fast = BatchLoader(dataset, batch_size=4, shuffle=True, seed=3, rank=1, world_size=2)
    slow = BatchLoader(_PlainDataset(dataset), batch_size=4, shuffle=True, seed=3, rank=1, world_size=2)
    for loader in (fast, slow):
        loader.set_epoch(4)
    before = torch.get_rng_state()
    fast_batches, slow_batches = list(fast.iterate(1)), list(slow.iterate(1))
    assert torch.equal(torch.get_rng_state(), before)  # neither path perturbs the global RNG
    assert len(fast_batches) == len(slow_batches) == 1
    for (fi, fl), (si, sl) in zip(fast_batches, slow_batches):
        assert torch.equal(fi, si) and torch.equal(fl, sl) and sl.dtype == torch.int64


# ----------------------------------------------------------------------------- SHAPES and load_dataset


def test_shapes_deterministic_balanced() -> None:
    train, test = make_shapes(num_train=105, num_test=20, image_size=16, seed=1)
    assert train.images.shape == (105, 3, 16, 16) and test.images.shape == (20, 3, 16, 16)
    assert train.classes == list(SHAPE_CLASSES)
    counts = torch.bincount(train.targets, minlength=10)
    assert int(counts.max()) - int(counts.min()) <= 1
    assert torch.bincount(test.targets).tolist() == [2] * 10
    again, _ = make_shapes(num_train=105, num_test=20, image_size=16, seed=1)
    assert torch.equal(again.images, train.images) and torch.equal(again.targets, train.targets)
    other, _ = make_shapes(num_train=105, num_test=20, image_size=16, seed=2)
    assert not torch.equal(other.images, train.images)
    assert not torch.equal(train.images[:20], test.images)


def test_load_dataset_dispatch(tmp_path: Path) -> None:
    shapes = load_dataset("shapes", "test", num_train=10, num_test=10, image_size=16)
    assert len(shapes) == 10
    _write_cifar10(tmp_path / "cifar")
    assert len(load_dataset(tmp_path / "cifar", "train")) == 20
    tree = tmp_path / "tree"
    _save(tree / "train" / "a" / "0.png", _rgb(16))
    _save(tree / "train" / "b" / "0.png", _rgb(17))
    _save(tree / "test" / "a" / "0.png", _rgb(18))
    _save(tree / "test" / "b" / "0.png", _rgb(19))
    test = load_dataset(str(tree), "test", cache_dir=False, progress=False)
    assert torch.equal(test.images[0], torch.from_numpy(_rgb(18)).permute(2, 0, 1))
    assert len(load_dataset(tree / "train", "train", cache_dir=False, progress=False)) == 2
    with pytest.raises(ValueError, match="split folder"):
        load_dataset(tree / "train", "test", cache_dir=False, progress=False)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_dataset(tmp_path / "nowhere", "train")
