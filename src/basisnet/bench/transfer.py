"""Transfer on CIFAR-10: is a BasisNet upcycled from a pretrained static net worth more than fine-tuning it?

The pretrained source is a static MobileNetV3-Small (and the lightweight model's static twin) trained on
5 CIFAR-10 classes; the target is the other 5 classes with a few hundred training images per class.
Side by side, same target epochs: the static net fine-tuned; BasisNet with its specialist upcycled from
the static source and its lightweight model started from its own source; both trained from scratch.
The class split is built as a tree of links under the output folder (the CIFAR files stay where they are).
Finished runs are reused, interrupted ones resumed, as in the other benchmarks.
"""
from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..data.folder import scan_image_folder
from ..evaluate import count_params, exit_accuracy, plot_tradeoff
from ..workflow import exit_logits, load_run, run_exit_madds
from .runs import Plan, basisnet_records, record, train_or_reuse, write_meta

__all__ = ["TransferPlan", "format_transfer_table", "format_transfer_targets", "run_transfer_benchmark"]

Listing = tuple[list[str], list[str], list[int]]  # scan_image_folder: classes, files, labels
FINETUNED, UPCYCLED = "static, fine-tuned", "BasisNet, upcycled"
STATIC_SCRATCH, BASISNET_SCRATCH = "static, from scratch", "BasisNet, from scratch"
FINETUNE_LR = 0.02  # a fifth of the from-scratch 0.1: the started weights are kept close to their source


class TransferPlan:
    """Sizes of the benchmark: the source's epochs and images, the target's images per class and epochs."""

    def __init__(self, quick: bool = False, epochs: int | None = None, source_epochs: int | None = None,
                 per_class: int | None = None, source_per_class: int | None = None) -> None:
        self.quick = quick
        self.epochs = epochs or (2 if quick else 30)
        self.source_epochs = source_epochs or (1 if quick else 15)
        self.per_class = per_class or (40 if quick else 500)
        self.val_per_class = max(self.per_class // 10, 2)  # held out of the target's training images
        self.source_per_class = source_per_class or (400 if quick else None)  # None: every source training image


def _link_tree(data: Path, listings: dict[str, Listing], out: Path, classes: Sequence[str], train_limit: int | None,
               seed: int) -> Path:
    """``out/{train,test}/<class>/`` of links to ``data``'s files: every test file, ``train_limit``
    seeded-random training files per class (all when None). A tree made with other settings is refused
    (the runs trained on it would be reused as if they had seen this one)."""
    root = data.resolve()
    manifest = {"data": str(root), "classes": list(classes), "train_limit": train_limit, "seed": seed}
    stamp = out / "split.json"
    if stamp.is_file():
        if json.loads(stamp.read_text()) != manifest:
            raise ValueError(f"{out} holds a class split made with other settings ({stamp.read_text().strip()}): "
                             "pass another --output or remove that directory")
        return out
    for split, (names, files, labels) in listings.items():
        missing = set(classes) - set(names)
        if missing:
            raise ValueError(f"{data / split} has no class folders {sorted(missing)}")
        for name in classes:
            label = names.index(name)
            mine = [f for f, y in zip(files, labels) if y == label]
            if split == "train" and train_limit is not None:
                if len(mine) < train_limit:
                    raise ValueError(f"{data / split / name} has {len(mine)} images; the benchmark takes {train_limit}")
                mine = sorted(random.Random(f"{seed}-{name}").sample(mine, train_limit))
            for rel in mine:
                link = out / split / rel
                if not link.is_symlink():
                    link.parent.mkdir(parents=True, exist_ok=True)
                    os.symlink(root / split / rel, link)
    stamp.write_text(json.dumps(manifest) + "\n")
    return out


def run_transfer_benchmark(
    data: str | Path = "../shared/data/cifar10",
    out: str | Path = "runs/bench_transfer",
    results: str | Path = "benchmarks/results/transfer.json",
    plan: TransferPlan | None = None,
    overrides: Sequence[str] = (),
    command: str = "basisnet bench transfer",
) -> list[dict[str, Any]]:
    """Train the two sources and the four target runs (or reuse them); records, meta and a plot."""
    p = plan or TransferPlan()
    data, out, results = Path(data), Path(out), Path(results)
    start = time.time()
    if not (data / "train").is_dir() or not (data / "test").is_dir():
        raise ValueError(f"bench transfer needs an ImageFolder tree ({data}/train/<class>/*, {data}/test/<class>/*)")
    listings = {split: scan_image_folder(data / split) for split in ("train", "test")}  # read once, 60k files
    classes = listings["train"][0]
    if len(classes) < 2:
        raise ValueError(f"{data / 'train'} needs at least 2 classes to split into source and target")
    half = len(classes) // 2
    source = _link_tree(data, listings, out / "data" / "source", classes[:half], p.source_per_class, seed=0)
    target = _link_tree(data, listings, out / "data" / "target", classes[half:], p.per_class + p.val_per_class, seed=0)
    src_common = [f"data.source={source}", "data.val_size=0.1", f"train.epochs={p.source_epochs}",
                  f"model.kwargs.num_classes={half}", *overrides]
    tgt_common = [f"data.source={target}", f"data.val_size={p.val_per_class * (len(classes) - half)}",
                  f"train.epochs={p.epochs}", f"model.kwargs.num_classes={len(classes) - half}", *overrides]
    finetune = [f"train.lr={FINETUNE_LR}"]
    minutes: dict[str, float] = {}

    def train(config: str, name: str, extra: Sequence[str]) -> Path:
        run = out / name
        minutes[name] = train_or_reuse(config, run, extra)
        return run

    src_static = train("cifar10_static", "source_static", src_common)
    src_light = train("cifar10_static", "source_lightweight",
                      [*src_common, "model.kwargs.width=0.35", "model.kwargs.drop_strides=1"])
    runs = {
        FINETUNED: train("cifar10_static", "static_finetuned", [
            *tgt_common, *finetune, f"train.init_from={json.dumps({'model': str(src_static)})}"]),
        UPCYCLED: train("cifar10_basisnet", "basisnet_upcycled", [
            *tgt_common, *finetune,
            f"train.init_from={json.dumps({'specialist': str(src_static), 'lightweight': str(src_light)})}"]),
        STATIC_SCRATCH: train("cifar10_static", "static_scratch", tgt_common),
        BASISNET_SCRATCH: train("cifar10_basisnet", "basisnet_scratch", tgt_common),
    }

    records, curves, points = [], {}, {}
    for label, run in runs.items():
        extra = {"run": run.name, "epochs": p.epochs}
        if "BasisNet" in label:
            result = basisnet_records(run, label, command, **extra)
            records += result.records
            points[label] = [(result.madds[-1], result.top1[-1])]
            curves[f"{label}: early exit (test sweep)"] = result.sweep
            continue
        model, _ = load_run(run)
        top1, madds = exit_accuracy(exit_logits(run, "test"))[-1], run_exit_madds(run)[-1]
        records.append(record(label, top1, madds, count_params(model), command=command, **extra))
        points[label] = [(madds, top1)]

    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(records, indent=2) + "\n")
    plot_tradeoff(curves, points, results.with_suffix(".png"),
                  title=f"CIFAR-10 transfer: {len(classes) - half} new classes, {p.per_class} images each, "
                        f"{p.epochs} epochs")
    top = {label: point[0][1] for label, point in points.items()}
    targets = {
        "upcycled_minus_finetuned_pt": round(top[UPCYCLED] - top[FINETUNED], 2),
        "finetuned_minus_scratch_pt": round(top[FINETUNED] - top[STATIC_SCRATCH], 2),
        "upcycled_minus_scratch_pt": round(top[UPCYCLED] - top[BASISNET_SCRATCH], 2),
    }
    sizes = {"source_classes": classes[:half], "target_classes": classes[half:], "source_epochs": p.source_epochs,
             "target_train_per_class": p.per_class, "target_val_per_class": p.val_per_class,
             "finetune_lr": FINETUNE_LR}
    write_meta(results, start, Plan(p.quick, p.epochs, []), minutes, targets=targets, **sizes)
    return records


def format_transfer_table(records: Sequence[dict[str, Any]]) -> str:
    lines = ["| model | top-1 (%) | MAdds (M) | params | threshold | exit fraction |", "|---|---:|---:|---:|---:|---:|"]
    for r in records:
        threshold = "" if r["threshold"] is None else f"{r['threshold']:.2f}"
        fraction = "" if r["exit_fraction"] is None else f"{r['exit_fraction']:.2f}"
        lines.append(f"| {r['model']} | {r['top1']:.2f} | {r['madds']:.2f} | {r['params'] / 1e6:.2f}M | {threshold} | "
                     f"{fraction} |")
    return "\n".join(lines)


def format_transfer_targets(meta: dict[str, Any]) -> str:
    t = meta["targets"]
    verdict = "met" if t["upcycled_minus_finetuned_pt"] >= 1.0 else "missed"
    return "\n".join([
        f"BasisNet upcycled - static fine-tuned: {t['upcycled_minus_finetuned_pt']:+.2f} pt (target >= +1 pt: {verdict})",
        f"fine-tuned - scratch: static {t['finetuned_minus_scratch_pt']:+.2f} pt, BasisNet "
        f"{t['upcycled_minus_scratch_pt']:+.2f} pt",
    ])
