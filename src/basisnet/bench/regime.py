"""Where BasisNet pays off: its gain over the static backbone and CondConv against training length.

BasisNet, its static backbone and CondConv are trained for each length with the ``bench compare``
recipe in the same runs folder (the compare's own runs serve the length they trained; the others are
``<run>_e<E>``), so a regime study after a compare only trains the missing lengths. The question it
answers: does the gap grow with training (the paper trains hundreds of epochs) or close?
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..evaluate import count_params, exit_accuracy, plot_tradeoff
from ..train import RunDir, load_config
from ..workflow import exit_logits, load_run, run_exit_madds
from .compare import BASISNET, CONDCONV, PEERS, STATIC
from .runs import epochs_done, plan, record, train_or_reuse, write_meta

__all__ = ["LENGTHS", "STUDIED", "format_regime_table", "regime_gains", "run_regime_benchmark"]

LENGTHS: tuple[int, ...] = (3, 6, 12)  # epochs; 12 is bench compare's default, so its runs are reused
STUDIED = (BASISNET, STATIC, CONDCONV)
_RUNS = {peer.run for peer in PEERS if peer.label in STUDIED}


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


def run_regime_benchmark(
    data: str | Path = "../shared/data/cifar10",
    out: str | Path = "runs/bench_cifar10",
    results: str | Path = "benchmarks/results/regime.json",
    lengths: Sequence[int] | None = None,
    quick: bool = False,
    overrides: Sequence[str] = (),
    command: str = "basisnet bench regime",
    teacher: str | Path | None = None,
    models: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Train (or reuse) BasisNet, static and CondConv at every length; records, gains and one plot.

    ``models`` (run names): the peers trained at every length; the others (CondConv, to save time) only
    where a finished run of that length exists already, e.g. bench compare's.
    """
    lengths = sorted(set(lengths or LENGTHS))
    if lengths[0] < 1:
        raise ValueError(f"--lengths must be epochs >= 1, got {lengths}")
    every = set(models or [peer.run for peer in PEERS if peer.label in STUDIED])
    if not {peer.run for peer in PEERS if peer.label in (BASISNET, STATIC)} <= every or every - _RUNS:
        raise ValueError(f"--models must name BasisNet and its static backbone, from {sorted(_RUNS)}; got {sorted(every)}")
    out, results = Path(out), Path(results)
    start = time.time()
    records: list[dict[str, Any]] = []
    minutes: dict[str, float] = {}
    for epochs in lengths:
        p = plan(quick, epochs, data, [*overrides, *([f"train.kd_teacher={teacher}"] if teacher else [])])
        for peer in (peer for peer in PEERS if peer.label in STUDIED):
            name = peer.run if _epochs_of(out / peer.run) == epochs else f"{peer.run}_e{epochs}"
            if peer.run not in every and epochs_done(out / name) < epochs:
                continue
            minutes[name] = train_or_reuse(peer.config, out / name, [*p.overrides, *peer.overrides])
            top1, madds = exit_accuracy(exit_logits(out / name, "test")), run_exit_madds(out / name)
            params = count_params(load_run(out / name)[0])
            records += [record(peer.label, t, m, params, epochs, command, protocol="anytime", exit=k + 1,
                               num_exits=len(madds)) for k, (t, m) in enumerate(zip(top1, madds))]
    gains = regime_gains(records)
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(records, indent=2) + "\n")
    plot_tradeoff({f"{BASISNET} - {peer}": [(g["epochs"], g[key]) for g in gains if g[key] is not None]
                   for peer, key in ((STATIC, "gain_over_static_pt"), (CONDCONV, "gain_over_condconv_pt"))},
                  None, results.with_suffix(".png"), title="CIFAR-10 test: BasisNet's gain against training length",
                  xlabel="training epochs", ylabel="top-1 gain (pt)")
    write_meta(results, start, plan(quick, lengths[-1], data, overrides), minutes, lengths=lengths, gains=gains)
    return records


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
