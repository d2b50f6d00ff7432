"""One protocol for every adaptive model: BasisNet, a static MobileNet, CondConv, MSDNet and RANet.

Each peer (``peers.PEERS``) is trained on CIFAR-10 with one recipe and epoch budget (its bundled
``cifar10_*`` config, identical training keys; BasisNet with its default one-run recipe), then evaluated
from cached exit logits under both protocols of MSDNet / RANet: anytime prediction (every exit) and
budgeted batch classification (thresholds fitted on the validation split, applied to test). BasisNet's
targets (gain over its static backbone and CondConv, early-exit saving, the shortcut diagnostic) go to
the meta file. Runs share a directory with ``bench accuracy`` (the static x0.5 is the same run) and with
``bench regime`` and ``bench distill``. ``seeds`` > 1 trains the headline pair (BasisNet, its static
backbone) once per seed, so a gain can be told from the spread of seeds.
"""

from __future__ import annotations

import json
from argparse import Namespace
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..evaluate import best_within, compare_curves, plot_models
from ..workflow import shortcut_run
from .evaluations import protocols
from .peers import BASISNET, CONDCONV, PEERS, RUNS, STATIC, peer_options, peer_overrides, peer_suffix
from .records import meta_path
from .study import Kept, Option, Outcome, Plan, Run, Study, cifar_epochs, register_study

__all__ = ["BUDGETS", "COMPARE", "SEEDED", "format_compare_table", "format_compare_targets", "format_seed_table",
           "format_verdicts", "seed_run", "seed_spread", "targets", "verdicts"]

BUDGETS: tuple[float, ...] = (2, 4, 6, 8, 12, 16, 24)  # MAdds (M) columns of the summary table
SEEDED = (BASISNET, STATIC)  # the headline pair: trained with every seed of --seeds


def seed_run(run: str, seed: int) -> str:
    """Run directory name of one seed of a peer: seed 0 keeps the plain name (runs made before seeds reuse)."""
    return run if seed == 0 else f"{run}_seed{seed}"


def _kept(results: Path, models: Sequence[str]) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]:
    """Records (per peer label) of the peers not in ``models`` and the meta of an earlier run (``--models``)."""
    meta_file = meta_path(results)
    if not results.is_file() or not meta_file.is_file():
        raise ValueError(f"--models re-runs some peers and keeps the others from {results}, which does not exist")
    old, meta = json.loads(results.read_text()), json.loads(meta_file.read_text())
    kept = [peer for peer in PEERS if peer.run not in models]
    records = {peer.label: [r for r in old if r["model"] == peer.label] for peer in kept}
    missing = [peer.run for peer in kept if not records[peer.label]]
    if missing:
        raise ValueError(f"{results} holds no records of {missing}: add them to --models")
    return records, meta


def plan(opts: Namespace, out: Path) -> Plan:
    """Every peer (seeds of the headline pair), or with ``--models`` only those, the others kept from
    ``--results``; ``--teacher``: every peer distils from that trained run, so the comparison stays fair."""
    names = [peer.run for peer in PEERS]
    models = opts.models or []
    unknown = sorted(set(models) - set(names))
    if unknown:
        raise ValueError(f"unknown --models {unknown}; choose from {names}")
    seeds = 1 if opts.seeds is None else opts.seeds
    if seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {seeds}")
    if opts.teacher is not None and not Path(opts.teacher).exists():
        raise ValueError(f"--teacher {opts.teacher} does not exist: pass a trained run directory or weights file")
    epochs, common = cifar_epochs(opts.quick, opts.epochs), peer_overrides(opts)
    kept, old_meta = _kept(opts.results, models) if models else ({}, {})
    runs: list[Run | Kept] = []
    for peer in PEERS:
        names_of_seeds = [seed_run(peer.run, seed) for seed in range(seeds if peer.label in SEEDED else 1)]
        if peer.label in kept:
            old_minutes = old_meta["train_minutes"]
            runs.append(Kept(peer.run, tuple(kept[peer.label]),
                             {run: old_minutes[run] for run in names_of_seeds if run in old_minutes}))
            continue
        runs += [Run(name, peer.config, opts.data, epochs, protocols(), (*common, *peer.overrides), seed=seed,
                     label=peer.label, extra={"seed": seed}) for seed, name in enumerate(names_of_seeds)]
    facts = {"teacher": None if opts.teacher is None else str(opts.teacher),
             "kept_from_earlier_run": sorted(set(names) - set(models)) if models else []}
    if BASISNET in kept:
        facts["shortcut_val"] = old_meta.get("shortcut_val")
    return Plan(tuple(runs), opts, opts.quick, epochs, facts)


def _subset(run: Run) -> str | None:
    """The training images a run was given (``data.subset``), None when all."""
    return next((o.split("=", 1)[1] for o in reversed(run.overrides) if o.startswith("data.subset=")), None)


def plot(outcome: Outcome, path: Path) -> None:
    records, seeds = outcome.records, outcome.plan.options.seeds or 1
    trained = [run for run in outcome.plan.runs if isinstance(run, Run)]
    subset = _subset(trained[0]) if trained else None
    spread = seed_spread(records)
    plot_models({peer.label: (_curve(records, peer.label, "budgeted-batch"), _curve(records, peer.label, "anytime"))
                 for peer in PEERS}, path,
                title=f"CIFAR-10 test{f', {subset} training images' if subset else ''}, {outcome.plan.epochs} epochs "
                      "each: budgeted batch (lines), anytime (circles)" + (f", bars: {seeds} seeds" if seeds > 1 else ""),
                emphasis=BASISNET,
                spread={label: [(e["madds"], e["mean"], e["min"], e["max"]) for e in spread[label]]
                        for label in SEEDED if seeds > 1})


def summarize(outcome: Outcome) -> dict[str, Any]:
    records = outcome.records
    found = {"verdicts": verdicts(records), "targets": targets(records), "seed_spread": seed_spread(records)}
    if "shortcut_val" not in outcome.plan.facts:  # BasisNet was trained or reused: its diagnostic, on val
        run = outcome.out / PEERS[0].run
        found["shortcut_val"] = {k: round(v, 2) for k, v in shortcut_run(run, "val").as_dict().items()}
    return found


def report(records: list[dict[str, Any]], meta: dict[str, Any], opts: Namespace) -> list[str]:
    seeds = [format_seed_table(meta["seed_spread"])] if (opts.seeds or 0) > 1 else []
    return [format_compare_table(records), *seeds, format_verdicts(meta["verdicts"]), format_compare_targets(meta)]


def _curve(records: list[dict[str, Any]], label: str, protocol: str) -> list[tuple[float, float]]:
    """Seed 0's operating points: curves are drawn and compared from one run per model; seeds give spread."""
    return [(r["madds"], r["top1"]) for r in records
            if r["model"] == label and r["protocol"] == protocol and r.get("seed", 0) == 0]


def seed_spread(records: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Per model and exit (anytime protocol): test top-1 of every seed, their mean, min and max."""
    out: dict[str, list[dict[str, Any]]] = {}
    for label in dict.fromkeys(r["model"] for r in records):
        rows = [r for r in records if r["model"] == label and r["protocol"] == "anytime"]
        exits = sorted({r["exit"] for r in rows})
        out[label] = []
        for k in exits:
            top1 = [r["top1"] for r in sorted(rows, key=lambda r: r.get("seed", 0)) if r["exit"] == k]
            out[label].append({"exit": k, "madds": next(r["madds"] for r in rows if r["exit"] == k), "top1": top1,
                               "mean": round(sum(top1) / len(top1), 2), "min": min(top1), "max": max(top1)})
    return out


def verdicts(records: list[dict[str, Any]]) -> dict[str, Any]:
    """RANet against MSDNet, and BasisNet against every peer, at every budget both curves reach."""
    labels = list(dict.fromkeys(r["model"] for r in records))
    budgeted = {label: _curve(records, label, "budgeted-batch") for label in labels}
    out: dict[str, Any] = {}
    if "RANet" in budgeted and "MSDNet" in budgeted:
        out["RANet vs MSDNet"] = compare_curves(budgeted["RANet"], budgeted["MSDNet"])
    for basisnet in (label for label in labels if label.startswith("BasisNet")):
        for label in labels:
            if label != basisnet:
                out[f"{basisnet} vs {label}"] = compare_curves(budgeted[basisnet], budgeted[label])
    return out


def targets(records: list[dict[str, Any]]) -> dict[str, Any]:
    """BasisNet's figures against the issue's targets, from the records alone (means over seeds)."""
    spread = seed_spread(records)
    full, static, condconv, light = spread[BASISNET][-1], spread[STATIC][-1], spread[CONDCONV][-1], spread[BASISNET][0]
    early = {r.get("seed", 0): r for r in records if r["model"] == BASISNET and r["protocol"] == "early-exit"}
    last = {r.get("seed", 0): r for r in records if r["model"] == BASISNET and r["protocol"] == "anytime"
            and r["exit"] == full["exit"]}
    savings = [1 - early[s]["madds"] / last[s]["madds"] for s in sorted(early)]
    losses = [last[s]["top1"] - early[s]["top1"] for s in sorted(early)]
    curve = _curve(records, BASISNET, "budgeted-batch")
    reach = min((m for m, top1 in curve if top1 >= static["mean"]), default=None)
    at_condconv = best_within(curve, condconv["madds"])
    return {
        "seeds": {label: len(spread[label][-1]["top1"]) for label in (BASISNET, STATIC)},
        "gain_over_static_pt": round(full["mean"] - static["mean"], 2),
        "worst_minus_best_static_pt": round(full["min"] - static["max"], 2),
        "madds_ratio_to_static": round(full["madds"] / static["madds"], 3),
        "gain_over_condconv_pt": round(full["mean"] - condconv["mean"], 2),
        "early_exit_saving": round(sum(savings) / len(savings), 4),
        "early_exit_loss_pt": round(sum(losses) / len(losses), 2),
        "early_exit_threshold": early[min(early)]["threshold"],
        "lightweight_top1": light["mean"], "lightweight_madds": light["madds"],
        "curve_reaches_static_at_madds_ratio": None if reach is None else round(reach / static["madds"], 3),
        "curve_minus_condconv_pt": None if at_condconv is None else round(at_condconv - condconv["mean"], 2),
    }


def format_compare_targets(meta: dict[str, Any]) -> str:
    """BasisNet's targets from a ``compare_meta.json``, each with its measured figure."""
    t = meta["targets"]
    seeds = t.get("seeds", {}).get(BASISNET, 1)
    mean = f"mean of {seeds} seeds; " if seeds > 1 else ""
    lines = [
        f"BasisNet - static backbone: {t['gain_over_static_pt']:+.2f} pt at {t['madds_ratio_to_static']:.2f}x MAdds "
        "(target >= +1.5 pt at <= 1.35x)" + (f"; {mean}worst BasisNet seed - best static seed: "
                                               f"{t['worst_minus_best_static_pt']:+.2f} pt (target > 0)" if mean else ""),
        f"BasisNet - CondConv: {t['gain_over_condconv_pt']:+.2f} pt (target >= 0)",
        f"early exit (threshold {t['early_exit_threshold']:.2f}, picked on val): saves "
        f"{100 * t['early_exit_saving']:.1f}% of MAdds for {t['early_exit_loss_pt']:.2f} pt (target >= 30% at <= 0.3 pt)",
    ]
    if "lightweight_top1" in t:
        reach, above = t["curve_reaches_static_at_madds_ratio"], t["curve_minus_condconv_pt"]
        lines += [
            f"lightweight exit: {t['lightweight_top1']:.2f}% at {t['lightweight_madds']:.2f}M MAdds (target >= 72%)",
            "early-exit curve reaches the static backbone's top-1 at "
            + ("no budget" if reach is None else f"{reach:.2f}x its MAdds") + " (target <= 0.8x); at CondConv's MAdds: "
            + ("no point" if above is None else f"{above:+.2f} pt") + " (target > 0)",
        ]
    s = meta.get("shortcut_val")
    if s:
        lines.append(f"shortcut diagnostic (val): specialist {s['specialist']:.2f}% with its own coefficients, "
                     f"{s['specialist_mean_coeffs']:.2f}% with their mean ({s['drop']:+.2f} pt)")
    return "\n".join(lines)


def format_seed_table(spread: dict[str, list[dict[str, Any]]]) -> str:
    """Models trained with several seeds: every exit's test top-1 per seed, mean and min-max."""
    lines = ["| model | exit | MAdds (M) | top-1 per seed | mean | min-max |", "|---|---:|---:|---|---:|---|"]
    for label, exits in spread.items():
        if len(exits[-1]["top1"]) > 1:
            lines += [f"| {label} | {e['exit']} | {e['madds']:.2f} | {', '.join(f'{v:.2f}' for v in e['top1'])} | "
                      f"{e['mean']:.2f} | {e['min']:.2f}-{e['max']:.2f} |" for e in exits]
    return "\n".join(lines)


def format_verdicts(found: dict[str, Any]) -> str:
    """One line per comparison: who wins how many of the budgets both can afford, and by how much."""
    lines = []
    for name, v in found.items():
        a = name.split(" vs ")[0]
        lines.append(f"{name}: {a} better at {v['a_wins']}/{v['budgets']} budgets in "
                     f"{v['range'][0]:.2f}-{v['range'][1]:.2f}M MAdds (margin {v['min_margin']:+.2f} to "
                     f"{v['max_margin']:+.2f} pt)")
    return "\n".join(lines)


def format_compare_table(records: Sequence[dict[str, Any]], budgets: Sequence[float] = BUDGETS) -> str:
    """One row per model: size, anytime exits, and the best budgeted-batch top-1 within each budget."""
    head = ["model", "params", "exits", "anytime: top-1 @ MAdds (M) per exit"] + [f"<= {b:g}M" for b in budgets]
    lines = ["| " + " | ".join(head) + " |", "|---|---:|---:|---|" + "---:|" * len(budgets)]
    for label in dict.fromkeys(r["model"] for r in records):
        rows = [r for r in records if r["model"] == label and r.get("seed", 0) == 0]
        exits = [r for r in rows if r["protocol"] == "anytime"]
        curve = [(r["madds"], r["top1"]) for r in rows if r["protocol"] == "budgeted-batch"]
        at = [best_within(curve, b) for b in budgets]
        lines.append("| " + " | ".join([
            label, f"{rows[0]['params'] / 1e6:.2f}M", str(len(exits)),
            ", ".join(f"{r['top1']:.1f}@{r['madds']:.1f}" for r in exits),
            *("-" if v is None else f"{v:.2f}" for v in at)]) + " |")
    return "\n".join(lines)


COMPARE = register_study(Study(
    "compare", "every peer on CIFAR-10, both protocols (anytime, budgeted batch); --seeds, --teacher", plan,
    results="compare", runs=RUNS, report=report, suffix=peer_suffix, summarize=summarize, plot=plot,
    options=(*peer_options("re-run only these peers (run names: basisnet, static_w0.5, condconv, msdnet, ranet), "
                           "keeping the others' records from --results"),
             Option("--epochs", "epochs per model (default 12; --quick: 2)", type=int),
             Option("--seeds", "train BasisNet and its static backbone with this many seeds (train.seed 0..N-1; mean "
                    "and min-max reported; default 1)", type=int))))
