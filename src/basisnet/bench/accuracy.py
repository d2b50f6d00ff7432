"""The CIFAR-10 accuracy benchmark: static MobileNet family vs BasisNet, with and without early exit.

The static family is trained with one recipe and epoch budget (the bundled ``cifar10_static``
config). BasisNet (``cifar10_basisnet``) starts from two of those trained nets and trains a few epochs
more; the control is the static specialist backbone restarted from itself for the same extra epochs
(same schedule, same total), so a gain is not just more training. Models are selected on the held-out
validation split and reported on the test set. Interrupted runs are resumed, finished runs reused, so
the command can be re-run safely.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..evaluate import compare_curves, count_params, exit_accuracy, plot_tradeoff
from ..workflow import exit_logits, load_run, run_exit_madds
from .runs import basisnet_records, plan, record, train_or_reuse, write_meta

STATIC_WIDTHS = (0.35, 0.5, 0.75)
QUICK_WIDTHS = (0.35, 0.5)
SPECIALIST_WIDTH = 0.5  # cifar10_basisnet's specialist_width
LIGHTWEIGHT_WIDTH = 0.35  # and its lightweight_width
# BasisNet starts from the trained static specialist (every basis a noisy copy) and lightweight model,
# then trains this many epochs more: from scratch it learns a routing shortcut (see BENCHMARKS.md).
WARM_EPOCHS = 6


def run_accuracy_benchmark(
    data: str | Path = "../shared/data/cifar10",
    out: str | Path = "runs/bench_cifar10",
    results: str | Path = "benchmarks/results/cifar10.json",
    quick: bool = False,
    epochs: int | None = None,
    overrides: Sequence[str] = (),
    command: str = "basisnet bench accuracy",
    widths: Sequence[float] | None = None,
    warm_epochs: int | None = None,
) -> list[dict[str, Any]]:
    """Train the static family, BasisNet warm-started from two of its members and, as the control, the
    static specialist restarted from itself for as many epochs as BasisNet; evaluate on test, write
    records and a plot.
    """
    p = plan(quick, epochs, data, overrides)
    widths = widths or (QUICK_WIDTHS if quick else STATIC_WIDTHS)
    warm = warm_epochs or (1 if quick else WARM_EPOCHS)
    missing = {SPECIALIST_WIDTH, LIGHTWEIGHT_WIDTH} - set(widths)
    if missing:
        raise ValueError(f"--widths must include {sorted(missing)}: BasisNet starts from those static runs")
    out, results = Path(out), Path(results)
    start = time.time()
    records: list[dict[str, Any]] = []
    family: list[tuple[float, float]] = []
    minutes: dict[str, float] = {}

    def static(width: float, name: str = "", run_name: str = "", extra: Sequence[str] = (),
               init_epochs: int | None = None) -> tuple[float, float]:
        """Train (or reuse) one static net; ``init_epochs``: the epochs of the run it starts from."""
        run = out / (run_name or f"static_w{width}")
        minutes[run.name] = train_or_reuse("cifar10_static", run,
                                           [*p.overrides, f"model.kwargs.width={width}", *extra])
        top1 = exit_accuracy(exit_logits(run, "test"))[-1]
        madds = run_exit_madds(run)[-1]
        model, cfg = load_run(run)
        budget = {"epochs": cfg.train.epochs + (init_epochs or 0)}
        if init_epochs is not None:
            budget["init_epochs"] = init_epochs
        records.append(record(f"mobilenetv3_small_w{width}{name}", top1, madds, count_params(model),
                               command=command, **budget))
        return madds, top1

    for width in sorted(widths):
        family.append(static(width, name=" (specialist backbone)" if width == SPECIALIST_WIDTH else ""))
    # The control: the static specialist given BasisNet's schedule, restarted from itself for `warm` epochs.
    total = p.epochs + warm
    specialist_run = out / f"static_w{SPECIALIST_WIDTH}"
    control = static(SPECIALIST_WIDTH, f" (specialist backbone, {p.epochs} + {warm} epochs as BasisNet)",
                     f"static_w{SPECIALIST_WIDTH}_warm",
                     [f"train.epochs={warm}", f"train.init_from={json.dumps({'model': str(specialist_run)})}"],
                     init_epochs=p.epochs)

    run = out / "basisnet_warm"
    init = json.dumps({"specialist": str(specialist_run), "lightweight": str(out / f"static_w{LIGHTWEIGHT_WIDTH}")})
    minutes[run.name] = train_or_reuse("cifar10_basisnet", run,
                                       [*p.overrides, f"train.epochs={warm}", f"train.init_from={init}"])
    result = basisnet_records(run, "basisnet", command, epochs=total, init_epochs=p.epochs)
    records += result.records
    madds, full_top1, chosen, threshold, sweep_curve = (result.madds, result.top1[1], result.chosen, result.threshold,
                                                        result.sweep)
    family.sort()

    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(records, indent=2) + "\n")
    plot_tradeoff(
        {f"static MobileNetV3-Small family ({p.epochs} epochs)": family,
         f"BasisNet early exit (test sweep; {p.epochs} static + {warm} epochs)": sweep_curve},
        {f"static specialist backbone, {p.epochs} + {warm} epochs (control)": [control],
         "BasisNet (no early exit)": [(madds[1], full_top1)],
         f"BasisNet early exit, threshold {threshold:.2f} (picked on val)": [(chosen["madds"], chosen["top1"])]},
        results.with_suffix(".png"), title="CIFAR-10 test: static nets vs BasisNet warm-started from them",
    )
    targets = {
        "gain_over_control_pt": round(full_top1 - control[1], 2), "madds_ratio_to_control": round(madds[1] / control[0], 3),
        "early_exit_saving": round(1 - chosen["madds"] / madds[1], 4),
        "early_exit_loss_pt": round(full_top1 - chosen["top1"], 2),
        "curve_vs_static_family": compare_curves(sweep_curve, family),
    }
    write_meta(results, start, p, minutes, warm_epochs=warm, targets=targets)
    return records


def format_targets(meta: dict[str, Any]) -> str:
    """The issue's three targets from a ``cifar10_meta.json``, each with its measured figure."""
    t = meta["targets"]
    curve = t["curve_vs_static_family"]
    return "\n".join([
        f"BasisNet - control: {t['gain_over_control_pt']:+.2f} pt at {t['madds_ratio_to_control']:.2f}x MAdds "
        "(target >= +1.5 pt at <= 1.35x)",
        f"early exit: saves {100 * t['early_exit_saving']:.1f}% of MAdds for {t['early_exit_loss_pt']:.2f} pt "
        "(target >= 30% at <= 0.3 pt)",
        f"curve above the static family at {curve['a_wins']}/{curve['budgets']} budgets in "
        f"{curve['range'][0]:.2f}-{curve['range'][1]:.2f}M (margin {curve['min_margin']:+.2f} to "
        f"{curve['max_margin']:+.2f} pt)",
    ])


def format_table(records: Sequence[dict[str, Any]]) -> str:
    """The records as a Markdown table (what BENCHMARKS.md shows)."""
    lines = ["| model | top-1 (%) | MAdds (M) | params | threshold | exit fraction |", "|---|---:|---:|---:|---:|---:|"]
    for r in records:
        thr = "" if r["threshold"] is None else f"{r['threshold']:.2f}"
        frac = "" if r["exit_fraction"] is None else f"{r['exit_fraction']:.2f}"
        lines.append(f"| {r['model']} | {r['top1']:.2f} | {r['madds']:.2f} | {r['params'] / 1e6:.2f}M | {thr} | {frac} |")
    return "\n".join(lines)
