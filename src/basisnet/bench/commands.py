"""The ``basisnet bench <name>`` subcommands: each one's own options and the library call it makes.

A study (``study.list_studies()``) becomes a subcommand with the options it declares; the measuring
benches (speed, deploy, loader, train, gpu) are declared here the same way. The CLI adds one parser per
command, so an option a bench does not take is an argparse error naming it; checks between options of
one bench (``deploy --static-run`` needs ``--run``) are made here, before any work.
"""

from __future__ import annotations

import importlib
import json
from argparse import ArgumentParser, Namespace
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import compare, regime, distill, ablation, accuracy, transfer  # noqa: F401, I001  (register, in help order)
from . import paths
from .records import meta_path, read_meta
from .study import Option, Study, get_study, list_studies, run_study

__all__ = ["BenchCommand", "bench_commands"]


@dataclass(frozen=True)
class BenchCommand:
    name: str
    help: str
    options: tuple[Option, ...]
    main: Callable[[Namespace, str], int]  # (parsed options, the command line as typed) -> exit code

    def add_options(self, parser: ArgumentParser) -> None:
        for option in self.options:
            option.add_to(parser)


def _study_command(study: Study) -> BenchCommand:
    def main(args: Namespace, command: str) -> int:
        given = {o.dest: getattr(args, o.dest) for o in study.all_options if o.cli}
        run_study(study, command=command, **given)
        return 0

    return BenchCommand(study.name, study.help, study.all_options, main)


def _quick(text: str) -> Option:
    return Option("--quick", text, action="store_true", default=False)


def _results(default: str) -> Option:
    return Option("--results", f"records file (default {paths.RESULTS}/{default}[_quick].json)")


def _speed(args: Namespace, command: str) -> int:
    from . import speed

    results = Path(args.results or paths.results_file("speed", "_quick" if args.quick else ""))
    plan = speed.SpeedPlan.quick_plan() if args.quick else speed.SpeedPlan()
    records = speed.run_speed_benchmark(results, plan, devices=args.device, threads=args.threads, command=command)
    if args.json:
        for r in records:
            print(json.dumps(r))
        return 0
    meta = read_meta(results)
    print(speed.format_speed_table(records))
    print(f"ceilings: {meta['ceilings']}")
    print(speed.format_speed_targets(meta["targets"]))
    print(f"wrote {results} (records), {meta_path(results)} (targets, ceilings) and {results.stem}_<device>.png "
          "beside them; `basisnet docs` renders the tables from them")
    return 0


def _deploy(args: Namespace, command: str) -> int:
    from . import deploy, deploy_forms

    if not args.run:  # the exported forms at random initialisation, on no data
        if args.data is not None:
            raise ValueError("bench deploy has no use for --data (it applies with --run)")
        if args.static_run:
            raise ValueError("--static-run needs --run: the camera table compares a trained run with it")
        plan = deploy_forms.DeployPlan.quick_plan() if args.quick else deploy_forms.DeployPlan()
        suffix = "_quick" if args.quick else ""
        records = deploy_forms.run_forms_benchmark(args.results or str(paths.results_file("deploy_forms", suffix)),
                                                   plan, command=command)
        for variant in plan.variants:
            for t in deploy_forms.deploy_targets(records, variant):
                print(f"{'MET   ' if t['met'] else 'MISSED'} [{variant}] {t['target']}: {t['ratio']:.2f}")
        return 0
    if args.quick:
        raise ValueError("bench deploy has no use for --quick with --run (it sizes the forms benchmark)")
    out = deploy.run_deploy_benchmark(args.run, args.data or paths.DATA,
                                      args.results or str(paths.results_file("deploy")), static_run=args.static_run,
                                      command=command)
    print(deploy.format_deploy_tables(out))
    return 0


def _data_bench(module: str, plan: str, run: str, table: str, stem: str, scratch: str) -> Callable[[Namespace, str], int]:
    """loader / train: a plan (or its quick plan), data, a scratch folder; one table printed. The module is
    imported when the command runs (and its functions looked up then)."""

    def main(args: Namespace, command: str) -> int:
        bench = importlib.import_module(f"{__package__}.{module}")
        plan_cls = getattr(bench, plan)
        results = args.results or str(paths.results_file(stem, "_quick" if args.quick else ""))
        records = getattr(bench, run)(args.data, results, plan_cls.quick_plan() if args.quick else plan_cls(),
                                      scratch=args.output or str(paths.runs_folder(scratch)), command=command)
        print(getattr(bench, table)(records))
        return 0

    return main


def _gpu(args: Namespace, command: str) -> int:
    from . import gpu_check

    summary = gpu_check.run_gpu_check(args.results or str(paths.results_file("gpu_check")), data=args.data,
                                      scratch=args.output or str(paths.runs_folder("gpu_check")), command=command)
    print(gpu_check.format_gpu_check(summary))
    return 0 if summary["ok"] else 1


_DATA = Option("--data", f"CIFAR-10 root (ImageFolder or python format; default {paths.DATA})", default=paths.DATA)
_MEASURING = (
    BenchCommand("speed", "milliseconds side by side with multiply-adds", (
        _quick("32 px models only, batches 1 and 64, fewer repeats, no compile (< 2 min)"), _results("speed"),
        Option("--threads", "torch threads (default: torch's own choice)", type=int),
        Option("--device", "devices (default: cpu, and cuda when present)", nargs="+", choices=["cpu", "cuda"]),
        Option("--json", "print the records as JSON lines", action="store_true", default=False)), _speed),
    BenchCommand("deploy", "exported forms in ONNX Runtime vs the static twin; --run: a trained run per stage, "
                 "cameras", (
                     _quick("the forms benchmark on fewer workloads and repeats (without --run)"),
                     _results("deploy_forms (--run: deploy)"),
                     Option("--run", "a trained BasisNet run directory (ONNX Runtime per stage, cameras); without "
                            "it: the exported forms against the static twin at random initialisation"),
                     Option("--static-run", "a trained static backbone run, for the camera table (needs --run)"),
                     Option("--data", f"with --run: the cameras' images (default {paths.DATA})")), _deploy),
    BenchCommand("loader", "streaming images/s against bare JPEG decoding", (
        _quick("5,000 CIFAR files, 120 large JPEGs, 0 and 2 workers"), _DATA, _results("loader"),
        Option("--output", f"scratch folder for generated JPEGs (default {paths.runs_folder('bench_loader')})")),
        _data_bench("loader", "LoaderPlan", "run_loader_benchmark", "format_loader_table", "loader", "bench_loader")),
    BenchCommand("train", "basisnet train against a bare loop, images/s", (
        _quick("one config, 8 steps of batch 64"), _DATA, _results("train_speed"),
        Option("--output", f"scratch folder for the runs (default {paths.runs_folder('bench_train')})")),
        _data_bench("train_speed", "TrainSpeedPlan", "run_train_speed_benchmark", "format_train_speed_table",
                    "train_speed", "bench_train")),
    BenchCommand("gpu", "the GPU-only tests, train and speed on a CUDA device: one results file; fails without a GPU", (
        Option("--data", f"training data of the train benchmark (default {paths.SHAPES}, the embedded set)",
               default=paths.SHAPES),
        Option("--results", f"results file (default {paths.results_file('gpu_check')})"),
        Option("--output", f"scratch folder (default {paths.runs_folder('gpu_check')})")), _gpu),
)


def bench_commands() -> list[BenchCommand]:
    """Every ``bench`` subcommand: the studies, then the measuring benches."""
    return [*(_study_command(get_study(name)) for name in list_studies()), *_MEASURING]
