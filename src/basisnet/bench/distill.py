"""Self-distillation on and off for every multi-exit peer (BasisNet, MSDNet, RANet), budgeted curves side by side.

The bundled config's setting is ``bench compare``'s own run; the other setting (``train.self_distill=0``
when the config distils, else ``train.self_distill=0.5``) trains into ``<run>_sd<w>`` in the same runs
folder. The table reads each model's curve at three budgets: its first exit's, a middle exit's and its
last exit's MAdds.
"""

from __future__ import annotations

from argparse import Namespace
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..configs import bundled_config
from ..evaluate import best_within, plot_tradeoff
from ..train import load_config
from .evaluations import protocols
from .peers import BASISNET, MSDNET, RANET, RUNS, peer_options, peer_overrides, peer_suffix, peers
from .study import Option, Outcome, Plan, Run, Study, cifar_epochs, register_study

__all__ = ["DISTILL", "DISTILLED", "format_distill_table", "self_distill_budgets"]

DISTILLED = (BASISNET, MSDNET, RANET)  # the peers with more than one exit
_OTHER_WEIGHT = 0.5  # the weight tried when a bundled config does not distil


def _label(model: str, weight: float) -> str:
    return f"{model}, self-distill {weight:g}" if weight else f"{model}, no self-distill"


def self_distill_budgets(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per model and budget (its first, middle and last exit's MAdds): the best top-1 within it with and without
    (budgeted-batch and anytime points), and the change."""
    rows = []
    for model in dict.fromkeys(r["base_model"] for r in records):
        mine = [r for r in records if r["base_model"] == model]
        exits = sorted(r["madds"] for r in mine if r["protocol"] == "anytime" and r["self_distill"] == 0)
        curve = {w: [(r["madds"], r["top1"]) for r in mine if r["self_distill"] == w]  # anytime exits are points too
                 for w in {r["self_distill"] for r in mine}}
        weight = max(curve)
        for budget in dict.fromkeys([exits[0], exits[len(exits) // 2], exits[-1]]):
            on, off = best_within(curve[weight], budget), best_within(curve[0.0], budget)
            rows.append({"model": model, "self_distill": weight, "budget": budget, "top1_on": on, "top1_off": off,
                         "change_pt": None if on is None or off is None else round(on - off, 2)})
    return rows


def plan(opts: Namespace, out: Path) -> Plan:
    """Every multi-exit peer (or those ``--models`` names) with its bundled self-distillation and the other."""
    every = peers(*DISTILLED)
    unknown = sorted(set(opts.models or ()) - {peer.run for peer in every})
    if unknown:
        raise ValueError(f"unknown --models {unknown}; choose from {[peer.run for peer in every]}")
    epochs, common = cifar_epochs(opts.quick, opts.epochs), peer_overrides(opts)
    runs = []
    for peer in (peer for peer in every if not opts.models or peer.run in opts.models):
        bundled = load_config(bundled_config(peer.config)).train.self_distill
        other = 0.0 if bundled else _OTHER_WEIGHT
        for weight, name, extra in ((bundled, peer.run, ()),
                                    (other, f"{peer.run}_sd{other:g}", (f"train.self_distill={other:g}",))):
            runs.append(Run(name, peer.config, opts.data, epochs, protocols("anytime", "budgeted-batch"),
                            (*common, *peer.overrides, *extra), label=_label(peer.label, weight),
                            extra={"seed": 0, "base_model": peer.label, "self_distill": weight}))
    return Plan(tuple(runs), opts, opts.quick, epochs)


def plot(outcome: Outcome, path: Path) -> None:
    records = outcome.records
    plot_tradeoff({label: [(r["madds"], r["top1"]) for r in records
                           if r["model"] == label and r["protocol"] == "budgeted-batch"]
                   for label in dict.fromkeys(r["model"] for r in records)}, None, path,
                  title=f"CIFAR-10 test, {outcome.plan.epochs} epochs: budgeted batch with and without self-distillation")


def format_distill_table(records: Sequence[dict[str, Any]]) -> str:
    """One row per model and budget: top-1 with and without self-distillation, and the change."""
    def cell(v: float | None, sign: str = "") -> str:
        return "-" if v is None else f"{v:{sign}.2f}"

    lines = ["| model | self-distill weight | budget (M MAdds) | top-1 with | top-1 without | change (pt) |",
             "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {b['model']} | {b['self_distill']:g} | {b['budget']:.2f} | {cell(b['top1_on'])} | "
              f"{cell(b['top1_off'])} | {cell(b['change_pt'], '+')} |" for b in self_distill_budgets(records)]
    return "\n".join(lines)


DISTILL = register_study(Study(
    "distill", "the multi-exit models with and without self-distillation", plan, results="distill", runs=RUNS,
    report=lambda records, meta, opts: [format_distill_table(records)], suffix=peer_suffix,
    summarize=lambda outcome: {"budgets": self_distill_budgets(outcome.records)}, plot=plot,
    options=(*peer_options("the multi-exit peers to study (default basisnet msdnet ranet)"),
             Option("--epochs", "epochs per model (default 12; --quick: 2)", type=int))))
