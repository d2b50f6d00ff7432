"""``basisnet bench loader``: the streaming data path's images/s against the bare decode rate of the same files.

The reference is Pillow alone in one process (open, decode to RGB, nothing else), measured in the same run
before and after the loaders (the faster of the two counts), after one pass that brings the files into the
page cache. Each loader figure is one full pass through ``StreamLoader`` (worker start-up included) with
the transform of a recipe: the CIFAR recipe (decode + uint8 batch; pad-crop happens on the device) on the
shared CIFAR-10 tree, the ImageNet recipe (RandomResizedCrop 224 + flip, and evaluation's resize + center
crop) on generated 500x375 JPEGs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..data import CenterCrop, FileIndex, RandomResizedCrop, StreamDataset, StreamLoader
from ..data.autoaugment import create_policy
from ..data.decode import available_decoders
from ..data.sources import split_dir
from .records import machine, save_records

__all__ = ["LoaderPlan", "format_loader_table", "generate_jpegs", "run_loader_benchmark"]

TARGET = 0.8  # the loader delivers at least this fraction of the bare decode rate


@dataclass(frozen=True)
class LoaderPlan:
    workers: tuple[int, ...] = (0, 1, 2)
    cifar_images: int = 50_000  # the whole training split
    large_images: int = 600
    large_size: tuple[int, int] = (500, 375)

    @classmethod
    def quick_plan(cls) -> LoaderPlan:
        return cls(workers=(0, 2), cifar_images=5_000, large_images=120)


Recipe = tuple[str, Callable[[], Any], int, str]  # name, transform factory, batch size, decoder


def generate_jpegs(folder: Path, count: int, size: tuple[int, int], classes: int = 4, seed: int = 0) -> Path:
    """``folder/<class>/<i>.jpg``: photo-like JPEGs (smooth colour fields plus noise, quality 90), so they
    decode like camera images rather than like flat colour or pure noise."""
    rng = np.random.default_rng(seed)
    w, h = size
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    for i in range(count):
        path = folder / f"c{i % classes}" / f"{i:05d}.jpg"
        if path.is_file():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        fx, fy, phase = rng.uniform(0.005, 0.05, 3)
        field = np.stack([np.sin(fx * xs + phase * c) * np.cos(fy * ys + c) for c in range(3)], axis=-1)
        pixels = np.clip(127 + 90 * field + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(path, quality=90)
    return folder


def _files(index: FileIndex) -> list[str]:
    return [os.path.join(index.root, os.fsdecode(p)) for p in index.paths]


def bare_decode_rate(files: Sequence[str]) -> float:
    """Images/s of Pillow alone: open, decode to RGB, hand back the pixels."""
    start = time.perf_counter()
    for path in files:
        with Image.open(path) as img:
            img.convert("RGB").load()
    return len(files) / (time.perf_counter() - start)


def loader_rate(index: FileIndex, transform: Any, batch_size: int, workers: int, decoder: str) -> float:
    """Images/s of one full pass of ``StreamLoader`` (uint8 batches in this process)."""
    loader = StreamLoader(StreamDataset(index, transform, seed=0, decoder=decoder), batch_size, shuffle=True,
                          num_workers=workers)
    start = time.perf_counter()
    images = sum(len(labels) for _, labels in loader)
    return images / (time.perf_counter() - start)


def _measure(name: str, index: FileIndex, recipes: Sequence[Recipe], plan: LoaderPlan) -> list[dict[str, Any]]:
    files = _files(index)
    for path in files:  # into the page cache: every figure then measures decoding, not the disk
        Path(path).read_bytes()
    before = bare_decode_rate(files)
    rates = [(recipe, decoder, workers, loader_rate(index, make(), batch, workers, decoder))
             for recipe, make, batch, decoder in recipes for workers in plan.workers]
    bare = max(before, bare_decode_rate(files))
    print(f"[bench loader] {name}: {len(files)} files, bare decode {bare:.0f} images/s", flush=True)
    return [{"set": name, "images": len(files), "recipe": recipe, "decoder": decoder, "workers": workers,
             "images_per_s": round(rate, 1), "bare_decode_per_s": round(bare, 1), "ratio": round(rate / bare, 3)}
            for recipe, decoder, workers, rate in rates]


def run_loader_benchmark(cifar: str | Path, results: str | Path, plan: LoaderPlan = LoaderPlan(),
                         scratch: str | Path = "runs/bench_loader", command: str = "") -> list[dict[str, Any]]:
    """Measure every (set, recipe, worker count); write records to ``results`` and a meta file beside it."""
    torch.set_num_threads(max(1, torch.get_num_threads()))
    start = time.time()
    cifar_index = FileIndex.from_folder(split_dir(cifar, "train"))
    if plan.cifar_images < len(cifar_index):
        pick = np.random.default_rng(0).permutation(len(cifar_index))[: plan.cifar_images]
        cifar_index = cifar_index.subset(np.sort(pick))
    w, h = plan.large_size
    large = FileIndex.from_folder(generate_jpegs(Path(scratch) / f"jpeg{w}x{h}", plan.large_images, plan.large_size))
    decoders = available_decoders()
    fast = decoders[-1]
    records = _measure("cifar10 train (32x32 JPEG)", cifar_index,
                       [("cifar: decode -> uint8 batch", lambda: CenterCrop(32), 256, d) for d in decoders], plan)
    records += _measure(f"generated {w}x{h} JPEG", large, [
        *[("imagenet train: RandomResizedCrop 224 + flip", lambda: RandomResizedCrop(224), 64, d) for d in decoders],
        ("imagenet train + TrivialAugment", lambda: RandomResizedCrop(224, policy=create_policy("trivialaugment")), 64,
         fast),
        ("imagenet eval: resize 256 + center crop 224", lambda: CenterCrop(224, 0.875), 64, fast),
    ], plan)
    save_records(results, records, {
        "command": command, "seconds": round(time.time() - start), "target_ratio": TARGET,
        "machine": machine(), "cpus": os.cpu_count(), "torch": torch.__version__,
        "pillow": Image.__version__, "decoders": decoders})
    return records


def format_loader_table(records: Sequence[dict[str, Any]]) -> str:
    """Markdown: one row per (set, recipe, workers), the ratio to the bare decode rate and the verdict."""
    lines = ["| files | recipe | decoder | workers | images/s | bare Pillow decode images/s | ratio | >= 0.8x |",
             "|---|---|---|---:|---:|---:|---:|:---:|"]
    for r in records:
        ok = "yes" if r["ratio"] >= TARGET else "no"
        lines.append(f"| {r['set']} | {r['recipe']} | {r['decoder']} | {r['workers']} | {r['images_per_s']:.0f} | "
                     f"{r['bare_decode_per_s']:.0f} | {r['ratio']:.2f} | {ok} |")
    return "\n".join(lines)
