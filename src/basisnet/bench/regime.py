"""Where BasisNet pays off: its gain over the static backbone and CondConv against training length.

BasisNet, its static backbone and CondConv are trained for each length with the ``bench compare``
recipe in the same runs folder (the compare's own runs serve the length they trained; the others are
``<run>_e<E>``), so a regime study after a compare only trains the missing lengths. The question it
answers: does the gap grow with training (the paper trains hundreds of epochs) or close?
"""

from __future__ import annotations

from argparse import Namespace
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..evaluate import plot_tradeoff
from ..train import RunDir, load_config
from .evaluations import protocols
from .peers import BASISNET, CONDCONV, RUNS, STATIC, peer_options, peer_overrides, peer_suffix, peers
from .study import Option, Outcome, Plan, Run, Study, register_study

__all__ = ["LENGTHS", "REGIME", "STUDIED", "format_regime_table", "regime_gains"]

LENGTHS: tuple[int, ...] = (3, 6, 12)  # epochs; 12 is bench compare's default, so its runs are reused
STUDIED = (BASISNET, STATIC, CONDCONV)
_RUNS = {peer.run for peer in peers(*STUDIED)}


def _epochs_of(run: Path) -> int | None:
    """The length a run directory was configured for (bench compare's runs are reused at their own length)."""
    config = RunDir(run).config
    return load_config(config).train.epochs if config.is_file() else None


def _last_exit_top1(records: Sequence[dict[str, Any]]) -> dict[tuple[str, int], float]:
    return {(r["model"], r["epochs"]): r["top1"] for r in records if r["exit"] == r["num_exits"]}


def regime_gains(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per training length: BasisNet's last-exit top-1 minus the static backbone's and CondConv's (None for a
    peer not trained at that length)."""
    top1 = _last_exit_top1(records)

    def gain(peer: str, epochs: int) -> float | None:
        return round(top1[BASISNET, epochs] - top1[peer, epochs], 2) if (peer, epochs) in top1 else None

    return [{"epochs": e, "gain_over_static_pt": gain(STATIC, e), "gain_over_condconv_pt": gain(CONDCONV, e)}
            for e in sorted({e for _, e in top1})]


def plan(opts: Namespace, out: Path) -> Plan:
    """BasisNet, static and CondConv at every length; ``--models`` (run names): the peers trained at every
    length, the others (CondConv, to save time) read only where a finished run of that length exists."""
    lengths = sorted(set(opts.lengths or LENGTHS))
    if lengths[0] < 1:
        raise ValueError(f"--lengths must be epochs >= 1, got {lengths}")
    every = set(opts.models or _RUNS)
    if not {peer.run for peer in peers(BASISNET, STATIC)} <= every or every - _RUNS:
        raise ValueError(f"--models must name BasisNet and its static backbone, from {sorted(_RUNS)}; got {sorted(every)}")
    common = peer_overrides(opts)
    runs = tuple(Run(peer.run if _epochs_of(out / peer.run) == epochs else f"{peer.run}_e{epochs}", peer.config,
                     opts.data, epochs, protocols("anytime"), (*common, *peer.overrides), label=peer.label,
                     only_if_trained=peer.run not in every)
                 for epochs in lengths for peer in peers(*STUDIED))
    return Plan(runs, opts, opts.quick, lengths[-1], {"lengths": lengths})


def plot(outcome: Outcome, path: Path) -> None:
    gains = regime_gains(outcome.records)
    plot_tradeoff({f"{BASISNET} - {peer}": [(g["epochs"], g[key]) for g in gains if g[key] is not None]
                   for peer, key in ((STATIC, "gain_over_static_pt"), (CONDCONV, "gain_over_condconv_pt"))},
                  None, path, title="CIFAR-10 test: BasisNet's gain against training length",
                  xlabel="training epochs", ylabel="top-1 gain (pt)")


def format_regime_table(records: Sequence[dict[str, Any]]) -> str:
    """One row per length: each model's last-exit top-1 and BasisNet's gains ("-": not trained at that length)."""
    top1 = _last_exit_top1(records)

    def cell(value: float | None, sign: str = "") -> str:
        return "-" if value is None else f"{value:{sign}.2f}"

    lines = [f"| epochs | {BASISNET} | {STATIC} | {CONDCONV} | gain over static | gain over CondConv |",
             "|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {g['epochs']} | " + " | ".join(cell(top1.get((m, g["epochs"]))) for m in STUDIED) + " | "
              f"{cell(g['gain_over_static_pt'], '+')} | {cell(g['gain_over_condconv_pt'], '+')} |"
              for g in regime_gains(records)]
    return "\n".join(lines)


REGIME = register_study(Study(
    "regime", "BasisNet's gain over static and CondConv against training length", plan, results="regime", runs=RUNS,
    report=lambda records, meta, opts: [format_regime_table(records)], suffix=peer_suffix,
    summarize=lambda outcome: {"gains": regime_gains(outcome.records)}, plot=plot,
    options=(*peer_options("the peers trained at every length (default basisnet static_w0.5 condconv; a peer left "
                           "out is read where its run exists)"),
             Option("--lengths", "training lengths in epochs (default 3 6 12)", type=int, nargs="+"))))
