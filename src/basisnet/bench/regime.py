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
from .runs import plan, record, train_or_reuse, write_meta

__all__ = ["LENGTHS", "format_regime_table", "regime_gains", "run_regime_benchmark"]

LENGTHS: tuple[int, ...] = (3, 6, 12)  # epochs; 12 is bench compare's default, so its runs are reused


def _epochs_of(run: Path) -> int | None:
    """The length a run directory was configured for (bench compare's runs are reused at their own length)."""
    config = RunDir(run).config
    return load_config(config).train.epochs if config.is_file() else None


def regime_gains(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per training length: BasisNet's last-exit top-1 minus the static backbone's and CondConv's."""
    top1 = {(r["model"], r["epochs"]): r["top1"] for r in records if r["exit"] == r["num_exits"]}
    return [{"epochs": e, "gain_over_static_pt": round(top1[BASISNET, e] - top1[STATIC, e], 2),
             "gain_over_condconv_pt": round(top1[BASISNET, e] - top1[CONDCONV, e], 2)}
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
) -> list[dict[str, Any]]:
    """Train (or reuse) BasisNet, static and CondConv at every length; records, gains and one plot."""
    lengths = sorted(set(lengths or LENGTHS))
    if lengths[0] < 1:
        raise ValueError(f"--lengths must be epochs >= 1, got {lengths}")
    out, results = Path(out), Path(results)
    start = time.time()
    records: list[dict[str, Any]] = []
    minutes: dict[str, float] = {}
    for epochs in lengths:
        p = plan(quick, epochs, data, [*overrides, *([f"train.kd_teacher={teacher}"] if teacher else [])])
        for peer in (peer for peer in PEERS if peer.label in (BASISNET, STATIC, CONDCONV)):
            name = peer.run if _epochs_of(out / peer.run) == epochs else f"{peer.run}_e{epochs}"
            minutes[name] = train_or_reuse(peer.config, out / name, [*p.overrides, *peer.overrides])
            top1, madds = exit_accuracy(exit_logits(out / name, "test")), run_exit_madds(out / name)
            params = count_params(load_run(out / name)[0])
            records += [record(peer.label, t, m, params, epochs, command, protocol="anytime", exit=k + 1,
                               num_exits=len(madds)) for k, (t, m) in enumerate(zip(top1, madds))]
    gains = regime_gains(records)
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(records, indent=2) + "\n")
    plot_tradeoff({f"{BASISNET} - {STATIC}": [(g["epochs"], g["gain_over_static_pt"]) for g in gains],
                   f"{BASISNET} - {CONDCONV}": [(g["epochs"], g["gain_over_condconv_pt"]) for g in gains]},
                  None, results.with_suffix(".png"), title="CIFAR-10 test: BasisNet's gain against training length",
                  xlabel="training epochs", ylabel="top-1 gain (pt)")
    write_meta(results, start, plan(quick, lengths[-1], data, overrides), minutes, lengths=lengths, gains=gains)
    return records


def format_regime_table(records: Sequence[dict[str, Any]]) -> str:
    """One row per length: each model's last-exit top-1 and BasisNet's gains."""
    top1 = {(r["model"], r["epochs"]): r["top1"] for r in records if r["exit"] == r["num_exits"]}
    lines = [f"| epochs | {BASISNET} | {STATIC} | {CONDCONV} | gain over static | gain over CondConv |",
             "|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {g['epochs']} | {top1[BASISNET, g['epochs']]:.2f} | {top1[STATIC, g['epochs']]:.2f} | "
              f"{top1[CONDCONV, g['epochs']]:.2f} | {g['gain_over_static_pt']:+.2f} | {g['gain_over_condconv_pt']:+.2f} |"
              for g in regime_gains(records)]
    return "\n".join(lines)
