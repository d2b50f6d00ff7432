"""Studies as data, and the one runner that executes them.

A study (``bench compare``, ``bench accuracy``, ...) is a :class:`Study`: the options it takes, a ``plan``
function that turns them into a :class:`Plan` (its runs as data: name, bundled config, data, epochs,
overrides, seed, how each is evaluated) and hooks that read the outcome (plot, meta findings, the
printed report). :func:`execute` trains or reuses every run, evaluates it, writes the records, plots,
writes the meta; :func:`run_study` is the front end the CLI and Python share. A new study is one file
that declares its plan and calls :func:`register_study`, as a new model calls ``register_model``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import paths
from .evaluations import Evaluated, Evaluation, TrainedRun
from .records import machine, read_meta, write_meta, write_records
from .runs import epochs_done, format_train_minutes, train_or_reuse

__all__ = ["Kept", "Option", "Outcome", "Plan", "Run", "Study", "cifar_epochs", "common_options", "execute",
           "get_study", "list_studies", "quick_overrides", "register_study", "run_study"]

# --quick: the same code on a sliver of CIFAR-10 (4,000 training images).
QUICK_OVERRIDES = ("data.subset=4000", "data.val_size=1000", "train.warmup_epochs=0.5")


def quick_overrides(quick: bool) -> tuple[str, ...]:
    return QUICK_OVERRIDES if quick else ()


def cifar_epochs(quick: bool, epochs: int | None) -> int:
    """The CIFAR-10 studies' length: 12 epochs on the full data, 2 with ``--quick``; ``--epochs`` overrides."""
    return epochs or (2 if quick else 12)


@dataclass(frozen=True)
class Option:
    """One command-line option of a bench (``dest`` is also its keyword in :func:`run_study`); ``cli=False``
    marks a knob of the Python API only (tests size a study with it)."""

    flag: str
    help: str = ""
    type: Callable[[str], Any] | None = None
    nargs: str | None = None
    action: str | None = None
    choices: Sequence[str] | None = None
    default: Any = None
    cli: bool = True

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        if not self.cli:
            return
        kwargs = {k: v for k, v in (("type", self.type), ("nargs", self.nargs), ("action", self.action),
                                    ("choices", self.choices)) if v is not None}
        parser.add_argument(self.flag, help=self.help, default=self.default, **kwargs)


@dataclass(frozen=True)
class Run:
    """One run of a study: what it trains (the runner adds ``data.source``, ``train.epochs`` and, when not 0,
    ``train.seed`` to the overrides) and how it is read."""

    name: str  # run directory under the study's runs folder
    config: str  # bundled config name
    data: str | Path  # data.source
    epochs: int  # train.epochs
    evaluate: Evaluation | None  # None: trained only, as a start for other runs
    overrides: tuple[str, ...] = ()
    seed: int = 0  # train.seed; 0 leaves the config's own
    label: str = ""  # the records' model name
    extra: Mapping[str, Any] = field(default_factory=dict)  # keys every record of the run gets
    init_epochs: int | None = None  # epochs of the run it warm-starts from, counted in its records' budget
    only_if_trained: bool = False  # never trained here: read where a finished run of this length exists

    @property
    def config_overrides(self) -> list[str]:
        return [f"data.source={self.data}", f"train.epochs={self.epochs}", *self.overrides,
                *([f"train.seed={self.seed}"] if self.seed else [])]

    def execute(self, out: Path, command: str) -> Step | None:
        path = out / self.name
        if self.only_if_trained and epochs_done(path) < self.epochs:
            return None
        minutes = train_or_reuse(self.config, path, self.config_overrides)
        evaluated = None if self.evaluate is None else self.evaluate(self, TrainedRun(path), command)
        return Step(self.name, [] if evaluated is None else evaluated.records, {self.name: minutes}, evaluated)


@dataclass(frozen=True)
class Kept:
    """Records and training minutes of runs from an earlier results file, standing in for them unchanged
    (``bench compare --models``: the peers not re-run)."""

    name: str
    records: tuple[dict[str, Any], ...]
    minutes: Mapping[str, float]

    def execute(self, out: Path, command: str) -> Step:
        return Step(self.name, list(self.records), dict(self.minutes), None)


@dataclass
class Step:
    """What one entry of a plan gave: records, training minutes per run, the evaluation behind them."""

    name: str
    records: list[dict[str, Any]]
    minutes: dict[str, float]
    evaluated: Evaluated | None


@dataclass(frozen=True)
class Plan:
    """Everything one invocation of a study does, decided before anything is trained."""

    runs: tuple[Run | Kept, ...]
    options: argparse.Namespace  # the study's options as resolved (paths, defaults)
    quick: bool
    epochs: int  # the length the meta states
    facts: Mapping[str, Any] = field(default_factory=dict)  # plan-level figures the meta states (sizes, lengths)


@dataclass
class Outcome:
    """An executed plan: the records in plan order, minutes per run, each evaluated run by name."""

    plan: Plan
    out: Path
    records: list[dict[str, Any]] = field(default_factory=list)
    minutes: dict[str, float] = field(default_factory=dict)
    evaluated: dict[str, Evaluated] = field(default_factory=dict)


def _nothing(outcome: Outcome, *args: Any) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class Study:
    name: str  # ``basisnet bench <name>``
    help: str
    plan: Callable[[argparse.Namespace, Path], Plan]  # (options, runs folder) -> plan; checks the options
    results: str  # results file stem under benchmarks/results/
    runs: str  # runs folder name under runs/
    report: Callable[[list[dict[str, Any]], dict[str, Any], argparse.Namespace], list[str]]  # lines printed
    options: tuple[Option, ...] = ()
    suffix: Callable[[argparse.Namespace], str] = lambda opts: "_quick" if opts.quick else ""
    summarize: Callable[[Outcome], dict[str, Any]] = _nothing  # the meta's findings (targets, verdicts, ...)
    plot: Callable[[Outcome, Path], Any] = _nothing  # one PNG beside the results
    data_help: str = "CIFAR-10 root (ImageFolder or python format)"

    @property
    def all_options(self) -> tuple[Option, ...]:
        return (*common_options(self), *self.options)


def common_options(study: Study) -> tuple[Option, ...]:
    """The options every study takes: where its data, runs and results are; ``overrides`` (Python only)
    apply to every run after the study's own sizing."""
    return (Option("--data", f"{study.data_help} (default {paths.DATA})", default=paths.DATA),
            Option("--output", f"where the runs go, reused and resumed (default {paths.runs_folder(study.runs)}"
                   "[suffix of the options])"),
            Option("--results", f"records file (default {paths.results_file(study.results)}[suffix])"),
            Option("--overrides", cli=False, default=()))


_STUDIES: dict[str, Study] = {}


def register_study(study: Study) -> Study:
    if study.name in _STUDIES:
        raise ValueError(f"a study named {study.name!r} is registered already")
    _STUDIES[study.name] = study
    return study


def list_studies() -> list[str]:
    return list(_STUDIES)


def get_study(name: str) -> Study:
    if name not in _STUDIES:
        raise ValueError(f"unknown study {name!r}; choose from {list_studies()}")
    return _STUDIES[name]


def execute(study: Study, plan: Plan, out: Path, results: Path, command: str) -> list[dict[str, Any]]:
    """Train or reuse every run of ``plan``, evaluate it; write the records, the plot and the meta."""
    start = time.time()
    outcome = Outcome(plan, out)
    for entry in plan.runs:
        step = entry.execute(out, command)
        if step is None:
            continue
        outcome.records += step.records
        outcome.minutes.update(step.minutes)
        if step.evaluated is not None:
            outcome.evaluated[step.name] = step.evaluated
    write_records(results, outcome.records)
    study.plot(outcome, results.with_suffix(".png"))
    found = study.summarize(outcome)
    write_meta(results, {"seconds": round(time.time() - start), "machine": machine(), "torch": torch.__version__,
                         "quick": plan.quick, "epochs": plan.epochs, "train_minutes": outcome.minutes,
                         **plan.facts, **found})
    return outcome.records


def resolve_options(study: Study, given: Mapping[str, Any]) -> argparse.Namespace:
    """The study's options with defaults filled in and default paths named; an unknown option is an error."""
    options = {o.dest: o for o in study.all_options}
    unknown = sorted(set(given) - set(options) - {"command"})
    if unknown:
        raise TypeError(f"study {study.name!r} takes no option {unknown}; it takes {sorted(options)}")
    opts = argparse.Namespace(**{dest: o.default for dest, o in options.items()})
    for key, value in given.items():
        if value is not None:  # None: not given (argparse's default), the option's default stands
            setattr(opts, key, value)
    suffix = study.suffix(opts)
    opts.output = Path(opts.output or paths.runs_folder(study.runs, suffix))
    opts.results = Path(opts.results or paths.results_file(study.results, suffix))
    opts.command = given.get("command") or f"basisnet bench {study.name}"
    return opts


def run_study(study: str | Study, **options: Any) -> list[dict[str, Any]]:
    """Plan, execute and report a study: ``run_study("compare", quick=True, models=["basisnet"])`` is
    ``basisnet bench compare --quick --models basisnet``. Prints the report and the training time."""
    study = get_study(study) if isinstance(study, str) else study
    opts = resolve_options(study, options)
    plan = study.plan(opts, opts.output)
    records = execute(study, plan, opts.output, opts.results, opts.command)
    meta = read_meta(opts.results)
    print("\n".join([*study.report(records, meta, opts), format_train_minutes(meta["train_minutes"])]))
    return records
