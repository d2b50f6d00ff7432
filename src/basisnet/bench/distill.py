"""Self-distillation on and off for every multi-exit peer (BasisNet, MSDNet, RANet), budgeted curves side by side.

The bundled config's setting is ``bench compare``'s own run; the other setting (``train.self_distill=0``
when the config distils, else ``train.self_distill=0.5``) trains into ``<run>_sd<w>`` in the same runs
folder. The table reads each model's curve at three budgets: its first exit's, a middle exit's and its
last exit's MAdds.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..configs import bundled_config
from ..evaluate import best_within, plot_tradeoff
from ..train import load_config
from .compare import PEERS, evaluate_peer
from .runs import plan, train_or_reuse, write_meta

__all__ = ["DISTILLED", "format_distill_table", "run_distill_benchmark", "self_distill_budgets"]

DISTILLED = ("BasisNet", "MSDNet", "RANet")  # the peers with more than one exit
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


def run_distill_benchmark(
    data: str | Path = "../shared/data/cifar10",
    out: str | Path = "runs/bench_cifar10",
    results: str | Path = "benchmarks/results/distill.json",
    quick: bool = False,
    epochs: int | None = None,
    overrides: Sequence[str] = (),
    command: str = "basisnet bench distill",
    teacher: str | Path | None = None,
    models: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Train (or reuse) every multi-exit peer (or those ``models`` names) with self-distillation on and off;
    records, budgets and one plot."""
    every = [peer for peer in PEERS if peer.label in DISTILLED]
    unknown = sorted(set(models or ()) - {peer.run for peer in every})
    if unknown:
        raise ValueError(f"unknown --models {unknown}; choose from {[peer.run for peer in every]}")
    peers = [peer for peer in every if not models or peer.run in models]
    p = plan(quick, epochs, data, [*overrides, *([f"train.kd_teacher={teacher}"] if teacher else [])])
    out, results = Path(out), Path(results)
    start = time.time()
    records: list[dict[str, Any]] = []
    minutes: dict[str, float] = {}
    for peer in peers:
        bundled = load_config(bundled_config(peer.config)).train.self_distill
        other = 0.0 if bundled else _OTHER_WEIGHT
        for weight, name, extra in ((bundled, peer.run, []),
                                    (other, f"{peer.run}_sd{other:g}", [f"train.self_distill={other:g}"])):
            minutes[name] = train_or_reuse(peer.config, out / name, [*p.overrides, *peer.overrides, *extra])
            records += [{**r, "model": _label(peer.label, weight), "base_model": peer.label, "self_distill": weight}
                        for r in evaluate_peer(peer, out / name, p.epochs, command) if r["protocol"] != "early-exit"]
    budgets = self_distill_budgets(records)
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(records, indent=2) + "\n")
    plot_tradeoff({label: [(r["madds"], r["top1"]) for r in records
                           if r["model"] == label and r["protocol"] == "budgeted-batch"]
                   for label in dict.fromkeys(r["model"] for r in records)}, None, results.with_suffix(".png"),
                  title=f"CIFAR-10 test, {p.epochs} epochs: budgeted batch with and without self-distillation")
    write_meta(results, start, p, minutes, budgets=budgets)
    return records


def format_distill_table(records: Sequence[dict[str, Any]]) -> str:
    """One row per model and budget: top-1 with and without self-distillation, and the change."""
    def cell(v: float | None, sign: str = "") -> str:
        return "-" if v is None else f"{v:{sign}.2f}"

    lines = ["| model | self-distill weight | budget (M MAdds) | top-1 with | top-1 without | change (pt) |",
             "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {b['model']} | {b['self_distill']:g} | {b['budget']:.2f} | {cell(b['top1_on'])} | "
              f"{cell(b['top1_off'])} | {cell(b['change_pt'], '+')} |" for b in self_distill_budgets(records)]
    return "\n".join(lines)
