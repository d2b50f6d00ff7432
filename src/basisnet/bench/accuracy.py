"""The CIFAR-10 accuracy study: static MobileNet family vs BasisNet, with and without early exit.

The static family is trained with one recipe and epoch budget (the bundled ``cifar10_static``
config). BasisNet (``cifar10_basisnet``) starts from two of those trained nets and trains a few epochs
more; the control is the static specialist backbone restarted from itself for the same extra epochs
(same schedule, same total), so a gain is not just more training. Models are selected on the held-out
validation split and reported on the test set.
"""

from __future__ import annotations

import json
from argparse import Namespace
from pathlib import Path
from typing import Any

from ..evaluate import compare_curves, plot_tradeoff
from .evaluations import basisnet_exits, format_records_table, last_exit
from .study import Option, Outcome, Plan, Run, Study, cifar_epochs, quick_overrides, register_study

__all__ = ["ACCURACY", "format_targets"]

STATIC_WIDTHS = (0.35, 0.5, 0.75)
QUICK_WIDTHS = (0.35, 0.5)
SPECIALIST_WIDTH = 0.5  # cifar10_basisnet's specialist_width
LIGHTWEIGHT_WIDTH = 0.35  # and its lightweight_width
# BasisNet starts from the trained static specialist (every basis a noisy copy) and lightweight model,
# then trains this many epochs more: from scratch it learns a routing shortcut (see docs/benchmarks.md).
WARM_EPOCHS = 6
CONTROL, BASISNET = f"static_w{SPECIALIST_WIDTH}_warm", "basisnet_warm"


def plan(opts: Namespace, out: Path) -> Plan:
    epochs = cifar_epochs(opts.quick, opts.epochs)
    widths = opts.widths or (QUICK_WIDTHS if opts.quick else STATIC_WIDTHS)
    warm = opts.warm_epochs or (1 if opts.quick else WARM_EPOCHS)
    missing = {SPECIALIST_WIDTH, LIGHTWEIGHT_WIDTH} - set(widths)
    if missing:
        raise ValueError(f"--widths must include {sorted(missing)}: BasisNet starts from those static runs")
    common = (*quick_overrides(opts.quick), *opts.overrides)

    def static(width: float, name: str = "", run: str = "", length: int = epochs, extra: tuple[str, ...] = (),
               init_epochs: int | None = None) -> Run:
        return Run(run or f"static_w{width}", "cifar10_static", opts.data, length, last_exit,
                   (*common, f"model.kwargs.width={width}", *extra), label=f"mobilenetv3_small_w{width}{name}",
                   init_epochs=init_epochs)

    family = [static(w, " (specialist backbone)" if w == SPECIALIST_WIDTH else "") for w in sorted(widths)]
    specialist = str(out / f"static_w{SPECIALIST_WIDTH}")
    init = {"specialist": specialist, "lightweight": str(out / f"static_w{LIGHTWEIGHT_WIDTH}")}
    return Plan((
        *family,
        # The control: the static specialist given BasisNet's schedule, restarted from itself for `warm` epochs.
        static(SPECIALIST_WIDTH, f" (specialist backbone, {epochs} + {warm} epochs as BasisNet)", run=CONTROL,
               length=warm, extra=(f"train.init_from={json.dumps({'model': specialist})}",), init_epochs=epochs),
        Run(BASISNET, "cifar10_basisnet", opts.data, warm, basisnet_exits,
            (*common, f"train.init_from={json.dumps(init)}"), label="basisnet", init_epochs=epochs),
    ), opts, opts.quick, epochs, {"warm_epochs": warm})


def _family(outcome: Outcome) -> list[tuple[float, float]]:
    """The static family's (MAdds, top-1) points, the control left out."""
    return sorted(e.last for name, e in outcome.evaluated.items() if name not in (CONTROL, BASISNET))


def plot(outcome: Outcome, path: Path) -> None:
    epochs, warm = outcome.plan.epochs, outcome.plan.facts["warm_epochs"]
    basis, control = outcome.evaluated[BASISNET], outcome.evaluated[CONTROL]
    plot_tradeoff(
        {f"static MobileNetV3-Small family ({epochs} epochs)": _family(outcome),
         f"BasisNet early exit (test sweep; {epochs} static + {warm} epochs)": basis.sweep},
        {f"static specialist backbone, {epochs} + {warm} epochs (control)": [control.last],
         "BasisNet (no early exit)": [(basis.madds[1], basis.top1[1])],
         f"BasisNet early exit, threshold {basis.threshold:.2f} (picked on val)":
             [(basis.chosen["madds"], basis.chosen["top1"])]},
        path, title="CIFAR-10 test: static nets vs BasisNet warm-started from them",
    )


def summarize(outcome: Outcome) -> dict[str, Any]:
    basis, (control_madds, control_top1) = outcome.evaluated[BASISNET], outcome.evaluated[CONTROL].last
    full_top1, chosen = basis.top1[1], basis.chosen
    return {"targets": {
        "gain_over_control_pt": round(full_top1 - control_top1, 2),
        "madds_ratio_to_control": round(basis.madds[1] / control_madds, 3),
        "early_exit_saving": round(1 - chosen["madds"] / basis.madds[1], 4),
        "early_exit_loss_pt": round(full_top1 - chosen["top1"], 2),
        "curve_vs_static_family": compare_curves(basis.sweep, _family(outcome)),
    }}


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


ACCURACY = register_study(Study(
    "accuracy", "warm-started BasisNet vs the static family and a control", plan, results="cifar10",
    runs="bench_cifar10", report=lambda records, meta, opts: [format_records_table(records), format_targets(meta)],
    options=(
        Option("--quick", "the same code on 4,000 images, 2 + 1 epochs", action="store_true", default=False),
        Option("--epochs", "epochs of the static nets (default 12; --quick: 2)", type=int),
        Option("--widths", "static MobileNetV3-Small widths (default 0.35 0.5 0.75; must include 0.35 and 0.5)",
               type=float, nargs="+"),
        Option("--warm-epochs", "BasisNet's epochs on top of the static nets (default 6; --quick: 1)", type=int),
    ), summarize=summarize, plot=plot))
