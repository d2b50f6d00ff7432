"""The streaming data path on generated JPEG trees: sharding, resume, worker independence, crops, tar shards,
memory, and an ImageNet bundled config trained end to end through it."""
from __future__ import annotations

import json
import math
import random
import tarfile
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from helpers import ToyNet, child_env, jpeg_tree, run_python
from PIL import Image
from torch import Tensor, nn

from basisnet.configs import bundled_config
from basisnet.data import (
    BatchLoader, CenterCrop, ImageTensorDataset, FileIndex, Normalize, RandomResizedCrop, ShardSampler, StreamDataset, StreamLoader, rrc_box,
)
from basisnet.data.autoaugment import create_policy
from basisnet.data.decode import DECODERS, available_decoders, resolve_decoder
from basisnet.inputs import INPUT_KINDS, open_inputs
from basisnet.resolve import resolve_run
from basisnet.train.distributed import DistributedInfo
from basisnet.train import ConfigError, NonFiniteLossError, RunDir, TrainData, fit, load_config, load_state, save_state
from basisnet.train.health import DeviceStats
from basisnet.train.resume import LoopState
from basisnet.workflow import train_run

MEAN, STD = (0.5,) * 3, (0.25,) * 3


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return jpeg_tree(tmp_path_factory.mktemp("tree") / "train", per_class=6)


def rrc(size: int = 32, policy: str = "trivialaugment") -> RandomResizedCrop:
    return RandomResizedCrop(size, policy=create_policy(policy))


def all_batches(loader: StreamLoader, epoch: int = 0, start: int = 0) -> list[tuple[Tensor, Tensor]]:
    loader.set_epoch(epoch)
    return list(loader.iterate(start))


# ------------------------------------------------------------------ sharding


@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("batch", [1, 3, 8])
def test_eval_sharding_reads_every_image_exactly_once(world: int, batch: int) -> None:
    for n in range(1, 51):
        for shuffle in (False, True):
            seen = [i for r in range(world)
                    for b in ShardSampler(n, batch, r, world, shuffle=shuffle, seed=n).batches() for i in b.tolist()]
            assert sorted(seen) == list(range(n)), (n, world, batch)
            lengths = [len(ShardSampler(n, batch, r, world)) for r in range(world)]
            assert lengths == [len(ShardSampler(n, batch, r, world).batches()) for r in range(world)]


@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("batch", [1, 3, 8])
def test_train_sharding_equal_batches_each_image_at_most_once(world: int, batch: int) -> None:
    for n in range(1, 51):
        if n < batch * world:
            with pytest.raises(ValueError, match="fewer than one global batch"):
                ShardSampler(n, batch, 0, world, drop_last=True)
            continue
        for epoch in (0, 1):
            per_rank = []
            for r in range(world):
                s = ShardSampler(n, batch, r, world, shuffle=True, drop_last=True, seed=7)
                s.set_epoch(epoch)
                per_rank.append(s.batches())
                assert len(per_rank[-1]) == len(s) == n // (batch * world)
                assert all(len(b) == batch for b in per_rank[-1])
            seen = [i for batches in per_rank for b in batches for i in b.tolist()]
            assert len(seen) == len(set(seen)) == n - n % (batch * world)
            # the union of the ranks' k-th batches is the single-process k-th global batch
            single = ShardSampler(n, batch * world, 0, 1, shuffle=True, drop_last=True, seed=7)
            single.set_epoch(epoch)
            for k, b in enumerate(single.batches()):
                assert sorted(b.tolist()) == sorted(i for batches in per_rank for i in batches[k].tolist())


def test_loader_shards_a_jpeg_tree_exactly_once(tree: Path) -> None:
    index = FileIndex.from_folder(tree)
    dataset = StreamDataset(index, CenterCrop(16))
    for world in (1, 2, 3, 4):
        labels = torch.cat([y for r in range(world)
                            for _, y in StreamLoader(dataset, 4, shuffle=False, rank=r, world_size=world)])
        assert sorted(labels.tolist()) == sorted(index.labels.tolist())


# ------------------------------------------------------------------ determinism and resume


def test_worker_count_does_not_change_batches(tree: Path) -> None:
    dataset = StreamDataset(FileIndex.from_folder(tree), rrc(24), seed=3)
    reference = all_batches(StreamLoader(dataset, 4, shuffle=True, drop_last=True, seed=1, num_workers=0), epoch=1)
    two = all_batches(StreamLoader(dataset, 4, shuffle=True, drop_last=True, seed=1, num_workers=2), epoch=1)
    assert len(reference) == len(two) == 4
    for (xa, ya), (xb, yb) in zip(reference, two):
        assert xa.dtype == torch.uint8 and xa.shape == (4, 3, 24, 24)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    other_epoch = all_batches(StreamLoader(dataset, 4, shuffle=True, drop_last=True, seed=1), epoch=2)
    assert not torch.equal(reference[0][0], other_epoch[0][0])  # augmentation and order change per epoch
    resumed = all_batches(StreamLoader(dataset, 4, shuffle=True, drop_last=True, seed=1), epoch=1, start=2)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(reference[2:], resumed))


def stream_fit(tree: Path, run_dir: Path, crash_at: int = 0, resume: bool = False, workers: int = 0) -> dict:
    cfg = load_config(None, ["train.epochs=2", "train.lr=0.05", "train.warmup_epochs=0.5", "train.ema_decay=0.5",
                             "train.checkpoint_every_steps=3", "data.batch_size=4", "train.log_interval=1"])
    torch.manual_seed(0)
    index = FileIndex.from_folder(tree)
    train = StreamLoader(StreamDataset(index.subset(np.arange(0, 18, 1)), rrc(16, "randaugment"), seed=5), 4,
                         shuffle=True, drop_last=True, seed=2, num_workers=workers)
    val = StreamLoader(StreamDataset(index, CenterCrop(16)), 8, shuffle=False)
    data = TrainData(train, val, Normalize(MEAN, STD), Normalize(MEAN, STD))
    return fit(ToyNet(crash_at=crash_at), data, cfg, run_dir, resume=resume, progress=False)


def test_stopped_and_resumed_run_is_bitwise_equal(tree: Path, tmp_path: Path) -> None:
    reference = stream_fit(tree, tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        stream_fit(tree, tmp_path / "b", crash_at=7)  # 4 steps per epoch: killed at epoch 2, step 3
    assert load_state(tmp_path / "b" / "last.state.pt")["loop"]["batch"] == 2  # the checkpoint after step 6
    resumed = stream_fit(tree, tmp_path / "b", resume=True, workers=2)  # worker count is free to change
    a, b = (load_state(tmp_path / d / "last.state.pt") for d in "ab")
    for part in ("model", "ema"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part])
    wa, wb = (safetensors.torch.load_file(tmp_path / d / "last.safetensors") for d in "ab")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    keep = ("epoch", "lr", "train_loss", "val_top1_exit1", "val_top1_exit2")
    assert [{k: r[k] for k in keep} for r in resumed["history"]] == [{k: r[k] for k in keep} for r in reference["history"]]


# ------------------------------------------------------------------ transforms


def test_random_resized_crop_boxes_stay_in_range() -> None:
    rng = random.Random(0)
    scale, ratio = (0.08, 1.0), (3 / 4, 4 / 3)
    for _ in range(3000):
        width, height = rng.randint(1, 700), rng.randint(1, 700)
        left, top, w, h = rrc_box(width, height, scale, ratio, rng)
        assert 0 <= left and 0 <= top and 1 <= w and 1 <= h and left + w <= width and top + h <= height
        if min(width, height) >= 50:  # large enough that rounding cannot push the box out of its bounds
            area, aspect = w * h / (width * height), w / h
            fallback = (left, top) == ((width - w) // 2, (height - h) // 2) and max(w / width, h / height) == 1
            assert fallback or (0.07 <= area <= 1.0 and 0.72 <= aspect <= 1.39), (width, height, w, h)


@pytest.mark.parametrize("decoder", available_decoders())
@pytest.mark.parametrize("size", [(500, 375), (33, 77)])
def test_sample_transforms_give_the_input_size(tmp_path: Path, size: tuple[int, int], decoder: str) -> None:
    path = tmp_path / "x.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    for transform in (rrc(224), RandomResizedCrop(64), CenterCrop(224, 0.875), CenterCrop(32), CenterCrop(16)):
        out = transform(DECODERS[decoder](path.read_bytes()), random.Random(1))
        assert out.mode == "RGB" and out.size == (transform.size, transform.size)


def test_decoders_agree_and_a_missing_one_is_named(tree: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """simplejpeg (the optional extra) and Pillow decode to nearly the same pixels, DCT downscaling included."""
    if "simplejpeg" not in available_decoders():
        pytest.skip("simplejpeg is not installed")
    for path in sorted(tree.rglob("*.jpg"))[:6]:
        data = path.read_bytes()
        for reduce in (1, 2, 4):
            a, b = (np.asarray(DECODERS[d](data).decode(reduce), dtype=np.float32) for d in ("pillow", "simplejpeg"))
            assert a.shape == b.shape and np.abs(a - b).mean() < 2.0, (path, reduce)
    truncated = sorted(tree.rglob("*.jpg"))[0].read_bytes()
    cut = truncated[: len(truncated) // 2] + b"\xff\xd9"  # half the scan, then an end marker
    assert DECODERS["simplejpeg"](cut).decode().size == DECODERS["pillow"](truncated).size  # read as Pillow does
    png = tmp_path / "x.png"  # not in the shared tree: the module's other tests read it
    Image.new("RGB", (10, 10), (1, 2, 3)).save(png)
    assert DECODERS["simplejpeg"](png.read_bytes()).decode().getpixel((0, 0)) == (1, 2, 3)  # non-JPEG: Pillow
    monkeypatch.setattr("basisnet.data.decode.available_decoders", lambda: ["pillow"])
    assert resolve_decoder("auto") == "pillow"
    with pytest.raises(ValueError, match="fast-jpeg"):
        resolve_decoder("simplejpeg")


# ------------------------------------------------------------------ sources


def test_tar_shards_read_the_same_images_as_the_folder(tree: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BASISNET_CACHE", str(tmp_path / "cache"))
    folder = FileIndex.from_folder(tree)
    shards = tmp_path / "train"
    shards.mkdir()
    files = [Path(p.decode()) for p in folder.paths]
    for k, part in enumerate((files[:7], files[7:])):
        with tarfile.open(shards / f"shard-{k:02d}.tar", "w") as tar:
            for rel in part:
                tar.add(tree / rel, arcname=f"imgs/{rel}")
    tars = FileIndex.from_split(shards)
    assert tars.classes == folder.classes and tars.labels.tolist() == folder.labels.tolist()
    (cached,) = (tmp_path / "cache").glob("tarindex-*.npz")  # the headers are read once, then cached
    again = FileIndex.from_split(shards)
    assert again.classes == tars.classes and all(
        np.array_equal(getattr(again, k), getattr(tars, k)) for k in ("paths", "labels", "offsets", "sizes"))
    a = all_batches(StreamLoader(StreamDataset(folder, rrc(16), seed=1), 5, shuffle=True, seed=3))
    b = all_batches(StreamLoader(StreamDataset(tars, rrc(16), seed=1), 5, shuffle=True, seed=3))
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b))


def test_unreadable_file_is_named_or_replaced(tmp_path: Path) -> None:
    root = jpeg_tree(tmp_path / "train", per_class=2)
    (root / "bee" / "000.jpg").write_bytes(b"not a jpeg")
    dataset = StreamDataset(FileIndex.from_folder(root), CenterCrop(16))
    with pytest.raises(ValueError, match=r"bee/000\.jpg.*data\.skip_bad"):
        list(StreamLoader(dataset, 6, shuffle=False))
    tolerant = StreamDataset(FileIndex.from_folder(root), CenterCrop(16), skip_bad=True)
    with pytest.warns(UserWarning, match="000.jpg"):
        images, labels = next(iter(StreamLoader(tolerant, 6, shuffle=False)))
    assert images.shape == (6, 3, 16, 16) and labels.tolist() == [0, 0, 1, 1, 2, 2]
    # the same through the config key, on the streaming path that training builds from it
    cpu = DistributedInfo(0, 1, 0, torch.device("cpu"), False)
    for skip in (False, True):
        inputs = open_inputs(resolve_run(load_config(None, [f"data.source={root.parent}", "data.loader=stream",
                                                f"data.skip_bad={str(skip).lower()}", "data.val_size=3",
                                                "data.image_size=16"])))
        read = lambda: [y for split in (inputs.train_loader(cpu, 3, torch.device("cpu")),  # noqa: E731
                                        inputs.eval_loader("val", 3)) for _, y in split]
        if skip:
            with pytest.warns(UserWarning, match="000.jpg"):
                assert len(torch.cat(read())) == 6  # every image: the unreadable one replaced
        else:
            with pytest.raises(ValueError, match=r"bee/000\.jpg.*data\.skip_bad"):
                read()


def loader_of(cfg) -> str:
    """The loader kind a config resolves to."""
    return resolve_run(cfg, training=False).loader


@pytest.mark.parametrize("kind", sorted(INPUT_KINDS))
def test_every_input_kind_gives_the_same_splits_and_uint8_batches(tree: Path, kind: str, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The contract `basisnet.inputs.Inputs` that training and evaluation rely on, over every registered kind."""
    monkeypatch.setenv("BASISNET_CACHE", str(tmp_path))
    cfg = load_config(None, [f"data.source={tree.parent}", f"data.loader={kind}", "data.image_size=24",
                             "data.val_size=3", "data.batch_size=4"])
    inputs = INPUT_KINDS[kind](resolve_run(cfg))
    assert inputs.classes == ["ant", "bee", "cat"]
    loader = inputs.train_loader(DistributedInfo(0, 1, 0, torch.device("cpu"), False), 4, torch.device("cpu"))
    loader.set_epoch(1)
    batches = list(loader.iterate())
    assert len(batches) == len(loader) == (18 - 3) // 4
    x, y = batches[0]
    assert x.dtype == torch.uint8 and x.shape == (4, 3, 24, 24) and y.dtype == torch.int64
    augmented = inputs.train_transform()(x, generator=torch.Generator().manual_seed(0))
    assert augmented.dtype == torch.float32 and augmented.shape == (4, 3, 24, 24)
    val = torch.cat([labels for _, labels in inputs.eval_loader("val", 2)])
    assert sorted(val.tolist()) == [0, 1, 2]  # stratified: one of each class, the same carve for every kind
    assert inputs.eval_transform()(next(iter(inputs.eval_loader("val", 2)))[0]).dtype == torch.float32


@pytest.mark.parametrize("world", [1, 2])
def test_memory_and_stream_give_the_same_batches(tree: Path, world: int, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """One sampler and one decoder under both paths: the same images in the same batches on every rank,
    pixel for pixel (JPEGs of varied sizes, resized and center-cropped)."""
    monkeypatch.setenv("BASISNET_CACHE", str(tmp_path))
    cfg = load_config(None, [f"data.source={tree.parent}", "data.image_size=16", "data.val_size=4",
                             "data.batch_size=4", "data.decoder=pillow", "data.seed=3"])
    kinds = [INPUT_KINDS[kind](resolve_run(cfg)) for kind in ("memory", "stream")]
    for rank in range(world):
        info = DistributedInfo(rank, world, 0, torch.device("cpu"), world > 1)
        memory, stream = (inputs.train_loader(info, 4 // world, torch.device("cpu")) for inputs in kinds)
        for epoch in (0, 1):
            pairs = list(zip(all_batches(memory, epoch), all_batches(stream, epoch), strict=True))
            assert len(pairs) == (18 - 4) // 4
            assert all(torch.equal(m[1], s[1]) and torch.equal(m[0], s[0]) for m, s in pairs)
        memory_val, stream_val = (list(inputs.eval_loader("val", 3, info)) for inputs in kinds)
        assert len(memory_val) == len(stream_val) > 0
        assert all(torch.equal(m[1], s[1]) and torch.equal(m[0], s[0]) for m, s in zip(memory_val, stream_val))


def test_settings_of_the_other_loader_kind_are_errors(tree: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no image files to stream"):
        loader_of(load_config(None, ["data.source=shapes", "data.train_crop=resized"]))
    with pytest.raises(ConfigError, match="data.eval_crop"):
        loader_of(load_config(None, [f"data.source={tree.parent}", "data.eval_crop=0.875"]))
    shards = tmp_path / "train"
    shards.mkdir()
    with tarfile.open(shards / "a.tar", "w") as tar:
        tar.add(next(tree.rglob("*.jpg")), arcname="ant/0.jpg")
    assert loader_of(load_config(None, [f"data.source={tmp_path}"])) == "stream"
    with pytest.raises(ConfigError, match="tar shards"):
        loader_of(load_config(None, [f"data.source={tmp_path}", "data.loader=memory"]))


def test_a_transform_bug_is_not_taken_for_bad_data(tree: Path) -> None:
    def broken(img: object, rng: random.Random) -> None:
        raise RuntimeError("bug in a transform")

    with pytest.raises(RuntimeError, match="bug in a transform"):
        StreamDataset(FileIndex.from_folder(tree), broken, skip_bad=True)[0]


def test_resume_refuses_another_loader_kind(tree: Path, tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt):
        stream_fit(tree, tmp_path, crash_at=7)
    images = torch.randint(0, 256, (16, 3, 16, 16), dtype=torch.uint8)
    memory = BatchLoader(ImageTensorDataset(images, torch.arange(16) % 3, ["a", "b", "c"]), 4, shuffle=True,
                         drop_last=True)
    cfg = load_config(None, ["train.epochs=2", "train.lr=0.05", "train.warmup_epochs=0.5", "train.ema_decay=0.5",
                             "train.checkpoint_every_steps=3", "data.batch_size=4", "train.log_interval=1"])
    with pytest.raises(ValueError, match="trained from a StreamLoader, this resume reads a BatchLoader"):
        fit(ToyNet(), TrainData(memory, memory, Normalize(MEAN, STD), Normalize(MEAN, STD)), cfg, tmp_path, resume=True,
            progress=False)


def test_resume_refuses_a_multi_process_memory_run_cut_by_the_old_sampler(tmp_path: Path) -> None:
    images = torch.randint(0, 256, (16, 3, 16, 16), dtype=torch.uint8)
    memory = BatchLoader(ImageTensorDataset(images, torch.arange(16) % 3, ["a", "b", "c"]), 4, shuffle=True,
                         drop_last=True)
    cfg = load_config(None, ["train.epochs=1", "train.warmup_epochs=0", "data.batch_size=4"])
    fit(ToyNet(), TrainData(memory, memory, Normalize(MEAN, STD), Normalize(MEAN, STD)), cfg, tmp_path, progress=False)
    state = load_state(tmp_path / "last.state.pt")
    del state["sampler"]
    state["rng"] = state["rng"] * 2  # as 2 processes wrote it before in-memory batches were cut by ShardSampler
    save_state(state, tmp_path / "last.state.pt")
    with pytest.raises(ValueError, match="before in-memory batches were cut by ShardSampler"):
        fit(ToyNet(), TrainData(memory, memory, Normalize(MEAN, STD), Normalize(MEAN, STD)), cfg, tmp_path, resume=True,
            progress=False)


def test_auto_indexes_a_tree_once(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scans = []
    real = FileIndex.from_folder.__func__
    monkeypatch.setattr(FileIndex, "from_folder", classmethod(lambda cls, root: scans.append(root) or real(cls, root)))
    inputs = open_inputs(resolve_run(load_config(None, [f"data.source={tree.parent}", "data.memory_limit_gb=1e-6"])))
    assert type(inputs).__name__ == "StreamInputs" and len(scans) == 1


def test_auto_picks_the_loader(tree: Path) -> None:
    source = str(tree.parent)
    assert loader_of(load_config(None, [f"data.source={source}"])) == "memory"
    assert loader_of(load_config(None, [f"data.source={source}", "data.memory_limit_gb=1e-6"])) == "stream"
    assert loader_of(load_config(None, [f"data.source={source}", "data.train_crop=resized"])) == "stream"
    assert loader_of(load_config(None, ["data.source=shapes"])) == "memory"
    with pytest.raises(ConfigError, match="no image files to stream"):
        open_inputs(resolve_run(load_config(None, ["data.source=shapes", "data.loader=stream"])))
    with pytest.raises(ConfigError, match="data.train_crop"):
        load_config(None, ["data.loader=memory", "data.train_crop=resized"])
    with pytest.raises(ConfigError, match="data.augment"):
        load_config(None, ["data.augment=randaugment"])


# ------------------------------------------------------------------ end to end, memory


def test_imagenet_config_trains_two_steps_through_the_stream(tmp_path: Path) -> None:
    root = tmp_path / "data"
    jpeg_tree(root / "train", per_class=4)
    jpeg_tree(root / "test", per_class=1)
    cfg = load_config(bundled_config("imagenet_mobilenetv3_large"), [  # the recipe at 64 px, width 0.35: the path
        f"data.source={root}", "model.kwargs.num_classes=3", "data.val_size=4", "data.batch_size=4",  # is the point
        "data.eval_batch_size=4", "data.num_workers=2", "train.epochs=1", "train.warmup_epochs=0",
        "data.image_size=64", "model.kwargs.resolution=64", "model.kwargs.width=0.35"])
    assert cfg.data.loader == "stream" and cfg.data.train_crop == "resized" and cfg.data.augment == "trivialaugment"
    result = train_run(cfg, tmp_path / "run", progress=False)
    assert result["global_step"] == 2 and math.isfinite(result["history"][0]["train_loss"])
    run = RunDir(tmp_path / "run")
    assert run.best_weights.is_file() and json.loads(run.classes.read_text()) == ["ant", "bee", "cat"]


PEAK_SIZE = 448  # decoded into memory, each image holds 3 * 448**2 bytes (588 KiB)
PEAK_SCRIPT = """
import sys
import torch
from basisnet.train import load_config
from basisnet.inputs import open_inputs
from basisnet.resolve import resolve_run
from basisnet.train.distributed import DistributedInfo

kind, source, size = sys.argv[1], sys.argv[2], sys.argv[3]
cfg = load_config(None, [f"data.source={source}", f"data.loader={kind}", f"data.image_size={size}", "data.val_size=2",
                         "data.batch_size=8"])
inputs = open_inputs(resolve_run(cfg))
loader = inputs.train_loader(DistributedInfo(0, 1, 0, torch.device("cpu"), False), 8, torch.device("cpu"))
for images, labels in loader.iterate():
    pass
with open("/proc/self/status") as f:  # the kernel's high-water mark of the resident set: the true peak
    print(next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024)
"""


def peak_mib(kind: str, source: Path) -> float:
    # a fixed malloc threshold: freed decode buffers go back to the OS at once, so RSS shows what is alive,
    # not glibc's warm-up of its dynamic threshold (a plateau of ~15 MB)
    out = run_python("-c", PEAK_SCRIPT, kind, str(source), str(PEAK_SIZE),
                     env=child_env(BASISNET_CACHE=str(source / "cache"), MALLOC_MMAP_THRESHOLD_="131072"))
    assert out.returncode == 0, out.stderr
    return float(out.stdout.split()[-1])


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_number_of_files(tmp_path: Path) -> None:
    """A tree of 4N images streams within the peak memory of N; decoded into memory it would not.

    The margin comes from the data: the 3N more images decoded would take ``extra`` MiB. Streaming them may
    grow the peak by an eighth of that (the index, allocator noise), holding them would grow it by half at least.
    """
    small, large = tmp_path / "small", tmp_path / "large"
    sizes = [(160, 120), (120, 160), (64, 48), (33, 77)]  # quick to decode: the memory comes from the 448 px
    jpeg_tree(small / "train", per_class=20, sizes=sizes)  # 60 images, 58 train
    jpeg_tree(large / "train", per_class=80, sizes=sizes)  # 240, 238 train
    extra = 180 * 3 * PEAK_SIZE**2 / 2**20  # 103 MiB
    memory = peak_mib("memory", small), peak_mib("memory", large)
    stream = peak_mib("stream", small), peak_mib("stream", large)
    assert stream[1] - stream[0] < extra / 8, (stream, memory, extra)
    assert memory[1] - memory[0] > extra / 2, (memory, extra)  # the test can see the growth it rules out


# ------------------------------------------------------------------ the loop's device-side statistics


def test_device_stats_report_the_first_non_finite_step() -> None:
    stats = DeviceStats(torch.device("cpu"), check_grads=True)
    loop = LoopState()
    for step, (loss, grad) in enumerate([(1.0, 1.0), (2.0, float("inf")), (float("nan"), 1.0)], start=1):
        stats.record(torch.tensor(loss), torch.tensor(grad), 4, step)
    assert stats.settle(loop) == ("gradient norm", float("inf"), 2)
    fine = DeviceStats(torch.device("cpu"), check_grads=False)  # fp16: inf gradients are the scaler's business
    fine.record(torch.tensor(1.5), torch.tensor(float("inf")), 2, 1)
    fine.record(torch.tensor(0.5), torch.tensor(1.0), 2, 2)
    assert fine.settle(loop) is None and (loop.loss_sum, loop.samples) == (4.0, 4)


def test_deferred_check_names_the_step_that_went_non_finite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Read every log_interval steps (as on a GPU: after steps 4 and 8), the flag still names the first bad step
    (here 5 of 8), and nothing is saved after it: the checkpoint due after step 6 falls inside the deferred
    interval (steps 5-8), so it reads the flag first and the last checkpoint stays the one after step 3."""
    monkeypatch.setattr("basisnet.train.loop.settle_interval", lambda device, tc: tc.log_interval)
    images = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    data = ImageTensorDataset(images, torch.arange(64) % 3, ["a", "b", "c"])
    cfg = load_config(None, ["train.epochs=1", "train.warmup_epochs=0", "data.batch_size=8", "train.log_interval=4",
                             "train.checkpoint_every_steps=3"])
    model = ToyNet(nan_at=5)  # its 5th training forward returns NaN
    with pytest.raises(NonFiniteLossError, match=r"loss \(nan\) at epoch 1, step 5 \(global step 5\)") as err:
        norm = Normalize((0.5,) * 3, (0.25,) * 3)
        fit(model, TrainData(BatchLoader(data, 8, shuffle=True, drop_last=True), BatchLoader(data, 32, shuffle=False),
                             norm, norm), cfg, tmp_path, progress=False)
    assert f"last good checkpoint: {tmp_path / 'last.safetensors'}" in str(err.value)
    state = load_state(tmp_path / "last.state.pt")
    assert state["loop"]["global_step"] == 3  # before the bad step: the one due after step 6 was not written
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert safetensors.torch.load_file(tmp_path / "last.safetensors").keys() == state["model"].keys()
    assert all(torch.isfinite(v).all() for v in safetensors.torch.load_file(tmp_path / "last.safetensors").values())


def test_bf16_autocast_and_tensorboard_on_cpu(tree: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    cfg = load_config(None, ["train.epochs=1", "train.warmup_epochs=0", "train.amp=bf16", "train.tensorboard=true",
                             "data.batch_size=4", "train.log_interval=2"])
    index = FileIndex.from_folder(tree)
    train = StreamLoader(StreamDataset(index, rrc(16)), 4, shuffle=True, drop_last=True)
    val = StreamLoader(StreamDataset(index, CenterCrop(16)), 8, shuffle=False)
    net = ToyNet()
    dtypes = []
    net.head1.register_forward_hook(lambda module, args, out: dtypes.append((module.training, out.dtype)))
    result = fit(net, TrainData(train, val, Normalize(MEAN, STD), Normalize(MEAN, STD)), cfg, tmp_path, progress=False)
    assert math.isfinite(result["history"][0]["train_loss"])
    assert {dtype for _, dtype in dtypes} == {torch.bfloat16}  # training and validation ran under autocast
    assert {training for training, _ in dtypes} == {True, False}
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    with pytest.raises(ConfigError, match="fp16"):
        fit(ToyNet(), TrainData(train, val, Normalize(MEAN, STD), Normalize(MEAN, STD)),
            load_config(None, ["train.amp=fp16", "data.batch_size=4"]), tmp_path / "x", progress=False)
