"""One protocol for every adaptive model: RANet, MSDNet, CondConv, BasisNet and a static MobileNet.

Each model is trained on CIFAR-10 with one recipe and epoch budget (its bundled ``cifar10_*`` config,
identical training keys), then evaluated from cached exit logits under both protocols of MSDNet /
RANet: anytime prediction (every exit) and budgeted batch classification (thresholds fitted on the
validation split, applied to test). BasisNet here is trained from scratch like the others (``bench
accuracy`` warm-starts it instead). Runs share a directory with ``bench accuracy`` (the static x0.5 is
the same run), are reused when finished with the same config and resumed when interrupted.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple


from ..evaluate import anytime, best_within, budgeted_batch, compare_curves, count_params, plot_models
from ..workflow import exit_logits, load_run, run_exit_madds
from .runs import plan, record, train_or_reuse, write_meta

__all__ = ["BUDGETS", "PEERS", "Peer", "format_compare_table", "format_verdicts", "run_compare_benchmark", "verdicts"]


class Peer(NamedTuple):
    label: str
    config: str  # bundled config name
    run: str  # run directory name under the benchmark's output
    overrides: tuple[str, ...] = ()


PEERS: tuple[Peer, ...] = (
    Peer("MobileNetV3-Small x0.5 (static)", "cifar10_static", "static_w0.5", ("model.kwargs.width=0.5",)),
    Peer("CondConv-MobileNetV3-Small x0.5", "cifar10_condconv", "condconv"),
    Peer("BasisNet (from scratch)", "cifar10_basisnet", "basisnet"),
    Peer("MSDNet", "cifar10_msdnet", "msdnet"),
    Peer("RANet", "cifar10_ranet", "ranet"),
)

BUDGETS: tuple[float, ...] = (2, 4, 6, 8, 12, 16, 24)  # MAdds (M) columns of the summary table
_NEVER = 1e8  # MSDNet's "nobody exits here" threshold


def _thresholds(values: list[float]) -> list[float | None]:
    """Budgeted-batch thresholds for JSON: null = nobody exits there, 0 = everyone left exits."""
    return [None if v >= _NEVER else max(round(v, 4), 0.0) for v in values]


def _evaluate(peer: Peer, run: Path, epochs: int, command: str) -> list[dict[str, Any]]:
    model, _ = load_run(run)
    params = count_params(model)
    madds = run_exit_madds(run)
    val, test = exit_logits(run, "val"), exit_logits(run, "test")
    records = [record(peer.label, row["top1"], row["madds"], params, epochs, command, protocol="anytime",
                       exit=row["exit"] + 1, num_exits=len(madds))
               for row in anytime(test, madds)]
    seen = set()
    for row in budgeted_batch(val, test, madds):
        fractions = tuple(round(f, 4) for f in row["exit_fractions"])
        if fractions in seen:  # several priors can route identically (always so with one exit)
            continue
        seen.add(fractions)
        records.append(record(peer.label, row["top1"], row["madds"], params, epochs, command,
                               protocol="budgeted-batch", q=row["q"], num_exits=len(madds),
                               threshold=_thresholds(row["thresholds"]), exit_fraction=list(fractions)))
    return records


def _curve(records: list[dict[str, Any]], label: str, protocol: str) -> list[tuple[float, float]]:
    return [(r["madds"], r["top1"]) for r in records if r["model"] == label and r["protocol"] == protocol]


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


def run_compare_benchmark(
    data: str | Path = "../shared/data/cifar10",
    out: str | Path = "runs/bench_cifar10",
    results: str | Path = "benchmarks/results/compare.json",
    quick: bool = False,
    epochs: int | None = None,
    overrides: Sequence[str] = (),
    command: str = "basisnet bench compare",
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Train every peer, evaluate both protocols on test, write records, verdicts and one plot."""
    p = plan(quick, epochs, data, overrides)
    out, results = Path(out), Path(results)
    start = time.time()
    records: list[dict[str, Any]] = []
    minutes: dict[str, float] = {}
    for peer in PEERS:
        run = out / peer.run
        minutes[peer.run] = train_or_reuse(peer.config, run, [*p.overrides, *peer.overrides])
        records.extend(_evaluate(peer, run, p.epochs, command))
    found = verdicts(records)

    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(records, indent=2) + "\n")
    plot_models({peer.label: (_curve(records, peer.label, "budgeted-batch"), _curve(records, peer.label, "anytime"))
                 for peer in PEERS}, results.with_suffix(".png"),
                title=f"CIFAR-10 test, {p.epochs} epochs each: budgeted batch (lines), anytime (circles)")
    write_meta(results, start, p, minutes, verdicts=found)
    return records, found


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
        rows = [r for r in records if r["model"] == label]
        exits = [r for r in rows if r["protocol"] == "anytime"]
        curve = [(r["madds"], r["top1"]) for r in rows if r["protocol"] == "budgeted-batch"]
        at = [best_within(curve, b) for b in budgets]
        lines.append("| " + " | ".join([
            label, f"{rows[0]['params'] / 1e6:.2f}M", str(len(exits)),
            ", ".join(f"{r['top1']:.1f}@{r['madds']:.1f}" for r in exits),
            *("-" if v is None else f"{v:.2f}" for v in at)]) + " |")
    return "\n".join(lines)
