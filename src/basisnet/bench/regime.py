"""Where BasisNet pays off: its gain over the static backbone and CondConv against training length.

BasisNet, its static backbone and CondConv are trained for each length with the ``bench compare``
recipe in the same runs folder (the compare's own runs serve the length they trained; the others are
``<run>_e<E>``), so a regime study after a compare only trains the missing lengths. The question it
answers: does the gap grow with training (the paper trains hundreds of epochs) or close?
"""

from __future__ import annotations

import json
from argparse import Namespace
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..evaluate import plot_models
from ..train import RunDir, load_config
from .compare import SEEDED, seed_run
from .evaluations import protocols
from .peers import BASISNET, CONDCONV, RUNS, STATIC, peer_options, peer_overrides, peer_suffix, peers
from .records import meta_path, read_meta
from .study import Kept, Option, Outcome, Plan, Run, Study, register_study

__all__ = ["LENGTHS", "REGIME", "STUDIED", "format_regime_table", "regime_gains", "variant_label"]

LENGTHS: tuple[int, ...] = (3, 6, 12)  # epochs; 12 is bench compare's default, so its runs are reused
STUDIED = (BASISNET, STATIC, CONDCONV)
_RUNS = {peer.run for peer in peers(*STUDIED)}


def _epochs_of(run: Path) -> int | None:
    """The length a run directory was configured for (bench compare's runs are reused at their own length)."""
    config = RunDir(run).config
    return load_config(config).train.epochs if config.is_file() else None


def _top1_by_seed(records: Sequence[dict[str, Any]]) -> dict[tuple[str, int], list[float]]:
    """Last-exit test top-1 per (model, epochs), one value per seed in seed order."""
    out: dict[tuple[str, int], list[tuple[int, float]]] = {}
    for r in records:
        if r["exit"] == r["num_exits"] and r.get("protocol", "anytime") == "anytime":
            out.setdefault((r["model"], r["epochs"]), []).append((r.get("seed", 0), r["top1"]))
    return {key: [t for _, t in sorted(values)] for key, values in out.items()}


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def regime_gains(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per training length: BasisNet's mean last-exit top-1 (over its seeds) minus the static backbone's and
    CondConv's (None for a peer not trained at that length), the seeds behind each mean, and with several
    seeds of both the worst BasisNet seed minus the best static seed."""
    top1 = _top1_by_seed(records)

    def gain(peer: str, epochs: int) -> float | None:
        if (peer, epochs) not in top1:
            return None
        return round(_mean(top1[BASISNET, epochs]) - _mean(top1[peer, epochs]), 2)

    rows = []
    for e in sorted({e for m, e in top1 if m == BASISNET}):
        basis, static = top1[BASISNET, e], top1.get((STATIC, e), [])
        rows.append({"epochs": e, "gain_over_static_pt": gain(STATIC, e), "gain_over_condconv_pt": gain(CONDCONV, e),
                     "seeds": {BASISNET: len(basis), STATIC: len(static)},
                     "worst_minus_best_static_pt": round(min(basis) - max(static), 2)
                     if len(basis) > 1 and len(static) > 1 else None})
    return rows


def variant_label(overrides: Sequence[str]) -> str:
    return f"{BASISNET} ({' '.join(overrides)})"


def _earlier_records(opts: Namespace) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Records and training minutes that can stand in for a run no longer on disk: ``bench compare``'s with
    these options (its results file beside the regime's), then this study's own earlier results."""
    records: list[dict[str, Any]] = []
    minutes: dict[str, float] = {}
    for results in (Path(opts.results).with_name(f"compare{peer_suffix(opts)}.json"), Path(opts.results)):
        if results.is_file():
            records += json.loads(results.read_text())
            if meta_path(results).is_file():
                minutes = {**read_meta(results).get("train_minutes", {}), **minutes}
    return records, minutes


def plan(opts: Namespace, out: Path) -> Plan:
    """BasisNet, static and CondConv at every length; ``--models`` (run names): the peers trained at every
    length, the others (CondConv, to save time) read only where a finished run of that length exists.
    ``--seeds N``: the headline pair with N seeds at the longest length (the other lengths: the seeds whose
    runs exist). A run no longer on disk is read from the records that hold it (compare's, or this study's
    own earlier results), so removed runs need not be trained again. ``--variant NAME KEY=VALUE ...``: BasisNet once more
    at the longest length with those overrides, every seed (runs ``basisnet_NAME_e<E>``)."""
    lengths = sorted(set(opts.lengths or LENGTHS))
    if lengths[0] < 1:
        raise ValueError(f"--lengths must be epochs >= 1, got {lengths}")
    seeds = opts.seeds or 1
    if seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {seeds}")
    every = set(opts.models or _RUNS)
    if not {peer.run for peer in peers(BASISNET, STATIC)} <= every or every - _RUNS:
        raise ValueError(f"--models must name BasisNet and its static backbone, from {sorted(_RUNS)}; got {sorted(every)}")
    variant = tuple(opts.variant or ())
    if variant and (len(variant) < 2 or "=" in variant[0] or not all("=" in v for v in variant[1:])):
        raise ValueError(f"--variant takes a NAME and KEY=VALUE overrides, got {' '.join(variant)}")
    common = peer_overrides(opts)
    earlier, earlier_minutes = _earlier_records(opts)
    runs: list[Run | Kept] = []
    for epochs in lengths:
        for peer in peers(*STUDIED):
            for seed in range(seeds if peer.label in SEEDED else 1):
                plain = seed_run(peer.run, seed)
                name = plain if _epochs_of(out / plain) == epochs else seed_run(f"{peer.run}_e{epochs}", seed)
                kept = [r for r in earlier if r["model"] == peer.label and r["epochs"] == epochs
                        and r.get("seed", 0) == seed and r.get("protocol") == "anytime"]
                kept = [r for r in kept if r.get("command") == kept[0].get("command")]  # one file's records
                if not (out / name).exists() and kept:
                    runs.append(Kept(name, tuple({**r, "seed": seed} for r in kept),
                                     {name: earlier_minutes.get(name, earlier_minutes.get(plain, 0.0))}))
                    continue
                longest = epochs == lengths[-1]
                runs.append(Run(name, peer.config, opts.data, epochs, protocols("anytime"), (*common, *peer.overrides),
                                seed=seed, label=peer.label, extra={"seed": seed},
                                only_if_trained=peer.run not in every or (seed > 0 and not longest)))
    if variant:
        name, overrides = variant[0], variant[1:]
        basis = peers(BASISNET)[0]
        runs += [Run(seed_run(f"{basis.run}_{name}_e{lengths[-1]}", seed), basis.config, opts.data, lengths[-1],
                     protocols("anytime"), (*common, *overrides), seed=seed, label=variant_label(overrides),
                     extra={"seed": seed}) for seed in range(seeds)]
    return Plan(tuple(runs), opts, opts.quick, lengths[-1],
                {"lengths": lengths, "seeds": seeds, "variant": list(variant)})


def plot(outcome: Outcome, path: Path) -> None:
    """Top-1 against training length per model: the mean over seeds joined by a line, min-max bars."""
    top1 = _top1_by_seed(outcome.records)
    models = sorted({m for m, _ in top1}, key=lambda m: (m not in STUDIED, STUDIED.index(m) if m in STUDIED else 0, m))
    series = {m: sorted((e, _mean(v), min(v), max(v)) for (mm, e), v in top1.items() if mm == m) for m in models}
    plot_models({m: ([(e, mean) for e, mean, _, _ in pts], []) for m, pts in series.items()}, path,
                title="CIFAR-10 test: top-1 against training length (mean, min-max over seeds)",
                xlabel="training epochs", emphasis=BASISNET, curve_name="mean over seeds",
                spread={m: pts for m, pts in series.items() if any(len(v) > 1 for (mm, _), v in top1.items() if mm == m)})


def _cell(values: Sequence[float] | None) -> str:
    if not values:
        return "-"
    return f"{values[0]:.2f}" if len(values) == 1 else f"{_mean(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def format_regime_table(records: Sequence[dict[str, Any]]) -> str:
    """One row per length: each model's last-exit top-1 (mean and min-max over seeds), BasisNet's gains of the
    means, and with seeds the worst BasisNet seed minus the best static seed ("-": not trained at that length);
    then a row per variant."""
    top1 = _top1_by_seed(records)

    def signed(value: float | None) -> str:
        return "-" if value is None else f"{value:+.2f}"

    lines = [f"| epochs | seeds | {BASISNET} | {STATIC} | {CONDCONV} | gain over static | worst {BASISNET} - best "
             f"static | gain over CondConv |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for g in regime_gains(records):
        e = g["epochs"]
        lines.append(f"| {e} | {g['seeds'][BASISNET]} / {g['seeds'][STATIC]} | " +
                     " | ".join(_cell(top1.get((m, e))) for m in STUDIED) +
                     f" | {signed(g['gain_over_static_pt'])} | {signed(g['worst_minus_best_static_pt'])} | "
                     f"{signed(g['gain_over_condconv_pt'])} |")
    variants = sorted({m for m, _ in top1 if m not in STUDIED})
    if variants:
        lines += ["", f"| variant | epochs | seeds | top-1 | gain over static | vs {BASISNET} as bundled |",
                  "|---|---:|---:|---:|---:|---:|"]
        for m in variants:
            for (mm, e), values in sorted(top1.items()):
                if mm != m:
                    continue
                static, basis = top1.get((STATIC, e)), top1.get((BASISNET, e))
                lines.append(f"| {m} | {e} | {len(values)} | {_cell(values)} | "
                             f"{signed(round(_mean(values) - _mean(static), 2) if static else None)} | "
                             f"{signed(round(_mean(values) - _mean(basis), 2) if basis else None)} |")
    return "\n".join(lines)


REGIME = register_study(Study(
    "regime", "BasisNet's gain over static and CondConv against training length", plan, results="regime", runs=RUNS,
    report=lambda records, meta, opts: [format_regime_table(records)], suffix=peer_suffix,
    summarize=lambda outcome: {"gains": regime_gains(outcome.records)}, plot=plot,
    options=(*peer_options("the peers trained at every length (default basisnet static_w0.5 condconv; a peer left "
                           "out is read where its run exists)"),
             Option("--lengths", "training lengths in epochs (default 3 6 12)", type=int, nargs="+"),
             Option("--seeds", "BasisNet and its static backbone with N seeds at the longest length (default 1)",
                    type=int),
             Option("--variant", "NAME KEY=VALUE ...: BasisNet once more at the longest length with these "
                    "overrides, every seed (runs basisnet_NAME_e<E>)", nargs="+"))))
