"""``basisnet bench deploy``: BasisNet's exported forms in ONNX Runtime against the static twin and the floor.

For each bundled BasisNet config (at random initialisation: speed does not depend on the weights) and each
choice of basis convs (the depthwise convs as basis layers or static), every export form (``--batch 1``,
``8``, ``dynamic``) is timed per stage in ONNX Runtime (CPU provider, 1 and 2 intra-op threads) beside the
static twin (the specialist's architecture with constant weights, exported at the same fixed batch). The
floor of a synthesized specialist is the static twin plus reading every basis once at the machine's copy
rate, measured in the same run with the same threads. PyTorch eager at batch 1 gets the same comparison.
"""

from __future__ import annotations

import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..deploy.latency import median_ms, stage_ms
from ..deploy.onnx_export import export_stages
from ..deploy.onnx_runtime import OnnxStages
from ..layers import BASIS_LAYERS, to_channels_last
from ..models import BasisNet, MobileNet
from .records import save_records
from .speed import build_calibrated
from .timing import measure_ceiling
from ..workflow import denormals_flushed

__all__ = ["DeployPlan", "VARIANTS", "deploy_targets", "format_forms_table", "run_forms_benchmark"]

WORKLOADS = {"cifar32": "cifar10_basisnet", "imagenet224": "imagenet_basisnet"}
VARIANTS = {"basis depthwise": ("expand", "depthwise", "project"), "static depthwise": ("expand", "project")}
CPU = torch.device("cpu")


@dataclass(frozen=True)
class DeployPlan:
    """What to measure; ``quick`` (32 px, 1 thread, few repeats) checks the code path in a minute."""

    workloads: tuple[str, ...] = ("cifar32", "imagenet224")
    variants: tuple[str, ...] = tuple(VARIANTS)
    forms: tuple[int | str, ...] = (1, 8, "dynamic")
    threads: tuple[int, ...] = (1, 2)
    repeats: int = 50

    @classmethod
    def quick_plan(cls) -> DeployPlan:
        return cls(workloads=("cifar32",), variants=("static depthwise",), forms=(1, "dynamic"), threads=(1,),
                   repeats=5)


def _form_batches(form: int | str) -> tuple[int, ...]:
    return (1, 8) if form == "dynamic" else (int(form),)


def _measure_variant(net: BasisNet, workload: str, variant: str, plan: DeployPlan, work: Path,
                     copy_gb_per_s: dict[int, float]) -> list[dict[str, Any]]:
    specialist = net.specialist
    coeffs = torch.full((specialist.num_basis_layers, specialist.config["num_bases"]), 1 / specialist.config["num_bases"])
    static = specialist.synthesize(coeffs).eval()
    basis_bytes = sum(m.weight.numel() * m.weight.element_size() for m in specialist.modules()
                      if isinstance(m, BASIS_LAYERS))
    base = {"workload": workload, "variant": variant, "resolution": net.resolution,
            "basis_mib": round(basis_bytes / 2**20, 2)}
    records = []
    static_dirs = {}
    for batch in sorted({b for form in plan.forms for b in _form_batches(form)}):
        static_dirs[batch] = work / f"{workload}_{variant}_static_b{batch}".replace(" ", "_")
        export_stages(static, static_dirs[batch], batch=batch)
    for form in plan.forms:
        out = work / f"{workload}_{variant}_b{form}".replace(" ", "_")
        started = time.time()
        export_stages(net, out, batch=form)
        export_s = round(time.time() - started, 1)
        for threads in plan.threads:
            stages = OnnxStages(out, threads=threads)
            floor_ms = basis_bytes / (copy_gb_per_s[threads] * 1e9) * 1e3
            for batch in _form_batches(form):
                light_ms, spec_ms = stage_ms(stages, batch, plan.repeats)
                static_ms = stage_ms(OnnxStages(static_dirs[batch], threads=threads), batch, plan.repeats)[0]
                records.append({**base, "runtime": "onnxruntime", "form": str(form), "batch": batch,
                                "threads": threads, "lightweight_ms": round(light_ms, 3),
                                "specialist_ms": round(spec_ms, 3), "static_ms": round(static_ms, 3),
                                "synthesis_floor_ms": round(floor_ms, 3), "export_s": export_s})
    for threads in plan.threads:
        torch.set_num_threads(threads)
        records.append({**base, **_eager_batch1(net, static, threads, repeats=plan.repeats),
                        "synthesis_floor_ms": round(basis_bytes / (copy_gb_per_s[threads] * 1e9) * 1e3, 3)})
    return records


def _eager_batch1(net: BasisNet, static: MobileNet, threads: int, repeats: int) -> dict[str, Any]:
    """PyTorch eager (channels_last) at batch 1: the lightweight stage, the whole BasisNet, the static twin."""
    net, static = to_channels_last(net), to_channels_last(static)
    x = torch.randn(1, 3, net.resolution, net.resolution).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), denormals_flushed():  # as evaluate and predict run
        light = median_ms(lambda: net.preview(x), CPU, repeats=repeats)
        whole = median_ms(lambda: net(x), CPU, repeats=repeats)
        static_ms = median_ms(lambda: static(x), CPU, repeats=repeats)
    return {"runtime": "pytorch eager", "form": "-", "batch": 1, "threads": threads, "lightweight_ms": round(light, 3),
            "whole_ms": round(whole, 3), "static_ms": round(static_ms, 3)}


def ratios(r: dict[str, Any]) -> dict[str, float]:
    """A record's ratios: the specialist stage over static twin (+ synthesis floor), the whole BasisNet over
    lightweight + static twin + synthesis floor."""
    floor = r["synthesis_floor_ms"] if r["batch"] == 1 else 0.0  # the per-image floor is stated at batch 1
    whole = r.get("whole_ms", r.get("lightweight_ms", 0) + r.get("specialist_ms", 0))
    out = {"whole / floor": whole / (r["lightweight_ms"] + r["static_ms"] + floor)}
    if "specialist_ms" in r:
        out["specialist / (static + synthesis)"] = r["specialist_ms"] / (r["static_ms"] + floor)
        out["specialist / static"] = r["specialist_ms"] / r["static_ms"]
    return out


def deploy_targets(records: list[dict[str, Any]], variant: str) -> list[dict[str, Any]]:
    """The issue's targets for one variant (1 thread): ratio, limit, met."""
    out = []

    def target(name: str, ratio: float, limit: float) -> None:
        out.append({"target": name, "ratio": round(ratio, 3), "limit": limit, "met": ratio <= limit})

    for r in records:
        if r["variant"] != variant or r["threads"] != 1:
            continue
        q = ratios(r)
        where = f"{r['workload']}, {r['runtime']}, form {r['form']}, batch {r['batch']}"
        if r["runtime"] == "onnxruntime" and r["form"] == "1":
            target(f"whole BasisNet <= 1.25x lightweight + static + synthesis ({where})", q["whole / floor"], 1.25)
            target(f"specialist <= 1.25x static + synthesis ({where})", q["specialist / (static + synthesis)"], 1.25)
        if r["runtime"] == "onnxruntime" and r["form"] == "8" and r["workload"] == "imagenet224":
            target(f"specialist <= 1.5x static twin ({where})", q["specialist / static"], 1.5)
        if r["runtime"] == "pytorch eager":
            target(f"whole BasisNet <= 1.10x lightweight + static + synthesis ({where})", q["whole / floor"], 1.10)
    return out


def run_forms_benchmark(results: str | Path, plan: DeployPlan, command: str = "") -> list[dict[str, Any]]:
    import onnxruntime  # the onnx extra, as the export

    start = time.time()
    threads_before = torch.get_num_threads()
    copy_rate = {}
    for threads in plan.threads:
        torch.set_num_threads(threads)
        copy_rate[threads] = measure_ceiling(CPU, quick=True).copy_gb_per_s
    records: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory() as work:
            for workload in plan.workloads:
                for variant in plan.variants:
                    torch.set_num_threads(threads_before)
                    net = build_calibrated(WORKLOADS[workload], CPU, basis_parts=VARIANTS[variant])
                    records += _measure_variant(net, workload, variant, plan, Path(work), copy_rate)
                    print(format_forms_table([r for r in records if r["variant"] == variant
                                              and r["workload"] == workload]), flush=True)
    finally:
        torch.set_num_threads(threads_before)
    meta = {"seconds": round(time.time() - start), "command": command, "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
            "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}", "plan": plan.__dict__,
            "copy_gb_per_s": copy_rate, "targets": {v: deploy_targets(records, v) for v in plan.variants}}
    save_records(results, records, meta)
    return records


def format_forms_table(records: list[dict[str, Any]]) -> str:
    lines = [f"{'workload':<12}{'variant':<17}{'runtime':<14}{'form':>8}{'batch':>6}{'thr':>4}{'light ms':>10}"
             f"{'spec ms':>10}{'static ms':>10}{'synth ms':>9}{'spec/(st+syn)':>14}{'whole/floor':>12}"]
    for r in records:
        q = ratios(r)
        spec = r.get("specialist_ms", r.get("whole_ms", 0) - r["lightweight_ms"])
        lines.append(f"{r['workload']:<12}{r['variant']:<17}{r['runtime']:<14}{r['form']:>8}{r['batch']:>6}"
                     f"{r['threads']:>4}{r['lightweight_ms']:>10.3f}{spec:>10.3f}{r['static_ms']:>10.3f}"
                     f"{r['synthesis_floor_ms']:>9.3f}{q.get('specialist / (static + synthesis)', float('nan')):>14.2f}"
                     f"{q['whole / floor']:>12.2f}")
    return "\n".join(lines)
