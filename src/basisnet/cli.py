"""``basisnet <command>``: argument parsing only; each command calls one library function."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from .configs import list_configs
from .models import create_model, list_models
from .train.distributed import launch_env
from .train.preemption import TrainingInterrupted


def _madds(args: argparse.Namespace) -> int:
    from .evaluate import count_madds

    kwargs = dict(width=args.width, resolution=args.resolution, num_classes=args.num_classes)
    if args.bases:
        kwargs["num_bases"] = args.bases
    if args.drop_strides:
        kwargs["drop_strides"] = args.drop_strides
    model = create_model(args.model, **kwargs)
    forward = {}
    if getattr(model, "num_basis_layers", 0):
        # A bare basis network needs coefficients: one per-image set (counts synthesis per image).
        import torch

        forward["coeffs"] = torch.full((1, model.num_basis_layers, args.bases), 1.0 / args.bases)
    report = count_madds(model, depth=args.depth, **forward)
    if args.json:
        print(json.dumps({"model": args.model, **kwargs, **report.as_dict()}))
        return 0
    print(f"{args.model}  width {args.width}  {args.resolution}x{args.resolution}  {args.num_classes} classes"
          + (f"  N={args.bases}" if args.bases else ""))
    print(f"{'module':<40}{'MAdds (M)':>12}")
    for name, madds in report.per_module.items():
        print(f"{name:<40}{madds / 1e6:>12.3f}")
    if report.synthesis:
        print(f"{'kernel synthesis (in the above)':<40}{report.synthesis / 1e6:>12.3f}")
    print(f"{'total':<40}{report.madds / 1e6:>12.3f}")
    print(f"params: {report.params / 1e6:.3f}M")
    return 0


def _train(args: argparse.Namespace) -> int:
    from .configs import bundled_config
    from .models import check_options
    from .train import RunDir, config_help, config_to_dict, load_config
    from .workflow import train_run

    main_process = launch_env().rank == 0  # under torchrun / srun only rank 0 reports
    if not main_process:
        logging.getLogger().setLevel(logging.WARNING)
    if args.list_keys:
        for key, default, text in config_help():
            print(f"{key:<32}{default!s:<28}{text}")
        return 0
    if args.resume:
        cfg = load_config(RunDir(args.resume).require_config("cannot resume: "), args.overrides)
        result = train_run(cfg, args.resume, resume=True)
    else:
        cfg = load_config(bundled_config(args.config) if args.config else None, args.overrides)
        if args.dry_run:  # writes nothing, so it needs no --output (train_run checks the same before its work)
            import yaml

            check_options(cfg.model.name, cfg.model.kwargs, "model.kwargs.")

            print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
            return 0
        if not args.output:
            raise ValueError("--output RUN_DIR is required (or --resume RUN_DIR)")
        result = train_run(cfg, args.output)
    if main_process:
        print(f"best val top-1 {result['best_top1']:.2f}% at epoch {result['best_epoch']}")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from .workflow import sweep_run

    rows = sweep_run(args.run_dir, args.split)
    print(f"{'threshold':>10}{'top-1 %':>9}{'MAdds (M)':>11}{'exit 1 %':>10}")
    for r in rows[:: max(1, len(rows) // 20)]:
        print(f"{r['threshold']:>10.3f}{r['top1']:>9.2f}{r['madds']:>11.3f}{100 * r['exit_fraction']:>10.1f}")
    print(f"wrote {Path(args.run_dir) / f'sweep_{args.split}.csv'} and .png")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from .workflow import evaluate_run

    report = evaluate_run(args.run_dir, args.protocol, target_madds=args.target_madds, max_drop=args.max_drop,
                          threshold=args.threshold, temperature=args.temperature, target_ms=args.target_ms,
                          runtime=args.runtime)
    if args.json:
        print(json.dumps(report))
        return 0
    print("per exit (test): " + ", ".join(f"{a:.2f}% @ {m:.2f}M" for a, m in
                                          zip(report["exit_top1_test"], report["exit_madds"])))
    result = report["result"]
    if args.protocol == "early-exit":
        print(f"threshold {result['threshold']:.3f}: top-1 {result['top1']:.2f}%, average {result['madds']:.3f}M "
              f"MAdds, {100 * result['exit_fraction']:.1f}% answered before the last exit")
        if "target_ms" in report:
            print(f"latency here ({report['runtime']}, batch 1): exits answer in "
                  f"{', '.join(f'{t:.2f}' for t in report['exit_ms'])} ms; predicted mean {report['mean_ms_val']:.2f} "
                  f"ms/image on val, {report['mean_ms_test']:.2f} on test; measured on test "
                  f"{report['measured_ms_test']:.2f} ms (target {report['target_ms']} ms)")
    else:
        for r in result:
            print(", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()
                            if not isinstance(v, list)))
    return 0


def _shortcut(args: argparse.Namespace) -> int:
    from .workflow import shortcut_run

    report = shortcut_run(args.run_dir, args.split, args.limit)
    if args.json:
        print(json.dumps(report.as_dict()))
        return 0
    print(f"lightweight {report.lightweight:.2f}%, specialist {report.specialist:.2f}% with its own coefficients, "
          f"{report.specialist_mean_coeffs:.2f}% with the mean ({report.drop:+.2f} pt shortcut drop); "
          f"exits agree on {report.agreement:.1f}% ({args.split})")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from .workflow import predict_files, predict_stream

    if args.stream:
        if args.images:
            raise ValueError("give image files or --stream SOURCE, not both")
        return _predict_stream(args, predict_stream)
    if not args.images:
        raise ValueError("give image files to classify (or --stream SOURCE)")
    for row in predict_files(args.run_dir, args.images, args.threshold):
        print(f"{row['file']}\t{row['class']}\t{row['confidence']:.3f}\tstage {row['stage']}\t{row['madds_m']:.2f}M")
    return 0


def _predict_stream(args: argparse.Namespace, predict_stream) -> int:
    import time

    from .workflow import resolve_runtime

    runtime = resolve_runtime(args.runtime)
    workers = args.workers if args.workers != "auto" else ("thread" if runtime == "onnx" else "process")
    start, latencies, first = time.perf_counter(), [], None
    for row in predict_stream(args.run_dir, args.stream, args.threshold, parallel=not args.sequential,
                              stage_threads=args.stage_threads, limit=args.limit, workers=workers,
                              runtime=runtime):
        first = first or time.perf_counter()
        latencies.append(row["latency_ms"])
        if not args.summary:
            print(f"{row['file']}\t{row['class']}\t{row['confidence']:.3f}\tstage {row['stage']}\t"
                  f"{row['latency_ms']:.2f} ms")
    end = time.perf_counter()
    if not latencies:
        raise ValueError(f"no frames in {args.stream}")
    latencies.sort()
    steady = (len(latencies) - 1) / (end - first) if len(latencies) > 1 and end > first else float("nan")
    how = "stages one after the other" if args.sequential else f"stages in parallel, {workers} workers"
    how += f", {'ONNX Runtime' if runtime == 'onnx' else 'PyTorch eager'}"
    print(f"{len(latencies)} frames in {end - start:.2f} s: {len(latencies) / (end - start):.1f} frames/s "
          f"({steady:.1f} after the first answer), latency mean {sum(latencies) / len(latencies):.2f} ms, "
          f"p95 {latencies[int(0.95 * (len(latencies) - 1))]:.2f} ms ({how})")
    return 0


def _specialize(args: argparse.Namespace) -> int:
    from .workflow import specialize_run

    out = specialize_run(args.run_dir, args.data, args.output)
    print(f"{out['output']}: static {out['model']} from the mean coefficients of {out['images']} images, "
          f"{out['madds'] / 1e6:.2f}M MAdds per image (loads with basisnet.train.load_run_model)")
    return 0


def _export(args: argparse.Namespace) -> int:
    from .workflow import export_run

    try:
        stages = export_run(args.run_dir, args.output, args.batch)
    except ImportError as err:
        raise RuntimeError(f"ONNX export needs the onnx extra: pip install 'basisnet[onnx]' ({err})") from err
    for k, stage in enumerate(stages):
        print(f"stage {k + 1}: {Path(args.output) / stage['path']}  {', '.join(stage['inputs'])} -> "
              f"{', '.join(stage['outputs'])}")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from .models.pretrained import list_pretrained

    if args.list:
        print("\n".join(list_pretrained()))
        return 0
    if not args.source or not args.output:
        raise ValueError("convert needs SOURCE:NAME=PATH and --output (or --list)")
    from .workflow import convert_checkpoint

    out = convert_checkpoint(args.source, args.output, args.num_classes)
    print(f"{out['output']}: basisnet {out['model']}, {out['num_classes']} classes, {out['params'] / 1e6:.2f}M params, "
          f"BatchNorm eps {out['norm_eps']:g} (use it as train.init_from, or load with basisnet.train.load_run_model)")
    return 0


def _docs(args: argparse.Namespace) -> int:
    from .bench.tables import render_docs

    differ = render_docs(args.docs, args.results, write=not args.check)
    for page, names in differ.items():
        print(f"{page}: {'differs' if args.check else 'rewrote'}: {', '.join(names)}")
    return 1 if differ and args.check else 0


def _demo(args: argparse.Namespace) -> int:
    from .bench.demo import run_demo

    run_demo(args.output, args.overrides)
    return 0


# Options that belong to one benchmark only: given to another, they are an error rather than ignored.
_BENCH_OPTIONS = {
    "widths": "accuracy", "warm_epochs": "accuracy", "candidates": "ablation",
    "subset": ("ablation", "compare", "regime", "distill"), "seeds": "compare", "teacher": ("compare", "regime", "distill"),
    "lengths": "regime", "models": ("compare", "regime", "distill"), "json": "speed", "threads": "speed", "device": "speed",
    "run": "deploy",
    "static_run": "deploy", "source_epochs": "transfer", "per_class": "transfer",
}


def _bench(args: argparse.Namespace) -> int:
    for option, owner in _BENCH_OPTIONS.items():
        owners = (owner,) if isinstance(owner, str) else owner
        if getattr(args, option) and args.which not in owners:
            raise ValueError(f"--{option.replace('_', '-')} belongs to " + " or ".join(f"'bench {o}'" for o in owners))
    # Shared options some benchmarks have no use for: refused there rather than dropped (loader and speed
    # refuse --epochs themselves, ablation --quick).
    unused = {"epochs": ("train", "gpu", "deploy"), "quick": ("gpu",), "output": ("deploy",), "data": ("speed",)}
    if args.which == "deploy" and args.run:
        unused["quick"] = ("gpu", "deploy")  # --quick sizes the forms benchmark, not a trained run's
    elif args.which == "deploy":
        unused["data"] = ("speed", "deploy")  # the forms run at random initialisation, on no data
    for option, benches in unused.items():
        if getattr(args, option) and args.which in benches:
            raise ValueError(f"bench {args.which} has no use for --{option}" +
                             (" (it applies with --run)" if args.which == "deploy" and option == "data" else ""))
    if args.which == "deploy" and args.static_run and not args.run:
        raise ValueError("--static-run needs --run: the camera table compares a trained run with it")
    if args.data is None:  # the GPU check carries no data set with it: SHAPES is generated
        args.data = "shapes" if args.which == "gpu" else "../shared/data/cifar10"
    return _BENCHES[args.which](args, " ".join(["basisnet", *args.argv]))


def _read_meta(results: Path) -> dict:
    from .bench.records import read_meta as read  # the bench package loads lazily, as every command does

    return read(results)


def _bench_ablation(args: argparse.Namespace, command: str) -> int:
    from .bench import ABLATIONS, format_ablation_table, format_train_minutes, run_ablation

    if args.quick:
        raise ValueError("bench ablation has no --quick: use --subset N and --epochs E")
    tag = f"_s{args.subset}" if args.subset else ""
    results = Path(args.results or f"benchmarks/results/ablation{tag}.json")
    records = run_ablation(args.candidates or list(ABLATIONS), args.data, args.output or f"runs/bench_ablation{tag}",
                           results, subset=args.subset or 0, epochs=args.epochs, command=command)
    print(format_ablation_table(records))
    print(format_train_minutes(_read_meta(results)["train_minutes"]))
    return 0


def _bench_accuracy(args: argparse.Namespace, command: str) -> int:
    from .bench import format_table, format_targets, format_train_minutes, run_accuracy_benchmark

    suffix = "_quick" if args.quick else ""
    results = Path(args.results or f"benchmarks/results/cifar10{suffix}.json")
    records = run_accuracy_benchmark(args.data, args.output or f"runs/bench_cifar10{suffix}", results, quick=args.quick,
                                     epochs=args.epochs, command=command, widths=args.widths,
                                     warm_epochs=args.warm_epochs)
    print(format_table(records))
    meta = _read_meta(results)
    print(format_targets(meta))
    print(format_train_minutes(meta["train_minutes"]))
    return 0


def _bench_transfer(args: argparse.Namespace, command: str) -> int:
    from .bench import (TransferPlan, format_train_minutes, format_transfer_table, format_transfer_targets,
                        run_transfer_benchmark)

    suffix = "_quick" if args.quick else ""
    results = Path(args.results or f"benchmarks/results/transfer{suffix}.json")
    plan = TransferPlan(quick=args.quick, epochs=args.epochs, source_epochs=args.source_epochs, per_class=args.per_class)
    records = run_transfer_benchmark(args.data, args.output or f"runs/bench_transfer{suffix}", results, plan,
                                     command=command)
    print(format_transfer_table(records))
    meta = _read_meta(results)
    print(format_transfer_targets(meta))
    print(format_train_minutes(meta["train_minutes"]))
    return 0


def _study(args: argparse.Namespace) -> tuple[str, list[str]]:
    """The suffix of the runs folder and results of compare / regime / distill, and the overrides it stands for:
    the three share runs, so one set of options names one folder."""
    suffix = ("_quick" if args.quick else "") + (f"_n{args.subset}" if args.subset else "") + ("_kd" if args.teacher else "")
    return suffix, [f"data.subset={args.subset}"] if args.subset else []


def _bench_compare(args: argparse.Namespace, command: str) -> int:
    from .bench import (format_compare_table, format_compare_targets, format_seed_table, format_train_minutes,
                        format_verdicts, run_compare_benchmark)

    suffix, overrides = _study(args)
    results = Path(args.results or f"benchmarks/results/compare{suffix}.json")
    records, _ = run_compare_benchmark(args.data, args.output or f"runs/bench_cifar10{suffix}", results,
                                       quick=args.quick, epochs=args.epochs, overrides=overrides, command=command,
                                       models=args.models, seeds=1 if args.seeds is None else args.seeds,
                                       teacher=args.teacher)
    print(format_compare_table(records))
    meta = _read_meta(results)
    if (args.seeds or 0) > 1:
        print(format_seed_table(meta["seed_spread"]))
    print(format_verdicts(meta["verdicts"]))
    print(format_compare_targets(meta))
    print(format_train_minutes(meta["train_minutes"]))
    return 0


def _bench_study(args: argparse.Namespace, command: str) -> int:
    """bench regime / distill: studies over compare's runs folder (same options, same runs)."""
    from . import bench

    run, table = {"regime": (bench.run_regime_benchmark, bench.format_regime_table),
                  "distill": (bench.run_distill_benchmark, bench.format_distill_table)}[args.which]
    length = {"lengths": args.lengths} if args.which == "regime" else {"epochs": args.epochs}
    if args.which == "regime" and args.epochs:
        raise ValueError("bench regime trains every --lengths; --epochs does not apply")
    suffix, overrides = _study(args)
    results = Path(args.results or f"benchmarks/results/{args.which}{suffix}.json")
    records = run(args.data, args.output or f"runs/bench_cifar10{suffix}", results, quick=args.quick,
                  overrides=overrides, command=command, teacher=args.teacher, models=args.models, **length)
    print(table(records))
    print(bench.format_train_minutes(_read_meta(results)["train_minutes"]))
    return 0


def _bench_loader(args: argparse.Namespace, command: str) -> int:
    from .bench.loader import LoaderPlan, format_loader_table, run_loader_benchmark

    if args.epochs:
        raise ValueError("bench loader trains nothing: --epochs does not apply")
    plan = LoaderPlan.quick_plan() if args.quick else LoaderPlan()
    results = args.results or f"benchmarks/results/loader{'_quick' if args.quick else ''}.json"
    records = run_loader_benchmark(args.data, results, plan, scratch=args.output or "runs/bench_loader",
                                   command=command)
    print(format_loader_table(records))
    return 0


def _bench_speed(args: argparse.Namespace, command: str) -> int:
    from .bench import SpeedPlan, format_speed_table, format_speed_targets, run_speed_benchmark

    if args.epochs or args.output:
        raise ValueError("bench speed trains nothing: --epochs and --output do not apply")
    results = Path(args.results or f"benchmarks/results/speed{'_quick' if args.quick else ''}.json")
    plan = SpeedPlan.quick_plan() if args.quick else SpeedPlan()
    records = run_speed_benchmark(results, plan, devices=args.device, threads=args.threads, command=command)
    meta = _read_meta(results)
    if args.json:
        for r in records:
            print(json.dumps(r))
        return 0
    print(format_speed_table(records))
    print(f"ceilings: {meta['ceilings']}")
    print(format_speed_targets(meta["targets"]))
    return 0


def _bench_deploy(args: argparse.Namespace, command: str) -> int:
    from .bench.deploy import format_deploy_tables, run_deploy_benchmark

    if not args.run:  # the exported forms at random initialisation
        from .bench.deploy_forms import DeployPlan, deploy_targets, run_forms_benchmark

        plan = DeployPlan.quick_plan() if args.quick else DeployPlan()
        records = run_forms_benchmark(args.results or f"benchmarks/results/deploy_forms{'_quick' if args.quick else ''}.json",
                                      plan, command=command)
        for variant in plan.variants:
            for t in deploy_targets(records, variant):
                print(f"{'MET   ' if t['met'] else 'MISSED'} [{variant}] {t['target']}: {t['ratio']:.2f}")
        return 0
    out = run_deploy_benchmark(args.run, args.data, args.results or "benchmarks/results/deploy.json",
                               static_run=args.static_run, command=command)
    print(format_deploy_tables(out))
    return 0


def _bench_train(args: argparse.Namespace, command: str) -> int:
    from .bench.train_speed import TrainSpeedPlan, format_train_speed_table, run_train_speed_benchmark

    plan = TrainSpeedPlan.quick_plan() if args.quick else TrainSpeedPlan()
    results = args.results or f"benchmarks/results/train_speed{'_quick' if args.quick else ''}.json"
    print(format_train_speed_table(run_train_speed_benchmark(args.data, results, plan,
                                                             scratch=args.output or "runs/bench_train",
                                                             command=command)))
    return 0


def _bench_gpu(args: argparse.Namespace, command: str) -> int:
    from .bench.gpu_check import format_gpu_check, run_gpu_check

    summary = run_gpu_check(args.results or "benchmarks/results/gpu_check.json", data=args.data,
                            scratch=args.output or "runs/gpu_check", command=command)
    print(format_gpu_check(summary))
    return 0 if summary["ok"] else 1


_BENCHES = {"compare": _bench_compare, "regime": _bench_study, "distill": _bench_study, "ablation": _bench_ablation, "accuracy": _bench_accuracy,
            "speed": _bench_speed, "deploy": _bench_deploy, "loader": _bench_loader, "train": _bench_train, "gpu": _bench_gpu,
            "transfer": _bench_transfer}


class _IntermixedParser(argparse.ArgumentParser):
    """A command's parser that takes options and positionals in any order (``train --output D key=value
    --config C key=value``): plain argparse stops collecting ``nargs='*'`` positionals at the first option."""

    _inside = False

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[no-untyped-def,override]
        if self._inside:  # parse_known_intermixed_args calls back in here (Python < 3.12)
            return super().parse_known_args(args, namespace)
        self._inside = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inside = False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="basisnet", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_IntermixedParser)

    p = sub.add_parser("madds", help="count multiply-adds and parameters of a model")
    p.add_argument("--model", required=True, choices=list_models())
    p.add_argument("--width", type=float, default=1.0, help="channel multiplier (default 1.0)")
    p.add_argument("--resolution", type=int, default=224, help="input side in pixels (default 224)")
    p.add_argument("--num-classes", type=int, default=1000, help="classifier outputs (default 1000)")
    p.add_argument("--bases", type=int, default=0, help="N basis kernels per block conv (default 0: static)")
    p.add_argument("--drop-strides", type=int, default=0, help="early stride-2 steps run at stride 1 (default 0)")
    p.add_argument("--depth", type=int, default=2, help="breakdown depth in module names (default 2)")
    p.add_argument("--json", action="store_true", help="print one JSON object (madds and params per image)")
    p.set_defaults(func=_madds)

    p = sub.add_parser("train", help="train a model from a YAML config plus key=value overrides")
    p.add_argument("--config", help=f"YAML file or bundled config name ({', '.join(list_configs())})")
    p.add_argument("--output", help="run directory to create")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run where it stopped")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.add_argument("--list-keys", action="store_true", help="list every config key with its default and meaning")
    p.add_argument("overrides", nargs="*", help="config overrides such as train.lr=0.05 model.kwargs.num_bases=8")
    p.set_defaults(func=_train)

    p = sub.add_parser("sweep", help="accuracy vs average MAdds for every early-exit threshold (CSV + PNG)")
    p.add_argument("run_dir")
    p.add_argument("--split", choices=["val", "test"], default="val", help="default val (test is for final reports)")
    p.set_defaults(func=_sweep)

    p = sub.add_parser("evaluate", help="test-set report; thresholds fitted on the validation split")
    p.add_argument("run_dir")
    p.add_argument("--protocol", choices=["early-exit", "anytime", "budgeted"], default="early-exit")
    p.add_argument("--target-madds", type=float, help="early exit: most accurate threshold within M million MAdds")
    p.add_argument("--max-drop", type=float, help="early exit: cheapest threshold losing at most D points")
    p.add_argument("--target-ms", type=float, help="early exit: most accurate threshold whose mean latency per image "
                   "(batch 1, measured on this machine) fits X ms")
    p.add_argument("--threshold", type=float, help="early exit: use this threshold in [0, 1]")
    p.add_argument("--runtime", choices=["onnx", "torch"], help="--target-ms: where latency is measured (default "
                   "onnx, the stages exported at batch 1, where onnxruntime is installed; else torch eager)")
    p.add_argument("--temperature", action="store_true", help="budgeted: per-exit temperature scaling")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("shortcut", help="BasisNet: does the specialist read the image or its coefficients? "
                       "(top-1 with each image's own vs the mean coefficients)")
    p.add_argument("run_dir")
    p.add_argument("--split", choices=["val", "test"], default="val")
    p.add_argument("--limit", type=int, help="only the first N images of the split")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_shortcut)

    p = sub.add_parser("predict", help="class, confidence and answering stage for image files")
    p.add_argument("run_dir")
    p.add_argument("images", nargs="*")
    p.add_argument("--threshold", type=float, default=0.8, help="confidence needed to stop at exit 1 (default 0.8)")
    p.add_argument("--stream", metavar="DIR_OR_GLOB", help="a stream of frames (sorted files): each stage in its own "
                   "thread, the lightweight model on frame t+1 while the specialist works on frame t")
    p.add_argument("--sequential", action="store_true", help="stream: the stages one after the other (baseline)")
    p.add_argument("--workers", choices=["auto", "process", "thread"], default="auto",
                   help="stream: stage workers (auto: threads for ONNX Runtime, which runs without the GIL; processes "
                   "for PyTorch, whose threads would share it)")
    p.add_argument("--stage-threads", type=int, nargs="+", help="stream: threads per stage (default 1 each)")
    p.add_argument("--runtime", choices=["onnx", "torch"], help="stream: ONNX Runtime (the stages exported at batch "
                   "1 into RUN_DIR/onnx_batch1, again when the weights are newer; the default where onnxruntime is "
                   "installed) or PyTorch eager")
    p.add_argument("--limit", type=int, help="stream: the first N frames only")
    p.add_argument("--summary", action="store_true", help="stream: print only frames/s and latency")
    p.set_defaults(func=_predict)

    p = sub.add_parser("export", help="one ONNX graph per stage plus stages.json, for ONNX Runtime with early exit "
                       "(basisnet.deploy.onnx_export.OnnxStages)")
    p.add_argument("run_dir")
    p.add_argument("--format", choices=["onnx"], default="onnx")
    p.add_argument("--batch", default="dynamic", help="the batch the graphs serve: 1 (streams: the specialist "
                   "synthesized once per image), N (bulk batches of N) or dynamic (any batch; default)")
    p.add_argument("--output", required=True, help="folder for stage{k}.onnx, stages.json and classes.json")
    p.set_defaults(func=_export)

    p = sub.add_parser("specialize", help="BasisNet: one static specialist for a stream (a camera's images), "
                       "from its coefficients averaged over them")
    p.add_argument("run_dir")
    p.add_argument("--data", required=True, help="folder (searched recursively) or glob of the stream's images")
    p.add_argument("--output", required=True, help="safetensors file to write (an ordinary MobileNet)")
    p.set_defaults(func=_specialize)

    p = sub.add_parser("convert", help="a torchvision or timm MobileNet checkpoint as a basisnet weights file "
                       "(same outputs; a start for train.init_from)")
    p.add_argument("source", nargs="?", metavar="SOURCE:NAME=PATH",
                   help="e.g. torchvision:mobilenet_v3_large=mobilenet_v3_large-8738ca79.pth (--list: the names)")
    p.add_argument("--output", help="safetensors file to write")
    p.add_argument("--num-classes", type=int, help="a new classifier with this many outputs (default: the checkpoint's)")
    p.add_argument("--list", action="store_true", help="print the supported SOURCE:NAME checkpoints")
    p.set_defaults(func=_convert)

    p = sub.add_parser("docs", help="render the tables of docs/*.md from benchmarks/results/*.json and the "
                       "config keys (between <!-- table: NAME --> and <!-- /table -->)")
    p.add_argument("--check", action="store_true", help="rewrite nothing; name the tables that differ (exit 1)")
    p.add_argument("--docs", default="docs", help="folder of the Markdown pages (default docs)")
    p.add_argument("--results", default="benchmarks/results", help="folder of the results files "
                   "(default benchmarks/results)")
    p.set_defaults(func=_docs)

    p = sub.add_parser("demo", help="train a small BasisNet on the embedded SHAPES data and show the trade-off")
    p.add_argument("--output", default="runs/demo")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. train.epochs=2")
    p.set_defaults(func=_demo)

    p = sub.add_parser("bench", help="benchmarks: compare (every peer on CIFAR-10, both protocols; --seeds, --teacher), "
                       "regime (BasisNet's gain over static and CondConv against training length), distill (the "
                       "multi-exit models with and without self-distillation), ablation "
                       "(BasisNet recipe candidates), accuracy (warm-started BasisNet vs the static family), speed "
                       "(milliseconds side by side with multiply-adds), deploy (exported forms in ONNX Runtime vs the static twin; --run: a trained run per stage, cameras), loader "
                       "(streaming images/s against bare JPEG decoding), train (basisnet train against a bare "
                       "loop, images/s), transfer (a pretrained static net fine-tuned vs a BasisNet upcycled from it, on 5 "
                       "new CIFAR-10 classes) or gpu (the GPU-only tests, train and speed on a CUDA device: one results "
                       "file; fails without a GPU)")
    p.add_argument("which", choices=list(_BENCHES))
    p.add_argument("--data", help="CIFAR-10 root (ImageFolder or python format; transfer: ImageFolder only; default "
                   "../shared/data/cifar10, gpu: the embedded SHAPES set)")
    p.add_argument("--output", help="where the runs go, reused and resumed (default runs/bench_cifar10, "
                   "runs/bench_cifar10_quick with --quick); both benchmarks share it; transfer: runs/bench_transfer[_quick]")
    p.add_argument("--results", help="records file (default benchmarks/results/{cifar10,compare,transfer}[_quick].json)")
    p.add_argument("--epochs", type=int, help="epochs per model (default 12; --quick: 2; transfer: target epochs, default 30)")
    p.add_argument("--quick", action="store_true", help="the same code on 4,000 images for 2 epochs (< 5 min); "
                   "speed: 32 px models only, batches 1 and 64, fewer repeats, no compile (< 2 min); "
                   "loader: 5,000 CIFAR files, 120 large JPEGs, 0 and 2 workers; transfer: 400 source images per "
                   "class for 1 epoch, 40 target images per class for 2 epochs (about a minute)")
    p.add_argument("--widths", type=float, nargs="+", help="accuracy: static MobileNetV3-Small widths "
                   "(default 0.35 0.5 0.75; must include 0.35 and 0.5)")
    p.add_argument("--warm-epochs", type=int, help="accuracy: BasisNet's epochs on top of the static nets "
                   "(default 6; --quick: 1)")
    p.add_argument("--models", nargs="+", help="compare: re-run only these peers (run names: basisnet, static_w0.5, "
                   "condconv, msdnet, ranet), keeping the others' records from --results; regime: the peers trained at "
                   "every length (default basisnet static_w0.5 condconv; a peer left out is read where its run exists); distill: "
                   "the multi-exit peers to study (default basisnet msdnet ranet)")
    p.add_argument("--candidates", nargs="+", help="ablation: candidate names (default: all)")
    p.add_argument("--subset", type=int, help="ablation, compare, regime, distill: train on N images of the training "
                   "split (default: all; runs go to runs/bench_cifar10_n<N>)")
    p.add_argument("--seeds", type=int, help="compare: train BasisNet and its static backbone with this many seeds "
                   "(train.seed 0..N-1; mean and min-max reported; default 1)")
    p.add_argument("--teacher", help="compare, regime, distill: every run distils from this trained run directory "
                   "(train.kd_teacher; runs go to a folder ending in _kd)")
    p.add_argument("--lengths", type=int, nargs="+", help="regime: training lengths in epochs (default 3 6 12)")
    p.add_argument("--threads", type=int, help="speed: torch threads (default: torch's own choice)")
    p.add_argument("--device", nargs="+", choices=["cpu", "cuda"], help="speed: devices (default: cpu, and cuda "
                   "when present)")
    p.add_argument("--json", action="store_true", help="speed: print the records as JSON lines")
    p.add_argument("--source-epochs", type=int, help="transfer: epochs of the pretrained sources (default 15; "
                   "--quick: 1)")
    p.add_argument("--per-class", type=int, help="transfer: target training images per class (default 500; --quick: 40)")
    p.add_argument("--run", help="deploy: a trained BasisNet run directory (ONNX Runtime per stage, cameras); "
                   "without it: the exported forms against the static twin at random initialisation")
    p.add_argument("--static-run", help="deploy: a trained static backbone run, for the camera table")
    p.set_defaults(func=_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # benchmarks record the command that made them
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        return args.func(args)
    except TrainingInterrupted as stopped:  # SIGTERM / SIGINT: a checkpoint was written; the shell's exit code
        if launch_env().rank == 0:
            print(f"basisnet {args.command}: {stopped}", file=sys.stderr)
        return stopped.exit_code
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"basisnet {args.command}: error: {err}", file=sys.stderr)
        return 2
