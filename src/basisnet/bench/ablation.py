"""BasisNet's recipe ablation: named candidates trained alike, read on the validation split only.

Each candidate is a bundled config plus overrides that spell out every knob the ablation varies (so a
later change of the bundled defaults cannot silently change what a candidate means). For every run the
table gives validation top-1 of each exit, MAdds per exit and, for BasisNet, the routing-shortcut
diagnostic: the specialist's top-1 with each image's own coefficients vs with their mean.
"""

from __future__ import annotations

from argparse import Namespace
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from ..evaluate import exit_accuracy
from ..models import BasisNet
from ..workflow import shortcut_run
from .evaluations import Evaluated, Evaluation, TrainedRun
from .study import Option, Plan, Run, Study, cifar_epochs, register_study

__all__ = ["ABLATION", "ABLATIONS", "Candidate", "format_ablation_table"]


class Candidate(NamedTuple):
    config: str
    overrides: tuple[str, ...]
    what: str


def _basis(static_phase: float, what: str, *extra: str, basis_dropout: float = 0.1, light: tuple[int, int] = (16, 2),
           sharing: str = "layer", temperature: float = 1.0) -> Candidate:
    return Candidate("cifar10_basisnet", (
        f"train.static_phase={static_phase}", f"model.kwargs.basis_dropout={basis_dropout}",
        f"model.kwargs.lightweight_resolution={light[0]}", f"model.kwargs.lightweight_drop_strides={light[1]}",
        f"model.kwargs.coeff_sharing={sharing}", f"model.kwargs.temperature={temperature}", *extra), what)


ABLATIONS: dict[str, Candidate] = {
    "static": Candidate("cifar10_static", ("model.kwargs.width=0.5",), "static MobileNetV3-Small x0.5 (the backbone)"),
    "condconv": Candidate("cifar10_condconv", (), "CondConv on the same backbone, N=4"),
    "scratch": _basis(0.0, "BasisNet from scratch, bases mixed from step 1 (the old recipe)"),
    "scratch_t30": _basis(0.0, "from scratch, coefficient temperature 30", temperature=30.0),
    "scratch_network": _basis(0.0, "from scratch, one coefficient set for the network", sharing="network"),
    "static_phase": _basis(0.5, "static phase for half the epochs, then upcycle (1% noise)"),
    "static_phase_nodrop": _basis(0.5, "static phase, no basis dropout", basis_dropout=0.0),
    "static_phase_light32": _basis(0.5, "static phase, lightweight model on the full 32x32 image (drop_strides 1)",
                                   light=(32, 1)),
    "static_phase_noise10": _basis(0.5, "static phase, 10% upcycling noise", "train.init_noise=0.1"),
    "static_phase_quarter": _basis(0.25, "static phase for a quarter of the epochs"),
    "static_phase_light32_noise10": _basis(0.5, "static phase, lightweight on 32x32, 10% upcycling noise",
                                           "train.init_noise=0.1", light=(32, 1)),
    "static_phase_light32_quarter": _basis(0.25, "static phase for a quarter of the epochs, lightweight on 32x32",
                                           light=(32, 1)),
    # A stronger first exit within 1.5x of the x0.35 lightweight model's MAdds (the early-exit share follows it).
    "light_w0.40": _basis(0.5, "the bundled recipe, lightweight model x0.40", "model.kwargs.lightweight_width=0.4",
                          light=(32, 1)),
    "light_w0.45": _basis(0.5, "the bundled recipe, lightweight model x0.45", "model.kwargs.lightweight_width=0.45",
                          light=(32, 1)),
    # Gradient equilibrium (IMTA) on the multi-exit peers: every shared block gets the mean of its exits' gradients.
    "msdnet": Candidate("cifar10_msdnet", ("train.gradient_equilibrium=false",), "MSDNet, bundled config"),
    "msdnet_ge": Candidate("cifar10_msdnet", ("train.gradient_equilibrium=true",),
                           "MSDNet with gradient equilibrium"),
    "ranet": Candidate("cifar10_ranet", ("train.gradient_equilibrium=false",), "RANet, bundled config"),
    "ranet_ge": Candidate("cifar10_ranet", ("train.gradient_equilibrium=true",), "RANet with gradient equilibrium"),
}


def validation(subset: int) -> Evaluation:
    """One record per run: validation top-1 per exit, MAdds per exit and, for BasisNet, the shortcut diagnostic."""

    def evaluate(run: Run, trained: TrainedRun, command: str) -> Evaluated:
        top1, madds = exit_accuracy(trained.logits("val")), trained.madds
        rec: dict[str, Any] = {**run.extra, "val_top1": [round(a, 2) for a in top1],
                               "madds": [round(m, 3) for m in madds], "params": trained.params, "epochs": run.epochs,
                               "subset": subset, "command": command}
        if isinstance(trained.model, BasisNet):
            rec["shortcut"] = {k: round(v, 2) for k, v in shortcut_run(trained.path, "val").as_dict().items()}
        return Evaluated([rec], madds, top1)

    return evaluate


def plan(opts: Namespace, out: Path) -> Plan:
    """Each named candidate (default: all) on ``--subset`` training images (0 = all); ``overrides`` apply to
    every candidate (before its own)."""
    candidates = opts.candidates or list(ABLATIONS)
    unknown = [c for c in candidates if c not in ABLATIONS]
    if unknown:
        raise ValueError(f"unknown ablation candidates {unknown}; choose from {list(ABLATIONS)}")
    subset, epochs = opts.subset or 0, cifar_epochs(False, opts.epochs)
    common = (*([f"data.subset={subset}"] if subset else []), *opts.overrides)
    runs = tuple(Run(name, ABLATIONS[name].config, opts.data, epochs, validation(subset),
                     (*common, *ABLATIONS[name].overrides),
                     extra={"candidate": name, "what": ABLATIONS[name].what, "overrides": list(ABLATIONS[name].overrides)})
                 for name in candidates)
    return Plan(runs, opts, False, epochs, {"subset": subset})


def format_ablation_table(records: Sequence[dict[str, Any]]) -> str:
    """Markdown: one row per candidate (validation top-1 of each exit, MAdds, shortcut diagnostic)."""
    lines = ["| candidate | what | val top-1 per exit, first to last (%) | MAdds (M) | specialist, mean coeffs (%) "
             "| shortcut drop (pt) |", "|---|---|---:|---:|---:|---:|"]
    for r in records:
        top1 = " / ".join(f"{a:.2f}" for a in r["val_top1"])
        s = r.get("shortcut")
        mean, drop = (f"{s['specialist_mean_coeffs']:.2f}", f"{s['drop']:+.2f}") if s else ("", "")
        lines.append(f"| {r['candidate']} | {r['what']} | {top1} | {r['madds'][-1]:.2f} | {mean} | {drop} |")
    return "\n".join(lines)


ABLATION = register_study(Study(
    "ablation", "BasisNet recipe candidates, validation only", plan, results="ablation", runs="bench_ablation",
    report=lambda records, meta, opts: [format_ablation_table(records)],
    suffix=lambda opts: f"_s{opts.subset}" if opts.subset else "",
    options=(Option("--candidates", "candidate names (default: all)", nargs="+"),
             Option("--subset", "train on N images of the training split (default: all; runs go to "
                    "runs/bench_ablation_s<N>)", type=int),
             Option("--epochs", "epochs per candidate (default 12)", type=int))))
