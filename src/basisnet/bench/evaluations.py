"""How a study reads a trained run: the result record, the run read once, and the evaluations studies share.

An evaluation turns one finished run into records (the rows of ``benchmarks/results/<study>.json``) and
the raw figures a study's plot and targets need (per-exit MAdds and top-1, and for BasisNet the
threshold picked on validation and the sweep of thresholds on test). Records round; the raw figures do
not, so targets are computed from what was measured, not from its rounding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..evaluate import (ExitLogits, anytime, apply_threshold, budgeted_batch, count_params, exit_accuracy,
                        select_threshold, threshold_sweep)
from ..train import RunConfig
from ..workflow import exit_logits, load_run, run_exit_madds

if TYPE_CHECKING:
    from torch import nn

    from .study import Run

__all__ = ["MAX_DROP", "Evaluated", "Evaluation", "TrainedRun", "basisnet_exits", "format_records_table",
           "last_exit", "protocols", "record"]

MAX_DROP = 0.3  # points of top-1 early exit may cost against the last exit (the issues' target)
_NEVER = 1e8  # MSDNet's "nobody exits here" threshold


def record(model: str, top1: float, madds: float, params: int, epochs: int, command: str,
           threshold: float | list | None = None, exit_fraction: float | list | None = None,
           **extra: Any) -> dict[str, Any]:
    """One result row; multi-exit protocols give per-exit lists of thresholds and exit fractions."""
    if isinstance(exit_fraction, float):
        exit_fraction = round(exit_fraction, 4)
    return {"model": model, "top1": round(top1, 2), "madds": round(madds, 3), "params": params,
            "threshold": threshold, "exit_fraction": exit_fraction,
            "epochs": epochs, "protocol": "early-exit" if threshold is not None else "single",
            "dataset": "cifar10", "command": command, **extra}


class TrainedRun:
    """A finished run directory as evaluations read it: each piece loaded once, and only when asked for
    (exit logits are cached in the run directory, so asking for a split writes its cache file)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._logits: dict[str, ExitLogits] = {}

    @cached_property
    def _loaded(self) -> tuple[nn.Module, RunConfig]:
        return load_run(self.path)

    @property
    def model(self) -> nn.Module:
        return self._loaded[0]

    @property
    def config(self) -> RunConfig:
        return self._loaded[1]

    @cached_property
    def params(self) -> int:
        return count_params(self.model)

    @cached_property
    def madds(self) -> list[float]:
        """MAdds (M) per exit."""
        return run_exit_madds(self.path)

    def logits(self, split: str) -> ExitLogits:
        if split not in self._logits:
            self._logits[split] = exit_logits(self.path, split)
        return self._logits[split]


@dataclass
class Evaluated:
    """One run's records and the raw figures behind them."""

    records: list[dict[str, Any]]
    madds: list[float]  # per exit
    top1: list[float]  # per exit, on the split the evaluation reads (test; the ablation: val)
    threshold: float | None = None  # BasisNet: the early-exit threshold picked on val
    chosen: dict[str, Any] | None = None  # BasisNet: apply_threshold's result on test at that threshold
    sweep: list[tuple[float, float]] | None = None  # BasisNet: (MAdds, top-1) over thresholds, test

    @property
    def last(self) -> tuple[float, float]:
        """(MAdds, top-1) of the last exit: the run as one point."""
        return self.madds[-1], self.top1[-1]


Evaluation = Callable[["Run", TrainedRun, str], Evaluated]


def _budget(run: Run) -> tuple[int, dict[str, Any]]:
    """The epochs a record states (a warm start's counted in) and the keys every record of the run gets."""
    extra = {} if run.init_epochs is None else {"init_epochs": run.init_epochs}
    return run.epochs + (run.init_epochs or 0), {**extra, **run.extra}


def last_exit(run: Run, trained: TrainedRun, command: str) -> Evaluated:
    """One record: the last exit's test top-1 (a static net's only one)."""
    top1, madds = exit_accuracy(trained.logits("test")), trained.madds
    epochs, extra = _budget(run)
    return Evaluated([record(run.label, top1[-1], madds[-1], trained.params, epochs, command, **extra)], madds, top1)


def basisnet_exits(run: Run, trained: TrainedRun, command: str) -> Evaluated:
    """A BasisNet run's three records: the lightweight exit, no early exit, and early exit at the threshold
    picked on validation for a ``MAX_DROP`` loss."""
    madds, val, test = trained.madds, trained.logits("val"), trained.logits("test")
    top1 = exit_accuracy(test)
    threshold = select_threshold(val, madds, max_drop=MAX_DROP)
    chosen = apply_threshold(test, madds, threshold)
    epochs, extra = _budget(run)
    label = run.label
    records = [
        record(f"{label} lightweight only (exit 1)", top1[0], madds[0], count_params(trained.model.lightweight),
               epochs, command, **extra),
        record(f"{label} (no early exit)", top1[1], madds[1], trained.params, epochs, command,
               num_bases=trained.config.model.kwargs["num_bases"], **extra),
        record(f"{label} + early exit (val max-drop {MAX_DROP})", chosen["top1"], chosen["madds"], trained.params,
               epochs, command, threshold=threshold, exit_fraction=chosen["exit_fraction"], **extra),
    ]
    sweep = [(r["madds"], r["top1"]) for r in threshold_sweep(test, madds)]
    return Evaluated(records, madds, top1, threshold, chosen, sweep)


def _thresholds(values: list[float]) -> list[float | None]:
    """Budgeted-batch thresholds for JSON: null = nobody exits there, 0 = everyone left exits."""
    return [None if v >= _NEVER else max(round(v, 4), 0.0) for v in values]


PROTOCOLS = ("anytime", "early-exit", "budgeted-batch")


def protocols(*names: str) -> Evaluation:
    """The MSDNet / RANet protocols ``names`` (default: all) on test, thresholds fitted on val: anytime (a
    record per exit), early exit (one threshold for every exit, the cheapest within ``MAX_DROP`` on val;
    multi-exit models only) and budgeted batch (one record per distinct routing)."""
    chosen_protocols = names or PROTOCOLS
    unknown = set(chosen_protocols) - set(PROTOCOLS)
    if unknown:
        raise ValueError(f"unknown protocols {sorted(unknown)}; choose from {PROTOCOLS}")

    def evaluate(run: Run, trained: TrainedRun, command: str) -> Evaluated:
        madds, test = trained.madds, trained.logits("test")
        params, exits, extra = trained.params, len(madds), run.extra
        epochs, _ = _budget(run)
        command = f"{command} (seed {run.seed})" if run.seed else command
        rows = anytime(test, madds)
        records = []
        if "anytime" in chosen_protocols:
            records += [record(run.label, row["top1"], row["madds"], params, epochs, command, protocol="anytime",
                               exit=row["exit"], num_exits=exits, **extra) for row in rows]
        if "early-exit" in chosen_protocols and exits > 1:
            val = trained.logits("val")
            threshold = select_threshold(val, madds, max_drop=MAX_DROP)
            chosen = apply_threshold(test, madds, threshold)
            records.append(record(run.label, chosen["top1"], chosen["madds"], params, epochs, command,
                                  threshold=threshold, exit_fraction=chosen["exit_fraction"], num_exits=exits,
                                  max_drop=MAX_DROP, **extra))
        if "budgeted-batch" in chosen_protocols:
            seen = set()
            for row in budgeted_batch(trained.logits("val"), test, madds):
                fractions = tuple(round(f, 4) for f in row["exit_fractions"])
                if fractions in seen:  # several priors can route identically (always so with one exit)
                    continue
                seen.add(fractions)
                records.append(record(run.label, row["top1"], row["madds"], params, epochs, command,
                                      protocol="budgeted-batch", q=row["q"], num_exits=exits,
                                      threshold=_thresholds(row["thresholds"]), exit_fraction=list(fractions),
                                      **extra))
        return Evaluated(records, madds, [row["top1"] for row in rows])

    return evaluate


def format_records_table(records: Sequence[dict[str, Any]]) -> str:
    """Records of one operating point each (``last_exit``, ``basisnet_exits``) as a Markdown table."""
    lines = ["| model | top-1 (%) | MAdds (M) | params | threshold | exit fraction |", "|---|---:|---:|---:|---:|---:|"]
    for r in records:
        thr = "" if r["threshold"] is None else f"{r['threshold']:.2f}"
        frac = "" if r["exit_fraction"] is None else f"{r['exit_fraction']:.2f}"
        lines.append(f"| {r['model']} | {r['top1']:.2f} | {r['madds']:.2f} | {r['params'] / 1e6:.2f}M | {thr} | {frac} |")
    return "\n".join(lines)
