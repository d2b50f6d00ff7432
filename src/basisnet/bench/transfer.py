"""Transfer on CIFAR-10: is a BasisNet upcycled from a pretrained static net worth more than fine-tuning it?

The pretrained source is a static MobileNetV3-Small (and the lightweight model's static twin) trained on
5 CIFAR-10 classes; the target is the other 5 classes with a few hundred training images per class.
Side by side, same target epochs: the static net fine-tuned; BasisNet with its specialist upcycled from
the static source and its lightweight model started from its own source; both trained from scratch.
The class split is built as a tree of links under the output folder (the CIFAR files stay where they are)
when the plan is made, before anything trains.
"""
from __future__ import annotations

import json
import os
import random
from argparse import Namespace
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..data.folder import scan_image_folder
from ..evaluate import plot_tradeoff
from .evaluations import basisnet_exits, format_records_table, last_exit
from .study import Option, Outcome, Plan, Run, Study, register_study

__all__ = ["TRANSFER", "format_transfer_targets"]

Listing = tuple[list[str], list[str], list[int]]  # scan_image_folder: classes, files, labels
FINETUNED, UPCYCLED = "static, fine-tuned", "BasisNet, upcycled"
STATIC_SCRATCH, BASISNET_SCRATCH = "static, from scratch", "BasisNet, from scratch"
FINETUNE_LR = 0.02  # a fifth of the from-scratch 0.1: the started weights are kept close to their source


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


def plan(opts: Namespace, out: Path) -> Plan:
    """The two sources, then the four target runs; sizes from the options (``--quick``: about a minute)."""
    epochs = opts.epochs or (2 if opts.quick else 30)
    source_epochs = opts.source_epochs or (1 if opts.quick else 15)
    per_class = opts.per_class or (40 if opts.quick else 500)
    val_per_class = max(per_class // 10, 2)  # held out of the target's training images
    source_per_class = opts.source_per_class or (400 if opts.quick else None)  # None: every source training image
    data = Path(opts.data)
    if not (data / "train").is_dir() or not (data / "test").is_dir():
        raise ValueError(f"bench transfer needs an ImageFolder tree ({data}/train/<class>/*, {data}/test/<class>/*)")
    listings = {split: scan_image_folder(data / split) for split in ("train", "test")}  # read once, 60k files
    classes = listings["train"][0]
    if len(classes) < 2:
        raise ValueError(f"{data / 'train'} needs at least 2 classes to split into source and target")
    half = len(classes) // 2
    source = _link_tree(data, listings, out / "data" / "source", classes[:half], source_per_class, seed=0)
    target = _link_tree(data, listings, out / "data" / "target", classes[half:], per_class + val_per_class, seed=0)
    src = ("data.val_size=0.1", f"model.kwargs.num_classes={half}", *opts.overrides)
    tgt = (f"data.val_size={val_per_class * (len(classes) - half)}", f"model.kwargs.num_classes={len(classes) - half}",
           *opts.overrides)
    finetune = (*tgt, f"train.lr={FINETUNE_LR}")
    src_static, src_light = str(out / "source_static"), str(out / "source_lightweight")

    def target_run(name: str, config: str, label: str, overrides: Sequence[str]) -> Run:
        evaluate = basisnet_exits if config == "cifar10_basisnet" else last_exit
        return Run(name, config, target, epochs, evaluate, tuple(overrides), label=label, extra={"run": name})

    runs = (
        Run("source_static", "cifar10_static", source, source_epochs, None, src),
        Run("source_lightweight", "cifar10_static", source, source_epochs, None,
            (*src, "model.kwargs.width=0.35", "model.kwargs.drop_strides=1")),
        target_run("static_finetuned", "cifar10_static", FINETUNED,
                   (*finetune, f"train.init_from={json.dumps({'model': src_static})}")),
        target_run("basisnet_upcycled", "cifar10_basisnet", UPCYCLED,
                   (*finetune, f"train.init_from={json.dumps({'specialist': src_static, 'lightweight': src_light})}")),
        target_run("static_scratch", "cifar10_static", STATIC_SCRATCH, tgt),
        target_run("basisnet_scratch", "cifar10_basisnet", BASISNET_SCRATCH, tgt),
    )
    sizes = {"source_classes": classes[:half], "target_classes": classes[half:], "source_epochs": source_epochs,
             "target_train_per_class": per_class, "target_val_per_class": val_per_class, "finetune_lr": FINETUNE_LR}
    return Plan(runs, opts, opts.quick, epochs, sizes)


def _targets(outcome: Outcome) -> dict[str, Run]:
    return {run.label: run for run in outcome.plan.runs if isinstance(run, Run) and run.evaluate is not None}


def plot(outcome: Outcome, path: Path) -> None:
    runs = _targets(outcome)
    curves = {f"{label}: early exit (test sweep)": outcome.evaluated[run.name].sweep for label, run in runs.items()
              if outcome.evaluated[run.name].sweep is not None}
    points = {label: [outcome.evaluated[run.name].last] for label, run in runs.items()}
    facts = outcome.plan.facts
    plot_tradeoff(curves, points, path,
                  title=f"CIFAR-10 transfer: {len(facts['target_classes'])} new classes, "
                        f"{facts['target_train_per_class']} images each, {outcome.plan.epochs} epochs")


def summarize(outcome: Outcome) -> dict[str, Any]:
    top = {label: outcome.evaluated[run.name].last[1] for label, run in _targets(outcome).items()}
    return {"targets": {
        "upcycled_minus_finetuned_pt": round(top[UPCYCLED] - top[FINETUNED], 2),
        "finetuned_minus_scratch_pt": round(top[FINETUNED] - top[STATIC_SCRATCH], 2),
        "upcycled_minus_scratch_pt": round(top[UPCYCLED] - top[BASISNET_SCRATCH], 2),
    }}


def format_transfer_targets(meta: dict[str, Any]) -> str:
    t = meta["targets"]
    verdict = "met" if t["upcycled_minus_finetuned_pt"] >= 1.0 else "missed"
    return "\n".join([
        f"BasisNet upcycled - static fine-tuned: {t['upcycled_minus_finetuned_pt']:+.2f} pt (target >= +1 pt: {verdict})",
        f"fine-tuned - scratch: static {t['finetuned_minus_scratch_pt']:+.2f} pt, BasisNet "
        f"{t['upcycled_minus_scratch_pt']:+.2f} pt",
    ])


TRANSFER = register_study(Study(
    "transfer", "a pretrained static net fine-tuned vs a BasisNet upcycled from it, on 5 new CIFAR-10 classes", plan,
    results="transfer", runs="bench_transfer",
    report=lambda records, meta, opts: [format_records_table(records), format_transfer_targets(meta)],
    summarize=summarize, plot=plot, data_help="CIFAR-10 root (an ImageFolder tree)",
    options=(
        Option("--quick", "400 source images per class for 1 epoch, 40 target images per class for 2 epochs "
               "(about a minute)", action="store_true", default=False),
        Option("--epochs", "target epochs (default 30; --quick: 2)", type=int),
        Option("--source-epochs", "epochs of the pretrained sources (default 15; --quick: 1)", type=int),
        Option("--per-class", "target training images per class (default 500; --quick: 40)", type=int),
        Option("--source-per-class", cli=False),  # source training images per class (default all; --quick: 400)
    )))
