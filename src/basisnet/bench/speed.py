"""``basisnet bench speed``: milliseconds beside multiply-adds, every model side by side in one run.

Models are the bundled configs users train (``cifar10_*`` at 32 px; ``imagenet_basisnet`` at 224 px),
at random initialisation: speed does not depend on the weights, except where early exit decides who
leaves, so early exit is measured at thresholds set to let a given share of the batch leave at the
first exit (the same threshold then holds at every later exit). Each figure is a median of repeats
after a warm-up; the machine's own ceiling (a large matmul, a large copy) is measured in the same
run, so each model's achieved GMAdds/s is stated as a fraction of what the machine can do.

The reference of every ratio is the static twin (the basis specialist's architecture with plain
convs) in its fastest measured mode: eager NCHW, channels_last or compiled.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..configs import bundled_config
from ..deploy import EarlyExitPredictor, TorchStages
from ..deploy.latency import median_ms, paired_median_ms
from ..evaluate import count_madds, exit_madds, plot_bars
from ..layers import BASIS_LAYERS, ExecutionPolicy, ForcedPath, execution_policy, to_channels_last, tune_paths
from ..models import BasisNet, MobileNet, create_model
from ..models.calibration import measure_batchnorm, widen_classifiers
from ..train import load_config
from .records import meta_path
from .timing import Ceiling, measure_ceiling, peak_memory_mib, train_step

__all__ = ["SpeedPlan", "WORKLOADS", "format_speed_table", "format_speed_targets", "run_speed_benchmark",
           "speed_targets"]


@dataclass(frozen=True)
class Workload:
    """One input size and the bundled configs measured at it."""

    basisnet: str  # its specialist's static twin is the reference
    peers: tuple[str, ...] = ()  # further multi-exit / routing models, timed on the same inputs


WORKLOADS: dict[str, Workload] = {
    "cifar32": Workload("cifar10_basisnet", ("cifar10_condconv", "cifar10_msdnet", "cifar10_ranet")),
    "imagenet224": Workload("imagenet_basisnet"),
}


@dataclass(frozen=True)
class SpeedPlan:
    """How much to measure: ``quick`` fits in two minutes on a 2-core CPU."""

    workloads: tuple[str, ...] = ("cifar32", "imagenet224")
    batches: tuple[int, ...] = (1, 8, 64)
    train_batch: int = 64
    repeats: int = 10
    exit_shares: tuple[float, ...] = (0.25, 0.5, 0.75)  # share of the batch leaving at exit 1
    compile: bool = True

    @classmethod
    def quick_plan(cls) -> SpeedPlan:
        return cls(workloads=("cifar32",), batches=(1, 64), train_batch=64, repeats=5, exit_shares=(0.5,),
                   compile=False)


@dataclass
class Recorder:
    """Times callables and keeps one record per measurement."""

    device: torch.device
    ceiling: Ceiling
    repeats: int
    workload: str = ""
    records: list[dict[str, Any]] = field(default_factory=list)

    def time(self, model: str, mode: str, batch: int, fn: Callable[[], object], madds: float,
             memory: bool = False, **extra: Any) -> dict[str, Any]:
        """``madds``: millions per image of what ``fn`` computes (training: forward x 3)."""
        ms = median_ms(fn, self.device, repeats=self.repeats)
        peak = peak_memory_mib(fn, self.device) if memory else None
        return self.add(model, mode, batch, ms, madds, peak, **extra)

    def add(self, model: str, mode: str, batch: int, ms: float, madds: float, peak: float | None = None,
            **extra: Any) -> dict[str, Any]:
        """Record a measurement taken elsewhere (e.g. by ``paired_median_ms``)."""
        gmadds_per_s = madds * 1e6 * batch / (ms / 1e3) / 1e9
        rec = {"model": model, "mode": mode, "batch": batch, "ms": round(ms, 3),
               "images_per_s": round(batch / (ms / 1e3), 1), "madds": round(madds, 3),
               "gmadds_per_s": round(gmadds_per_s, 2),
               "ceiling_fraction": round(gmadds_per_s / self.ceiling.matmul_gmadds_per_s, 4),
               "peak_mib": None if peak is None else round(peak, 1),
               "device": self.device.type, "threads": torch.get_num_threads(), "workload": self.workload, **extra}
        self.records.append(rec)
        print(f"[speed] {self.workload:<12}{model:<34}{mode:<26}b={batch:<4}{ms:9.2f} ms", flush=True)
        return rec


def _images(batch: int, resolution: int, device: torch.device) -> Tensor:
    g = torch.Generator().manual_seed(batch)
    return torch.randn(batch, 3, resolution, resolution, generator=g).to(device).contiguous(
        memory_format=torch.channels_last)


def build_calibrated(config: str, device: torch.device, **kwargs: Any) -> nn.Module:
    """A bundled config's model (``kwargs`` override its model kwargs) whose confidences spread over images
    as a trained model's do, so that thresholds split a batch: BatchNorm statistics set from a batch of the
    benchmark's inputs (at initialisation deep features hardly differ between images) and exit classifiers
    re-drawn (at initialisation every softmax is near uniform and one threshold would stop all or none)."""
    cfg = load_config(bundled_config(config))
    torch.manual_seed(0)
    model = to_channels_last(create_model(cfg.model.name, **{**cfg.model.kwargs, **kwargs}).to(device))
    widen_classifiers(model, model.num_classes)
    return measure_batchnorm(model, _images(16, model.resolution, device))


def _coeffs(specialist: MobileNet, batch: int, device: torch.device) -> Tensor:
    g = torch.Generator().manual_seed(1)
    n = specialist.config["num_bases"]
    return torch.softmax(torch.randn(batch, specialist.num_basis_layers, n, generator=g), -1).to(device)


# ------------------------------------------------------------------------------------------ sections


def static_and_basis_specialist(rec: Recorder, net: BasisNet, plan: SpeedPlan) -> None:
    """The basis specialist per path against its static twin per mode, at every batch."""
    device = rec.device
    specialist = net.specialist
    static = to_channels_last(MobileNet(**{**specialist.config, "num_bases": 0}).to(device).eval())
    static_nchw = MobileNet(**{**specialist.config, "num_bases": 0}).to(device).eval()
    static_nchw.load_state_dict(static.state_dict())
    res = specialist.resolution
    static_madds = count_madds(static).madds / 1e6
    basis_madds = count_madds(specialist, coeffs=_coeffs(specialist, 1, device)).madds / 1e6
    shared_madds = count_madds(specialist, coeffs=_coeffs(specialist, 1, device)[0]).madds / 1e6
    static_fast = torch.compile(static) if plan.compile else None
    basis_fast = torch.compile(specialist) if plan.compile else None
    label_s, label_b = "static twin", "basis specialist"
    for batch in plan.batches:
        x = _images(batch, res, device)
        c = _coeffs(specialist, batch, device)
        with torch.inference_mode():
            rec.time(label_s, "eager NCHW", batch, lambda: static_nchw(x.contiguous()), static_madds)
            rec.time(label_s, "channels_last", batch, lambda: static(x), static_madds, memory=True)
            if static_fast is not None:
                rec.time(label_s, "compiled", batch, lambda: static_fast(x), static_madds)
            rec.time(label_b, "shared coeffs (synthesized)", batch, lambda: specialist(x, c[0]), shared_madds)
            if batch == 1:
                continue
            for path in ("grouped", "loop") if batch <= 8 else ("grouped",):
                with execution_policy(ForcedPath(path)):
                    rec.time(label_b, f"path {path}", batch, lambda: specialist(x, c), basis_madds)
            rec.time(label_b, "default paths", batch, lambda: specialist(x, c), basis_madds)
            with execution_policy(tune_paths(specialist, x, c, repeats=3)):
                rec.time(label_b, "tuned paths", batch, lambda: specialist(x, c), basis_madds, memory=True)
                if basis_fast is not None:
                    rec.time(label_b, "compiled (tuned)", batch, lambda: basis_fast(x, c), basis_madds)
            mixers = [m for m in specialist.modules() if isinstance(m, BASIS_LAYERS)]
            rows = [c[:, i] for i in range(len(mixers))]
            rec.time(label_b, "kernel synthesis only", batch,
                     lambda: [m._mix(r) for m, r in zip(mixers, rows)], basis_madds - static_madds)


def basisnet_batch1_floor(rec: Recorder, net: BasisNet) -> None:
    """The floor of BasisNet at batch 1 (no early exit): lightweight model + static twin (fastest eager
    mode, as timed before) + the time to read every basis kernel once at the measured copy bandwidth."""
    eager = [r for r in rec.records if r["mode"] in ("channels_last", "eager NCHW")]
    static = _fastest(eager, workload=rec.workload, model="static twin", batch=1)
    full = _fastest(rec.records, workload=rec.workload, model="BasisNet (no early exit)", batch=1)
    if static is None or full is None:
        return
    basis_bytes = sum(m.weight.numel() * m.weight.element_size() for m in net.specialist.modules()
                      if isinstance(m, BASIS_LAYERS))
    floor_ms = basis_bytes / (rec.ceiling.copy_gb_per_s * 1e9) * 1e3
    x = _images(1, net.resolution, rec.device)
    light_madds = exit_madds(net)[0] / 1e6
    with torch.inference_mode():
        light = rec.time("lightweight (preview)", "channels_last", 1, lambda: net.preview(x), light_madds)
    rec.records.append({**full, "model": "floor: lightweight + static + synthesis", "mode": "sum",
                        "ms": round(light["ms"] + static["ms"] + floor_ms, 3), "synthesis_floor_ms": round(floor_ms, 3),
                        "basis_mib": round(basis_bytes / 2**20, 2), "images_per_s": None, "gmadds_per_s": None,
                        "ceiling_fraction": None, "peak_mib": None})


def forward_batches(rec: Recorder, label: str, model: nn.Module, plan: SpeedPlan) -> None:
    """A multi-exit model's full forward (every exit), eager channels_last, at every batch."""
    madds = exit_madds(model)[-1] / 1e6
    for batch in plan.batches:
        x = _images(batch, model.resolution, rec.device)
        with torch.inference_mode():
            tuned = tune_paths(model, x, repeats=3) if isinstance(model, BasisNet) and batch > 1 else ExecutionPolicy()
            with execution_policy(tuned):
                rec.time(label, "channels_last", batch, lambda: model(x), madds)


def early_exit(rec: Recorder, label: str, model: nn.Module, plan: SpeedPlan) -> None:
    """Wall-clock saving against multiply-add saving at thresholds letting given shares leave at exit 1."""
    batch = max(plan.batches)
    x = _images(batch, model.resolution, rec.device)
    costs = exit_madds(model)
    with torch.inference_mode():
        tuned = tune_paths(model, x, repeats=3) if isinstance(model, BasisNet) else ExecutionPolicy()
    with torch.inference_mode(), execution_policy(tuned):
        first = model.step(model.start(x), 0)[0].softmax(-1).max(-1).values
        stages = TorchStages(model, exit_costs=costs)
        predictors = [EarlyExitPredictor(stages, float(torch.quantile(first.float().cpu(), 1 - share)))
                      for share in plan.exit_shares]
        # Every exit's cumulative time, the full forward and each threshold, timed in turn (paired).
        fns = [lambda k=k: model(x, max_exits=k) for k in range(1, model.num_exits + 1)]
        fns += [lambda p=p: p.predict(x) for p in predictors]
        times = paired_median_ms(fns, rec.device, repeats=rec.repeats)
        cumulative, ee_ms = times[:model.num_exits], times[model.num_exits:]
        full = rec.add(label, "all exits", batch, cumulative[-1], costs[-1] / 1e6)
        stage_ms = [b - a for a, b in zip([0.0, *cumulative], cumulative)]
        for share, predictor, ms in zip(plan.exit_shares, predictors, ee_ms):
            pred = predictor.predict(x)
            madds_saving = 1 - pred.average_madds / costs[-1]
            wall_saving = 1 - ms / full["ms"]
            reaching = [float((pred.exit > k).float().mean()) for k in range(model.num_exits)]
            stage_saving = 1 - sum(t * r for t, r in zip(stage_ms, reaching)) / full["ms"]
            rec.add(label, f"early exit ({share:.0%} at exit 1)", batch, ms, pred.average_madds / 1e6,
                    threshold=round(predictor.threshold, 4),
                    exit_fraction=[round(float((pred.exit == k).float().mean()), 4) for k in range(1, model.num_exits + 1)],
                    madds_saving=round(madds_saving, 4), wall_saving=round(wall_saving, 4),
                    saving_ratio=round(wall_saving / madds_saving, 3) if madds_saving > 0 else None,
                    stage_ms=[round(t, 3) for t in stage_ms], stage_time_saving=round(stage_saving, 4))


def training_steps(rec: Recorder, models: Sequence[tuple[str, nn.Module, float]], plan: SpeedPlan) -> None:
    """Forward + backward + SGD step at ``plan.train_batch``; MAdds counted as 3x the forward's."""
    batch = plan.train_batch
    for label, model, madds in models:
        x = _images(batch, model.resolution, rec.device)
        labels = torch.arange(batch, device=rec.device) % model.num_classes
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
        basis = any(isinstance(m, BASIS_LAYERS) for m in model.modules())
        with execution_policy(tune_paths(model, x, repeats=2) if basis else ExecutionPolicy()):
            rec.time(label, "train step", batch, train_step(model, x, labels, optimizer), 3 * madds, memory=True)
        model.eval()


# ---------------------------------------------------------------------------------------- the run


def run_workload(rec: Recorder, name: str, plan: SpeedPlan) -> None:
    wl = WORKLOADS[name]
    rec.workload = name
    device = rec.device
    net = build_calibrated(wl.basisnet, device)
    if not isinstance(net, BasisNet):
        raise ValueError(f"{wl.basisnet} is not a BasisNet config")
    static_and_basis_specialist(rec, net, plan)
    forward_batches(rec, "BasisNet (no early exit)", net, plan)
    basisnet_batch1_floor(rec, net)
    early_exit(rec, "BasisNet", net, plan)
    peers = [(config, build_calibrated(config, device)) for config in wl.peers]
    for config, model in peers:
        forward_batches(rec, config, model, plan)
        if model.num_exits > 1:
            early_exit(rec, config, model, plan)
    static = to_channels_last(MobileNet(**{**net.specialist.config, "num_bases": 0}).to(device))
    train_models = [("static twin", static, count_madds(static).madds / 1e6),
                    ("BasisNet", net, exit_madds(net)[-1] / 1e6),
                    ("lightweight (part of BasisNet)", net.lightweight, count_madds(net.lightweight).madds / 1e6)]
    train_models += [(config, m, exit_madds(m)[-1] / 1e6) for config, m in peers if config.endswith("condconv")]
    training_steps(rec, train_models, plan)


def run_speed_benchmark(results: str | Path, plan: SpeedPlan, devices: Sequence[str] | None = None,
                        threads: int | None = None, command: str = "") -> list[dict[str, Any]]:
    """Measure every workload of ``plan`` on each device (default: CPU, plus CUDA when present); write
    the records to ``results`` and ceilings + targets to ``<results>_meta.json``."""
    if threads:
        torch.set_num_threads(threads)
    devices = list(devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]))
    if "cuda" in devices and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but torch sees no CUDA device")
    start = time.time()
    records: list[dict[str, Any]] = []
    ceilings = {}
    for name in devices:
        device = torch.device(name)
        ceiling = measure_ceiling(device, quick=plan.repeats < 10)
        ceilings[name] = ceiling.as_dict()
        print(f"[speed] {name} ceiling: {ceiling.as_dict()}", flush=True)
        rec = Recorder(device, ceiling, plan.repeats)
        for workload in plan.workloads:
            run_workload(rec, workload, plan)
        records += rec.records
    for r in records:
        r["command"] = command
    results = Path(results)
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(records, indent=1) + "\n")
    meta = {"seconds": round(time.time() - start), "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
            "torch": torch.__version__, "plan": plan.__dict__, "ceilings": ceilings, "command": command,
            "targets": speed_targets(records)}
    if torch.cuda.is_available():
        meta["gpu"] = torch.cuda.get_device_name()
    meta_path(results).write_text(json.dumps(meta, indent=2) + "\n")
    for device in devices:
        plot_relative_throughput(records, device, results.with_name(f"{results.stem}_{device}.png"))
    return records


# ------------------------------------------------------------------------------------------ reports


def _pick(records: list[dict], **match: Any) -> list[dict]:
    return [r for r in records if all(r.get(k) == v for k, v in match.items())]


def _fastest(records: list[dict], **match: Any) -> dict | None:
    found = _pick(records, **match)
    return min(found, key=lambda r: r["ms"]) if found else None


def speed_targets(records: list[dict]) -> list[dict[str, Any]]:
    """The speed issue's targets, each with its measured ratio and whether it is met."""
    out = []

    def target(name: str, ratio: float, limit: float, higher_is_better: bool, **where: Any) -> None:
        met = ratio >= limit if higher_is_better else ratio <= limit
        out.append({"target": name, "ratio": round(ratio, 3), "limit": limit, "met": bool(met), **where})

    for device in sorted({r["device"] for r in records}):
        for wl in sorted({r["workload"] for r in records if r["device"] == device}):
            at = dict(device=device, workload=wl)
            rs = _pick(records, **at)
            batch = max((r["batch"] for r in rs), default=0)
            static = _fastest(rs, model="static twin", batch=batch)
            basis = _fastest([r for r in rs if r["mode"] != "kernel synthesis only" and "shared" not in r["mode"]],
                             model="basis specialist", batch=batch)
            if static and basis:
                compiled = _pick(rs, model="static twin", batch=batch, mode="compiled")
                reference = "static twin" if compiled else "static twin's eager modes (compiled not measured)"
                target(f"basis specialist throughput vs {reference}, batch {batch}",
                       basis["images_per_s"] / static["images_per_s"], 0.9, True,
                       basis_mode=basis["mode"], static_mode=static["mode"], **at)
            floor = _pick(rs, model="floor: lightweight + static + synthesis")
            full = _pick(rs, model="BasisNet (no early exit)", batch=1)
            if floor and full:
                target("BasisNet batch 1 vs lightweight + static specialist + synthesis floor",
                       min(r["ms"] for r in full) / floor[0]["ms"], 1.10, False, **at)
            train_static = _fastest(rs, model="static twin", mode="train step")
            train_basis = _fastest(rs, model="BasisNet", mode="train step")
            if train_static and train_basis:
                target("BasisNet training step vs static specialist", train_basis["ms"] / train_static["ms"],
                       1.3 if device == "cpu" else 1.5, False, **at)
            for r in rs:
                if r.get("saving_ratio") is not None:
                    target(f"{r['model']} early-exit wall-clock saving / MAdds saving ({r['mode']})",
                           r["saving_ratio"], 0.9, True, **at)
    return out


def plot_relative_throughput(records: list[dict], device: str, path: Path) -> Path | None:
    """Images/s of every measurement at each workload's largest batch, relative to the static twin's
    fastest inference there (training steps relative to the static twin's training step)."""
    values: dict[str, float] = {}
    for wl in dict.fromkeys(r["workload"] for r in records if r["device"] == device):
        rs = [r for r in _pick(records, device=device, workload=wl) if r["images_per_s"]]
        batch = max(r["batch"] for r in rs)
        infer = _fastest([r for r in rs if r["mode"] != "train step"], model="static twin", batch=batch)
        train = _fastest(rs, model="static twin", mode="train step")
        for r in rs:
            ref = train if r["mode"] == "train step" else infer
            if r["batch"] == batch and ref and r["mode"] != "kernel synthesis only":
                values[f"{wl} {r['model']}, {r['mode']}"] = r["images_per_s"] / ref["images_per_s"]
    if not values:
        return None
    return plot_bars(values, path, f"Throughput relative to the static twin ({device}, largest batch)",
                     "images/s relative to the static twin's fastest mode", reference=1.0)


def format_speed_table(records: list[dict]) -> str:
    """One line per measurement, grouped as measured."""
    head = (f"{'device':<7}{'workload':<12}{'model':<40}{'mode':<28}{'batch':>5}{'ms':>10}{'img/s':>10}"
            f"{'MAdds(M)':>10}{'GMAdds/s':>10}{'ceiling':>8}{'peak MiB':>9}  notes")
    lines = [head, "-" * len(head)]
    for r in records:
        notes = []
        if r.get("saving_ratio") is not None:
            notes.append(f"saves {r['wall_saving']:.0%} time / {r['madds_saving']:.0%} MAdds "
                         f"(stage times predict {r['stage_time_saving']:.0%})")
        if r.get("synthesis_floor_ms") is not None:
            notes.append(f"synthesis floor {r['synthesis_floor_ms']:.3f} ms ({r['basis_mib']} MiB of bases)")
        ips = "" if r["images_per_s"] is None else f"{r['images_per_s']:.0f}"
        gm = "" if r["gmadds_per_s"] is None else f"{r['gmadds_per_s']:.2f}"
        frac = "" if r["ceiling_fraction"] is None else f"{r['ceiling_fraction']:.1%}"
        peak = "" if r["peak_mib"] is None else f"{r['peak_mib']:.1f}"
        lines.append(f"{r['device']:<7}{r['workload']:<12}{r['model']:<40}{r['mode']:<28}{r['batch']:>5}"
                     f"{r['ms']:>10.2f}{ips:>10}{r['madds']:>10.2f}{gm:>10}{frac:>8}{peak:>9}  {'; '.join(notes)}")
    return "\n".join(lines)


def format_speed_targets(targets: list[dict]) -> str:
    lines = []
    for t in targets:
        sign = ">=" if "throughput" in t["target"] or "saving" in t["target"] else "<="
        verdict = "MET" if t["met"] else "MISSED"
        lines.append(f"{verdict:<7}{t['device']:<5}{t['workload']:<12}{t['target']}: {t['ratio']:.3f} "
                     f"(target {sign} {t['limit']})")
    return "\n".join(lines)
