"""``basisnet <command>``: argument parsing and dispatch only; each command calls one library function."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from .configs import list_configs
from .models import list_models
from .train.distributed import launch_env
from .train.preemption import TrainingInterrupted


def _madds(args: argparse.Namespace) -> int:
    from .workflow import model_madds

    kwargs, report = model_madds(args.model, args.width, args.resolution, args.num_classes, args.bases,
                                 args.drop_strides, args.depth)
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
    from .train import RunDir, load_config
    from .workflow import chance_warning, dry_run, list_keys, train_run

    main_process = launch_env().rank == 0  # under torchrun / srun only rank 0 reports
    if not main_process:
        logging.getLogger().setLevel(logging.WARNING)
    if args.list_keys:
        cfg = load_config(bundled_config(args.config) if args.config else None, args.overrides)
        rows = list_keys(cfg)
        width = max(len(key) for key, _, _ in rows) + 2
        for key, value, text in rows:
            print(f"{key:<{width}}{value!s:<28}{text}")
        return 0
    if args.resume:
        cfg = load_config(RunDir(args.resume).require_config("cannot resume: "), args.overrides)
        result = train_run(cfg, args.resume, resume=True)
    else:
        cfg = load_config(bundled_config(args.config) if args.config else None, args.overrides)
        if args.dry_run:  # writes nothing, so it needs no --output
            print(dry_run(cfg))
            return 0
        if not args.output:
            raise ValueError("--output RUN_DIR is required (or --resume RUN_DIR)")
        result = train_run(cfg, args.output)
    if main_process:
        print(f"best val top-1 {result['best_top1']:.2f}% at epoch {result['best_epoch']}")
        warning = chance_warning(result["best_top1"], result["num_classes"])
        if warning:
            print(warning, file=sys.stderr)
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
    elif args.protocol == "anytime":
        print(f"{'budget cut after exit':>22}{'top-1 %':>9}{'MAdds (M)':>11}")
        for r in result:
            print(f"{r['exit']:>22}{r['top1']:>9.2f}{r['madds']:>11.3f}")
    else:  # MSDNet's budgeted batch: q sets how the exits share the images (p_k ~ q^k)
        print(f"{'q':>6}{'top-1 %':>9}{'MAdds (M)':>11}  images answered per exit (%)")
        for r in result:
            shares = " ".join(f"{100 * f:.0f}" for f in r["exit_fractions"])
            print(f"{r['q']:>6.3f}{r['top1']:>9.2f}{r['madds']:>11.3f}  {shares}")
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
    from .workflow import predict_files, predict_stream, run_threshold

    if args.threshold is None:
        args.threshold, where = run_threshold(args.run_dir)
        print(f"threshold {args.threshold:.3f} ({where})", file=sys.stderr)

    if args.stream:
        if args.images:
            raise ValueError("give image files or --stream SOURCE, not both")
        stream = predict_stream(args.run_dir, args.stream, args.threshold, parallel=not args.sequential,
                                stage_threads=args.stage_threads, limit=args.limit, workers=args.workers,
                                runtime=args.runtime)
        for row in stream:
            if not args.summary:
                print(f"{row['file']}\t{row['class']}\t{row['confidence']:.3f}\texit {row['exit']}\t"
                      f"{row['latency_ms']:.2f} ms")
        print(stream.summary())
        return 0
    if not args.images:
        raise ValueError("give image files to classify (or --stream SOURCE)")
    for row in predict_files(args.run_dir, args.images, args.threshold):
        print(f"{row['file']}\t{row['class']}\t{row['confidence']:.3f}\texit {row['exit']}\t{row['madds_m']:.2f}M")
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


def _bench(args: argparse.Namespace) -> int:
    return args.bench.main(args, " ".join(["basisnet", *args.argv]))


class _IntermixedParser(argparse.ArgumentParser):
    """A command's parser that takes options and positionals in any order (``train --output D key=value
    --config C key=value``): plain argparse stops collecting ``nargs='*'`` positionals at the first option."""

    _inside = False

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[no-untyped-def,override]
        if self._inside or self._subparsers is not None:  # parse_known_intermixed_args calls back in here
            return super().parse_known_args(args, namespace)  # (Python < 3.12); it cannot take subcommands
        self._inside = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inside = False


class _OwnOptionsParser(argparse.ArgumentParser):
    """A bench's parser: an option it does not take is its own error (``basisnet bench accuracy: error:
    unrecognized arguments: --seeds``), not passed up to the top-level parser."""

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[no-untyped-def,override]
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)} (see {self.prog} --help)")
        return namespace, extras


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("basisnet")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="basisnet", description="Adaptive image classification: train BasisNet and its peers, pick an "
        "accuracy / cost trade-off, evaluate it under one protocol, export and serve with early exit.",
        epilog="basisnet COMMAND --help shows a command's options; docs/quickstart.md walks through them.")
    parser.add_argument("--version", action="version", version=f"basisnet {_version()}")
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

    p = sub.add_parser("predict", help="class, confidence and answering exit for image files")
    p.add_argument("run_dir", metavar="MODEL", help="a run directory or a weights file basisnet wrote (specialize, "
                   "convert, a run's best.safetensors)")
    p.add_argument("images", nargs="*")
    p.add_argument("--threshold", type=float,
                   help="confidence needed to stop at an earlier exit (default: the threshold the run's latest "
                        "`basisnet evaluate` picked, else 0.8)")
    p.add_argument("--stream", metavar="DIR_OR_GLOB", help="a stream of frames (sorted files): each stage in its own "
                   "thread, the lightweight model on frame t+1 while the specialist works on frame t")
    p.add_argument("--sequential", action="store_true", help="stream: the stages one after the other (baseline)")
    p.add_argument("--workers", choices=["auto", "process", "thread"], default="auto",
                   help="stream: stage workers (auto: threads for ONNX Runtime, which runs without the GIL; processes "
                   "for PyTorch, whose threads would share it)")
    p.add_argument("--stage-threads", type=int, nargs="+", help="stream: threads per stage (default 1 each)")
    p.add_argument("--runtime", choices=["onnx", "torch"], help="stream: ONNX Runtime (the stages exported at batch "
                   "1 into MODEL/onnx_batch1, beside a weights file <name>_onnx_batch1, again when the weights are "
                   "newer; the default where onnxruntime is installed) or PyTorch eager")
    p.add_argument("--limit", type=int, help="stream: the first N frames only")
    p.add_argument("--summary", action="store_true", help="stream: print only frames/s and latency")
    p.set_defaults(func=_predict)

    p = sub.add_parser("export", help="one ONNX graph per stage plus stages.json, for ONNX Runtime with early exit "
                       "(basisnet.deploy.onnx_runtime.OnnxStages)")
    p.add_argument("run_dir", metavar="MODEL", help="a run directory or a weights file basisnet wrote")
    p.add_argument("--format", choices=["onnx"], default="onnx")
    p.add_argument("--batch", default="dynamic", help="the batch the graphs serve: 1 (streams: the specialist "
                   "synthesized once per image), N (bulk batches of N) or dynamic (any batch; default)")
    p.add_argument("--output", required=True, help="folder for stage1.onnx ... stageN.onnx, stages.json and classes.json")
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

    from .bench.commands import bench_commands

    p = sub.add_parser("bench", help="benchmarks: studies that train and evaluate runs (compare, regime, distill, "
                       "ablation, accuracy, transfer) and measurements (speed, deploy, loader, train, gpu); "
                       "basisnet bench NAME --help")
    benches = p.add_subparsers(dest="which", required=True, metavar="NAME", parser_class=_OwnOptionsParser)
    for bench in bench_commands():
        q = benches.add_parser(bench.name, help=bench.help, description=bench.help)
        bench.add_options(q)
        q.set_defaults(func=_bench, bench=bench)
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
