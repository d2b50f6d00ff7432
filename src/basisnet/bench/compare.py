"""One protocol for every adaptive model: BasisNet, a static MobileNet, CondConv, MSDNet and RANet.

Each model is trained on CIFAR-10 with one recipe and epoch budget (its bundled ``cifar10_*`` config,
identical training keys; BasisNet with its default one-run recipe), then evaluated from cached exit
logits under both protocols of MSDNet / RANet: anytime prediction (every exit) and budgeted batch
classification (thresholds fitted on the validation split, applied to test). BasisNet's targets
(gain over its static backbone and CondConv, early-exit saving, the shortcut diagnostic) go to the
meta file. Runs share a directory with ``bench accuracy`` (the static x0.5 is the same run), are reused
when finished with the same config and resumed when interrupted. ``seeds`` > 1 trains the headline pair
(BasisNet, its static backbone) once per seed, so a gain can be told from the spread of seeds;
``bench regime`` and ``bench distill`` read and extend the same runs folder.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple


from ..evaluate import (anytime, apply_threshold, best_within, budgeted_batch, compare_curves, count_params,
                        plot_models, select_threshold)
from ..workflow import exit_logits, load_run, run_exit_madds, shortcut_run
from .records import meta_path
from .runs import MAX_DROP, plan, record, train_or_reuse, write_meta

__all__ = ["BUDGETS", "PEERS", "Peer", "format_compare_table", "format_compare_targets", "format_seed_table",
           "evaluate_peer", "format_verdicts", "run_compare_benchmark", "seed_run", "seed_spread", "targets", "verdicts"]


class Peer(NamedTuple):
    label: str
    config: str  # bundled config name
    run: str  # run directory name under the benchmark's output
    overrides: tuple[str, ...] = ()


BASISNET = "BasisNet"
STATIC = "MobileNetV3-Small x0.5 (static)"
CONDCONV = "CondConv-MobileNetV3-Small x0.5"
PEERS: tuple[Peer, ...] = (  # BasisNet first: the table and the plot lead with it
    Peer(BASISNET, "cifar10_basisnet", "basisnet"),
    Peer(STATIC, "cifar10_static", "static_w0.5", ("model.kwargs.width=0.5",)),
    Peer(CONDCONV, "cifar10_condconv", "condconv"),
    Peer("MSDNet", "cifar10_msdnet", "msdnet"),
    Peer("RANet", "cifar10_ranet", "ranet"),
)

BUDGETS: tuple[float, ...] = (2, 4, 6, 8, 12, 16, 24)  # MAdds (M) columns of the summary table
_NEVER = 1e8  # MSDNet's "nobody exits here" threshold


def _thresholds(values: list[float]) -> list[float | None]:
    """Budgeted-batch thresholds for JSON: null = nobody exits there, 0 = everyone left exits."""
    return [None if v >= _NEVER else max(round(v, 4), 0.0) for v in values]


def seed_run(run: str, seed: int) -> str:
    """Run directory name of one seed of a peer: seed 0 keeps the plain name (runs made before seeds reuse)."""
    return run if seed == 0 else f"{run}_seed{seed}"


def evaluate_peer(peer: Peer, run: Path, epochs: int, command: str, seed: int = 0) -> list[dict[str, Any]]:
    """Every protocol's records of one trained run; ``seed`` is written into each."""
    model, _ = load_run(run)
    params = count_params(model)
    madds = run_exit_madds(run)
    val, test = exit_logits(run, "val"), exit_logits(run, "test")
    command = f"{command} (seed {seed})" if seed else command
    records = [record(peer.label, row["top1"], row["madds"], params, epochs, command, protocol="anytime",
                       exit=row["exit"] + 1, num_exits=len(madds), seed=seed)
               for row in anytime(test, madds)]
    if len(madds) > 1:  # one confidence threshold for every exit, the cheapest within MAX_DROP on val
        threshold = select_threshold(val, madds, max_drop=MAX_DROP)
        chosen = apply_threshold(test, madds, threshold)
        records.append(record(peer.label, chosen["top1"], chosen["madds"], params, epochs, command,
                               threshold=threshold, exit_fraction=chosen["exit_fraction"], num_exits=len(madds),
                               max_drop=MAX_DROP, seed=seed))
    seen = set()
    for row in budgeted_batch(val, test, madds):
        fractions = tuple(round(f, 4) for f in row["exit_fractions"])
        if fractions in seen:  # several priors can route identically (always so with one exit)
            continue
        seen.add(fractions)
        records.append(record(peer.label, row["top1"], row["madds"], params, epochs, command,
                               protocol="budgeted-batch", q=row["q"], num_exits=len(madds),
                               threshold=_thresholds(row["thresholds"]), exit_fraction=list(fractions), seed=seed))
    return records


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


def _kept(results: Path, peers: Sequence[Peer]) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]:
    """Records (per peer label) of ``peers`` and the meta of an earlier run of this benchmark (``--models``)."""
    meta_file = meta_path(results)
    if not results.is_file() or not meta_file.is_file():
        raise ValueError(f"--models re-runs some peers and keeps the others from {results}, which does not exist")
    old, meta = json.loads(results.read_text()), json.loads(meta_file.read_text())
    records = {peer.label: [r for r in old if r["model"] == peer.label] for peer in peers}
    missing = [peer.run for peer in peers if not records[peer.label]]
    if missing:
        raise ValueError(f"{results} holds no records of {missing}: add them to --models")
    return records, meta


SEEDED = (BASISNET, STATIC)  # the headline pair: trained with every seed of --seeds


def run_compare_benchmark(
    data: str | Path = "../shared/data/cifar10",
    out: str | Path = "runs/bench_cifar10",
    results: str | Path = "benchmarks/results/compare.json",
    quick: bool = False,
    epochs: int | None = None,
    overrides: Sequence[str] = (),
    command: str = "basisnet bench compare",
    models: Sequence[str] | None = None,
    seeds: int = 1,
    teacher: str | Path | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Train every peer, evaluate both protocols on test, write records, verdicts, targets and one plot.

    ``models`` (run names, e.g. ``["basisnet"]``): train and evaluate only those peers and keep the
    others' records and training minutes from the existing ``results`` (after a change to one model).
    ``seeds``: BasisNet and its static backbone are trained with ``train.seed`` 0..seeds-1 (same data split
    and subset; runs ``<run>_seed<k>``); curves and verdicts use seed 0, targets the mean over seeds.
    ``teacher``: every peer distils from this trained run (``train.kd_teacher``), so the comparison stays fair.
    """
    names = [peer.run for peer in PEERS]
    unknown = sorted(set(models or ()) - set(names))
    if unknown:
        raise ValueError(f"unknown --models {unknown}; choose from {names}")
    if seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {seeds}")
    if teacher is not None and not Path(teacher).exists():
        raise ValueError(f"--teacher {teacher} does not exist: pass a trained run directory or weights file")
    p = plan(quick, epochs, data, [*overrides, *([f"train.kd_teacher={teacher}"] if teacher else [])])
    out, results = Path(out), Path(results)
    start = time.time()
    kept, old_meta = _kept(results, [peer for peer in PEERS if peer.run not in models]) if models else ({}, {})
    records: list[dict[str, Any]] = []
    minutes: dict[str, float] = {}
    shortcut = old_meta.get("shortcut_val") if BASISNET in kept else None
    for peer in PEERS:
        runs = [seed_run(peer.run, seed) for seed in range(seeds if peer.label in SEEDED else 1)]
        if peer.label in kept:
            records += kept[peer.label]
            minutes.update({run: old_meta["train_minutes"][run] for run in runs if run in old_meta["train_minutes"]})
            continue
        for seed, name in enumerate(runs):
            run = out / name
            minutes[name] = train_or_reuse(peer.config, run, [*p.overrides, *peer.overrides,
                                                              *([f"train.seed={seed}"] if seed else [])])
            records.extend(evaluate_peer(peer, run, p.epochs, command, seed))
        if peer.label == BASISNET:
            shortcut = {k: round(v, 2) for k, v in shortcut_run(out / peer.run, "val").as_dict().items()}
    found = verdicts(records)

    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(records, indent=2) + "\n")
    spread = seed_spread(records)
    subset = next((o.split("=", 1)[1] for o in reversed(p.overrides) if o.startswith("data.subset=")), None)
    plot_models({peer.label: (_curve(records, peer.label, "budgeted-batch"), _curve(records, peer.label, "anytime"))
                 for peer in PEERS}, results.with_suffix(".png"),
                title=f"CIFAR-10 test{f', {subset} training images' if subset else ''}, {p.epochs} epochs each: "
                      "budgeted batch (lines), anytime (circles)" + (f", bars: {seeds} seeds" if seeds > 1 else ""),
                emphasis=BASISNET,
                spread={label: [(e["madds"], e["mean"], e["min"], e["max"]) for e in spread[label]]
                        for label in SEEDED if seeds > 1})
    write_meta(results, start, p, minutes, verdicts=found, targets=targets(records), seed_spread=spread,
               shortcut_val=shortcut, teacher=None if teacher is None else str(teacher),
               kept_from_earlier_run=sorted(set(names) - set(models)) if models else [])
    return records, found


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
