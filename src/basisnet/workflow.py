"""Workflows on a run directory: train from a config, cache exit logits, sweep, evaluate, predict.

Each CLI command is one function here; the directory's files are named by :class:`basisnet.train.RunDir`.
"""

from __future__ import annotations

import csv
import glob
import json
import math
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from .data import load_image_files
from .data.folder import IMAGE_EXTENSIONS
from .data.transforms import IMAGENET_MEAN, IMAGENET_STD
from .deploy import EarlyExitPredictor, Stages, TorchStages, check_threshold, mean_coefficients
from .deploy.latency import exit_latency_ms
from .evaluate import (
    ExitLogits, MaddsReport, anytime, apply_threshold, budgeted_batch, collect_exit_logits, count_madds, count_params, exit_accuracy,
    exit_madds, ShortcutReport, plot_tradeoff, select_threshold, shortcut_report, threshold_sweep,
)
from .layers import to_channels_last
from .models import BasisNet, MobileNet, create_model, model_defaults
from .models.pretrained import list_pretrained, load_pretrained, parse_source
from .inputs import SPLITS, eval_transform, open_inputs
from .resolve import resolve_run, same_run
from .served import Preprocess, Served, open_served
from .train import (ConfigError, RunConfig, RunDir, TrainData, config_help, config_to_dict, fit, load_config, load_run_model,
                    resolve_weights, save_weights, seed_everything, warm_start)
from .train.distributed import distributed_session


@contextmanager
def denormals_flushed() -> Iterator[None]:
    """Denormal floats appear as training goes on and slow CPU kernels several-fold: treat them as 0
    inside, then give the calling thread back the mode it had.

    The switch is per thread: intra-op worker threads that torch starts inside inherit it and keep it.
    """
    tiny = torch.tensor([1e-40], dtype=torch.float32)  # a denormal: times 1 it gives 0 exactly when flushing
    was_on = bool((tiny * 1.0 == 0).item())
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(was_on)


def train_run(
    cfg: RunConfig, run_dir: str | Path, resume: bool = False, progress: bool | None = None
) -> dict[str, Any]:
    """Resolve ``cfg``, build data and model from the resolved run and train into ``run_dir`` (``resume``
    continues it).

    Started by torchrun or srun (``WORLD_SIZE`` / ``SLURM_NTASKS`` > 1), every process calls this: it
    joins the process group (gloo on CPU, NCCL on GPU), trains a DistributedDataParallel model on its
    shard of each global batch (``data.batch_size`` / world size images) and only rank 0 writes files.
    """
    run = RunDir(run_dir)
    if resume:
        run.require_config("cannot resume: ")
    elif run.holds_run():
        raise ValueError(f"{run} already holds a run; pass --resume to continue it or choose another --output")
    resolved = resolve_run(cfg)  # every check before any data is decoded
    rc = resolved.config
    if resume:  # the same check fit makes against the checkpoint, before the data is decoded
        diffs = same_run(load_config(run.config), rc)
        if diffs:
            raise ConfigError(f"config differs from the run in {run}, so resuming would not continue it:\n  "
                              + "\n  ".join(diffs))
    with denormals_flushed(), distributed_session(resolved.device) as info:
        seed_everything(rc.train.seed)  # the same initial weights in every process
        inputs = open_inputs(resolved)
        model = create_model(rc.model.name, **resolved.model_kwargs).to(info.device)
        if rc.train.init_from and not resume:
            started = warm_start(model, rc.train.init_from, rc.train.init_noise, seed=rc.train.seed)
            if info.rank == 0:
                run.path.mkdir(parents=True, exist_ok=True)
                run.init.write_text(json.dumps(
                    {part: {"source": str(rc.train.init_from[part]), **start} for part, start in started.items()},
                    indent=2))
        teacher = load_run_model(rc.train.kd_teacher, create_model) if rc.train.kd_teacher else None
        if teacher is not None:
            if getattr(teacher, "num_classes", None) not in (None, len(resolved.classes)):
                raise ValueError(f"teacher {rc.train.kd_teacher} predicts {teacher.num_classes} classes, "
                                 f"the data has {len(resolved.classes)}")
            teacher.to(info.device)
        if info.rank == 0:
            run.path.mkdir(parents=True, exist_ok=True)
            run.classes.write_text(json.dumps(list(resolved.classes)))
        train_loader = inputs.train_loader(info, resolved.batch_size, info.device)
        val_loader = inputs.eval_loader("val", resolved.eval_batch_size, info)
        if info.distributed:
            if rc.train.channels_last:  # before DDP lays out its gradient buckets after the parameters
                to_channels_last(model)
            model = DistributedDataParallel(model, device_ids=[info.device] if info.device.type == "cuda" else None)
        data = TrainData(train_loader, val_loader, inputs.train_transform(), inputs.eval_transform())
        result = fit(model, data, rc, run, teacher=teacher, resume=resume, progress=progress)
    return {**result, "num_classes": len(resolved.classes)}


def chance_warning(top1: float, num_classes: int) -> str | None:
    """A note when a validation accuracy is no better than guessing (within 5% of the way from chance,
    100 / classes %, to 100%): every later sweep, threshold and speed-up would describe a model that learnt
    nothing."""
    chance = 100.0 / num_classes
    if top1 > chance + 0.05 * (100.0 - chance):
        return None
    return (f"warning: val top-1 {top1:.2f}% is at chance ({chance:.1f}% for {num_classes} classes): the model has "
            "not learnt yet. Train longer or on more images (the smallest run that learns is the demo, "
            "`basisnet demo`; docs/quickstart.md gives a CIFAR-10 recipe).")


def dry_run(cfg: RunConfig) -> str:
    """The run ``cfg`` resolves to, as YAML (the ``config.yaml`` training would save) under a comment line
    with the facts resolution decided; nothing is written or decoded."""
    import yaml

    resolved = resolve_run(cfg)
    facts = " ".join(f"{k}={v}" for k, v in resolved.describe().items())
    return f"# resolved: {facts}\n" + yaml.safe_dump(config_to_dict(resolved.config), sort_keys=False)


_FROM_DATA = {"num_classes": "the data's class count", "resolution": "data.image_size"}


def list_keys(cfg: RunConfig) -> list[tuple[str, Any, str]]:
    """``(key, value, help)`` for every setting of ``cfg``, then every option of its model
    (``model.kwargs.<option>``) with the value the config gives or the model's default."""
    rows = [(key, _value_of(cfg, key), text) for key, _, text in config_help()]
    given = dict(cfg.model.kwargs)
    for option, default in model_defaults(cfg.model.name).items():
        if option in given:
            value, text = given[option], "set by this config"
        elif option in _FROM_DATA:
            value, text = "(from the data)", f"filled in from {_FROM_DATA[option]}"
        else:
            value, text = default, "the model's default"
        rows.append((f"model.kwargs.{option}", value, f"{cfg.model.name} option: {text}"))
    return rows


def _value_of(cfg: RunConfig, key: str) -> Any:
    value: Any = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return list(value) if isinstance(value, tuple) else value


def load_run(run_dir: str | Path) -> tuple[nn.Module, RunConfig]:
    """The trained model (best weights) and resolved config of a run directory."""
    cfg = load_config(RunDir(run_dir).require_config())
    return load_run_model(run_dir, create_model), cfg


def exit_logits(run_dir: str | Path, split: str, progress: bool | None = None) -> ExitLogits:
    """Every exit's logits on ``split`` (val or test), cached in the run directory after one pass."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    cache = RunDir(run_dir).logits(split)
    weights = resolve_weights(run_dir)
    if cache.is_file() and cache.stat().st_mtime >= weights.stat().st_mtime:
        return ExitLogits.load(cache)
    model, cfg = load_run(run_dir)
    inputs = open_inputs(resolve_run(cfg, training=False), with_test=split == "test")
    batches = inputs.eval_loader(split, cfg.data.eval_batch_size)
    with denormals_flushed():
        logits = collect_exit_logits(model, batches, inputs.eval_transform(), progress=progress is not False)
    logits.save(cache)
    return logits


def model_madds(name: str, width: float, resolution: int, num_classes: int, bases: int | None = None,
                drop_strides: int | None = None, depth: int = 3) -> tuple[dict[str, Any], MaddsReport]:
    """A registered model's multiply-adds per module (``basisnet madds``); a bare basis network is counted
    with one per-image coefficient set, so kernel synthesis is charged per image."""
    kwargs: dict[str, Any] = dict(width=width, resolution=resolution, num_classes=num_classes)
    if bases:
        kwargs["num_bases"] = bases
    if drop_strides:
        kwargs["drop_strides"] = drop_strides
    model = create_model(name, **kwargs)
    forward = {}
    if getattr(model, "num_basis_layers", 0):
        forward["coeffs"] = torch.full((1, model.num_basis_layers, bases), 1.0 / bases)
    return kwargs, count_madds(model, depth=depth, **forward)


def run_exit_madds(run_dir: str | Path) -> list[float]:
    """Cumulative MAdds per exit (millions, per image) of a run's model.

    They depend on the architecture only, so they are counted once and kept in ``exit_madds.json``
    (every sweep and evaluation would otherwise rebuild the model just to count).
    """
    cache = RunDir(run_dir).exit_madds
    if cache.is_file():
        return json.loads(cache.read_text())
    model, _ = load_run(run_dir)
    madds = [m / 1e6 for m in exit_madds(model)]
    cache.write_text(json.dumps(madds))
    return madds


def sweep_run(run_dir: str | Path, split: str = "val", thresholds: Sequence[float] | None = None,
              progress: bool | None = None) -> list[dict]:
    """Accuracy and average MAdds for every threshold from one cached pass; writes CSV and PNG."""
    run = RunDir(run_dir)
    logits = exit_logits(run_dir, split, progress)
    madds = run_exit_madds(run_dir)
    rows = threshold_sweep(logits, madds, thresholds)
    with open(run.sweep(split, ".csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["threshold", "top1", "madds_m", "exit_fraction"])
        for r in rows:
            writer.writerow([f"{r['threshold']:.4f}", f"{r['top1']:.3f}", f"{r['madds']:.4f}",
                             f"{r['exit_fraction']:.4f}"])
    stage_points = {f"exit {i + 1} alone": [(m, acc)] for i, (m, acc) in enumerate(zip(madds, exit_accuracy(logits)))}
    plot_tradeoff({"early exit (threshold sweep)": [(r["madds"], r["top1"]) for r in rows]}, stage_points,
                  run.sweep(split, ".png"), title=f"{run.path.name}: accuracy vs average MAdds ({split})")
    return rows


def evaluate_run(
    run_dir: str | Path,
    protocol: str = "early-exit",
    target_madds: float | None = None,
    max_drop: float | None = None,
    threshold: float | None = None,
    temperature: bool = False,
    progress: bool | None = None,
    target_ms: float | None = None,
    runtime: str | None = None,
    latency_images: int = 1000,
) -> dict[str, Any]:
    """Test-set report of a run under one protocol; thresholds are always fitted on validation.

    ``early-exit``: one confidence threshold, given or picked on val by ``target_madds`` (millions),
    ``target_ms`` (mean milliseconds per image on this machine, batch 1, in ``runtime``: each exit's
    latency measured there, weighted by the exit fractions; the picked threshold is then timed on the
    first ``latency_images`` test images one by one) or ``max_drop`` (points vs. the last exit).
    ``anytime``: every exit. ``budgeted``: MSDNet's budgeted-batch curve.
    """
    run_dir = Path(run_dir)
    madds = run_exit_madds(run_dir)
    val, test = exit_logits(run_dir, "val", progress), exit_logits(run_dir, "test", progress)
    report: dict[str, Any] = {"run": str(run_dir), "protocol": protocol, "exit_madds": madds,
                              "exit_top1_test": exit_accuracy(test), "exit_top1_val": exit_accuracy(val)}
    if protocol == "early-exit":
        if sum(x is not None for x in (threshold, target_madds, max_drop, target_ms)) != 1:
            raise ValueError("early-exit evaluation needs exactly one of --threshold, --target-madds, --target-ms "
                             "or --max-drop")
        if target_ms is not None:
            runner = _LatencyRunner(run_dir, resolve_runtime(runtime))
            with denormals_flushed():
                exit_ms = runner.exit_latency_ms()
            report["runtime"], report["exit_ms"] = runner.runtime, exit_ms
            try:
                threshold = select_threshold(val, exit_ms, target_madds=target_ms)
            except ValueError:
                raise ValueError(f"target {target_ms} ms per image is below the fastest exit here "
                                 f"({exit_ms[0]:.2f} ms at batch 1 in {runner.runtime})") from None
            report["target_ms"] = target_ms
            report["mean_ms_val"] = apply_threshold(val, exit_ms, threshold)["madds"]
            report["mean_ms_test"] = apply_threshold(test, exit_ms, threshold)["madds"]
            with denormals_flushed():
                report["measured_ms_test"] = runner.measure(threshold, latency_images)
        elif threshold is None:
            threshold = select_threshold(val, madds, target_madds=target_madds, max_drop=max_drop)
        check_threshold(threshold)
        report["result"] = apply_threshold(test, madds, threshold)
    elif protocol == "anytime":
        report["result"] = anytime(test, madds)
    elif protocol == "budgeted":
        report["result"] = budgeted_batch(val, test, madds, temperature=temperature)
    else:
        raise ValueError(f"protocol must be early-exit, anytime or budgeted, got {protocol!r}")
    RunDir(run_dir).evaluation(protocol).write_text(json.dumps(report, indent=2))
    return report


class _LatencyRunner:
    """A run's early exit at batch 1 in one runtime: each exit's latency, and the mean time per test image
    of a threshold, measured by answering the images one by one."""

    def __init__(self, run_dir: str | Path, runtime: str) -> None:
        self.runtime = runtime
        self.cfg = load_config(RunDir(run_dir).require_config())
        stages = open_stages(run_dir, runtime)
        # One intra-op thread per stage where the runtime sets them per stage, as a stream stage runs: with 2
        # on 2 cores the pool's wake-ups put a long tail on batch-1 times (BENCHMARKS.md).
        self.stages = stages.with_threads([1] * stages.num_exits)

    def exit_latency_ms(self) -> list[float]:
        return exit_latency_ms(self.stages)

    def measure(self, threshold: float, images: int) -> float:
        inputs = open_inputs(resolve_run(self.cfg, training=False), with_test=True)
        x = inputs.eval_transform()(_first_images(inputs.eval_loader("test", self.cfg.data.eval_batch_size), images)[0])
        answer = EarlyExitPredictor(self.stages, threshold).predict
        for frame in x[:3]:  # warm-up
            answer(frame[None])
        start = time.perf_counter()
        for frame in x:
            answer(frame[None])
        return 1e3 * (time.perf_counter() - start) / len(x)


def shortcut_run(run_dir: str | Path, split: str = "val", limit: int | None = None) -> ShortcutReport:
    """The routing-shortcut diagnostic of a BasisNet run on ``split`` (the first ``limit`` images);
    written to ``shortcut_<split>.json``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    model, cfg = load_run(run_dir)
    if not isinstance(model, BasisNet):
        raise ValueError(f"{run_dir} holds a {type(model).__name__}: the shortcut diagnostic is for BasisNet")
    inputs = open_inputs(resolve_run(cfg, training=False), with_test=split == "test")
    images, labels = _first_images(inputs.eval_loader(split, cfg.data.eval_batch_size), limit)
    with denormals_flushed():
        report = shortcut_report(model, inputs.eval_transform()(images), labels)
    n = len(labels)
    RunDir(run_dir).shortcut(split).write_text(json.dumps({"images": n, **report.as_dict()}, indent=2))
    return report


def _first_images(batches: Iterable[tuple[Tensor, Tensor]], limit: int | None) -> tuple[Tensor, Tensor]:
    """The first ``limit`` images (all when None) of an evaluation loader, as one uint8 batch."""
    images, labels, count = [], [], 0
    for x, y in batches:
        images.append(x)
        labels.append(y)
        count += len(y)
        if limit is not None and count >= limit:
            break
    return torch.cat(images)[:limit], torch.cat(labels)[:limit]


def image_files(source: str | Path) -> list[Path]:
    """The image files of a folder (recursively, sorted) or of a glob pattern."""
    root = Path(source)
    found = sorted(root.rglob("*")) if root.is_dir() else sorted(Path(p) for p in glob.glob(str(source), recursive=True))
    files = [p for p in found if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")]
    if not files:
        raise FileNotFoundError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in {source}")
    return files


def specialize_run(run_dir: str | Path, source: str | Path, output: str | Path, batch_size: int = 256) -> dict[str, Any]:
    """Average a BasisNet run's coefficients over the images of ``source`` (a camera's folder or glob)
    and write the synthesized static specialist to ``output`` (safetensors that ``load_run_model``
    rebuilds as an ordinary MobileNet). Returns what was written."""
    model, cfg = load_run(run_dir)
    if not isinstance(model, BasisNet):
        raise ValueError(f"{run_dir} holds a {type(model).__name__}: only a BasisNet has coefficients to average")
    files = image_files(source)
    normalize = eval_transform(cfg)
    batches = (normalize(load_image_files(files[i:i + batch_size], cfg.data.image_size))
               for i in range(0, len(files), batch_size))
    coeffs, count = mean_coefficients(model, batches)
    static = model.specialist.synthesize(coeffs)
    meta = {"specialized_from": str(run_dir), "images": str(count), "classes": RunDir(run_dir).classes.read_text(),
            "preprocess": json.dumps(Preprocess.of(cfg.data).as_dict())}
    _save_mobilenet(static, output, meta)
    return {"output": str(output), "images": count, "model": static.config["arch"], "madds": count_madds(static).madds}


def _save_mobilenet(model: MobileNet, output: str | Path, metadata: dict[str, str]) -> None:
    """Weights plus the ``model`` metadata ``load_run_model`` rebuilds the network from."""
    spec = {k: list(v) if isinstance(v, tuple) else v for k, v in model.config.items() if k != "arch"}
    arch = model.config["arch"]
    if not isinstance(arch, str):
        raise ValueError("the network is built from an ArchSpec object, not a registered name: it cannot be saved "
                         "as a rebuildable model")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    save_weights(model, output, {"model": json.dumps({"name": arch, "kwargs": spec}), **metadata})


def convert_checkpoint(source: str, output: str | Path, num_classes: int | None = None) -> dict[str, Any]:
    """A torchvision / timm MobileNet checkpoint (``SOURCE:NAME=PATH``) as a basisnet weights file: usable
    as ``train.init_from`` of a MobileNet or BasisNet part and rebuilt by ``load_run_model``."""
    parsed = parse_source(source)
    if parsed is None:
        raise ValueError(f"{source!r} is not SOURCE:NAME=PATH; supported names: {', '.join(list_pretrained())}")
    name, path = parsed
    with torch.random.fork_rng(devices=[]):  # a new classifier's draw: the same file every time
        torch.manual_seed(0)
        model = load_pretrained(name, path, num_classes)
    # As torchvision and timm evaluate their ImageNet MobileNets: ImageNet statistics, resize 256 -> crop 224.
    imagenet = Preprocess(model.resolution, IMAGENET_MEAN, IMAGENET_STD, 0.875)
    _save_mobilenet(model, output, {"converted_from": f"{name} ({Path(path).name})",
                                    "preprocess": json.dumps(imagenet.as_dict())})
    return {"output": str(output), "model": model.config["arch"], "num_classes": model.num_classes,
            "norm_eps": model.config["norm_eps"], "params": count_params(model)}


def _torch_stages(served: Served) -> Stages:
    """The model in PyTorch eager, channels_last (the layout CPU kernels run these convs fastest in)."""
    return TorchStages(to_channels_last(served.build()))


def _onnx_stages(served: Served) -> Stages:
    """The stages exported at batch 1 (the form a stream and a latency target serve), in ONNX Runtime; the
    PyTorch model is built only to export them, when they are missing or older than the weights."""
    from .deploy.onnx_runtime import OnnxStages  # needs the onnx extra

    return OnnxStages(_exported(served, 1))


RUNTIMES = {"onnx": _onnx_stages, "torch": _torch_stages}  # --runtime name -> the stages in it


def resolve_runtime(runtime: str | None) -> str:
    """``onnx`` (ONNX Runtime, the deployment runtime) or ``torch`` (eager); None: onnx where its extra
    is installed."""
    if runtime is None:
        import importlib.util

        found = all(importlib.util.find_spec(m) for m in ("onnxruntime", "onnxscript"))
        return "onnx" if found else "torch"
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {tuple(RUNTIMES)}, got {runtime!r}")
    return runtime


def open_stages(model: str | Path, runtime: str | None) -> Stages:
    """The stages of a run directory or weights file in ``runtime`` (a ``--runtime`` choice; None:
    ``resolve_runtime``'s default). Below this nothing asks which runtime it is."""
    return _stages(open_served(model), runtime)


def _stages(served: Served, runtime: str | None) -> Stages:
    return RUNTIMES[resolve_runtime(runtime)](served)


def exported_stages(model: str | Path, batch: int | str = 1) -> Path:
    """The folder of the stages of a run directory or weights file exported for ``batch``."""
    return _exported(open_served(model), batch)


def _exported(served: Served, batch: int | str) -> Path:
    """``Served.onnx(batch)``, exported (again) when missing or older than the weights; an export says so on
    stderr, so its time is not mistaken for serving's."""
    from .deploy.onnx_export import MANIFEST  # needs the onnx extra

    out = served.onnx(batch)
    manifest = out / MANIFEST
    if not manifest.is_file() or manifest.stat().st_mtime < served.weights.stat().st_mtime:
        print(f"exporting the stages of {served.path} for batch {batch} to {out} (once)", file=sys.stderr, flush=True)
        export_run(served.path, out, batch)
    return out


def export_run(model: str | Path, output: str | Path, batch: int | str = "dynamic") -> list[dict[str, Any]]:
    """ONNX graphs of a run directory's or weights file's model, one per stage, for ``batch``
    (``basisnet.deploy.onnx_export``), with its class names and the preprocessing an image needs."""
    from .deploy.onnx_export import MANIFEST, export_stages  # needs the onnx extra

    served = open_served(model)
    stages = export_stages(served.build(), output, batch=batch)
    (Path(output) / "classes.json").write_text(json.dumps(served.classes))  # as a run directory names it
    manifest = Path(output) / MANIFEST
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "preprocess": served.preprocess.as_dict()},
                                   indent=2) + "\n")
    return [s.__dict__ for s in stages]


class StreamRun:
    """A stream being answered (``predict_stream``): iterating gives each frame's row as it is answered, in
    order; ``summary()`` then states frames/s and latency of what was iterated."""

    def __init__(self, rows: Iterable[dict[str, Any]], how: str, source: str | Path, started: float) -> None:
        self.rows, self.how, self.source, self.started = rows, how, source, started
        self.latencies: list[float] = []
        self.first = self.ended = None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for row in self.rows:
            self.first = self.first or time.perf_counter()
            self.latencies.append(row["latency_ms"])
            yield row
        self.ended = time.perf_counter()

    def summary(self) -> str:
        """Frames per second from the call (loading included) and after the first answer, mean and p95 latency
        (the nearest-rank p95: the smallest latency at least 95% of the frames reach, never below the median)."""
        if not self.latencies:
            raise ValueError(f"no frames in {self.source}")
        n, seconds = len(self.latencies), self.ended - self.started
        latencies = sorted(self.latencies)
        steady = (n - 1) / (self.ended - self.first) if n > 1 and self.ended > self.first else float("nan")
        return (f"{n} frames in {seconds:.2f} s: {n / seconds:.1f} frames/s ({steady:.1f} after the first answer), "
                f"latency mean {sum(latencies) / n:.2f} ms, p95 {latencies[math.ceil(0.95 * n) - 1]:.2f} ms ({self.how})")


def predict_stream(model: str | Path, source: str | Path, threshold: float, parallel: bool = True,
                   stage_threads: Sequence[int] | None = None, limit: int | None = None,
                   workers: str = "auto", runtime: str | None = None) -> StreamRun:
    """Per frame of a folder or glob (sorted: a stream), its answer with early exit, the stages running
    in parallel workers (``basisnet.deploy.stream``) or one after the other, in ``runtime`` (``open_stages``).
    ``model``: a run directory or weights file. The clock starts once the stages are ready (an export the
    first call makes is not counted in frames/s)."""
    from .deploy.stream import StreamPredictor

    check_threshold(threshold)
    served = open_served(model, "predict: ")
    files = image_files(source)[:limit]
    classes, normalize, size = served.classes, served.preprocess.transform(), served.preprocess.image_size
    stages = _stages(served, runtime)
    started = time.perf_counter()
    frames = (normalize(load_image_files([f], size))[0] for f in files)
    predictor = StreamPredictor(stages, threshold, stage_threads, parallel=parallel, workers=workers)
    rows = ({"file": str(files[r.index]), "class": classes[r.cls], "confidence": r.confidence, "exit": r.exit,
             "latency_ms": 1e3 * r.latency_s} for r in predictor.predict(frames))
    return StreamRun(rows, predictor.how, source, started)


def run_threshold(model: str | Path) -> tuple[float, str]:
    """The threshold ``predict`` uses when none is given, and where it came from: the one the run's latest
    early-exit evaluation picked, so serving answers as calibrated (``Served.threshold``)."""
    return open_served(model, "predict: ").threshold()


def predict_files(model: str | Path, paths: Sequence[str | Path], threshold: float) -> list[dict[str, Any]]:
    """Class, confidence and answering exit (counted from 1) for each image file (PyTorch); ``model``: a run
    directory or weights file."""
    check_threshold(threshold)
    served = open_served(model, "predict: ")
    images = load_image_files(paths, served.preprocess.image_size)
    classes = served.classes
    out = EarlyExitPredictor(_stages(served, "torch"), threshold).predict(served.preprocess.transform()(images))
    return [
        {"file": str(p), "class": classes[c], "confidence": float(conf), "exit": int(e),
         "madds_m": float(m) / 1e6}
        for p, c, conf, e, m in zip(paths, out.classes.tolist(), out.confidence, out.exit, out.madds)
    ]
