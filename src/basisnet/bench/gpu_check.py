"""``basisnet bench gpu`` (``make gpu-check``; on a machine with torch but no install step,
``PYTHONPATH=src python -m basisnet bench gpu``): everything that only a CUDA device can prove, in one command.

Runs the GPU-only tests (``tests/test_gpu.py``: bf16 / fp16 / fp32 training through ``basisnet train``,
the fused fp16 optimizer, the fp16 scale floor, pinned streaming batches), ``bench train`` (``basisnet
train`` against a bare bf16 loop, static and BasisNet) and ``bench speed`` on the GPU, and writes one
results file: device, torch and CUDA versions, tests passed, the two throughput ratios and the speed
table. Without a visible GPU it says so and fails, so a CPU machine never mistakes it for a pass.
Sized to finish within 8 minutes on one data-centre GPU; the embedded SHAPES set needs no download.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from .records import machine, save_records
from .speed import SpeedPlan, format_speed_table, run_speed_benchmark
from .train_speed import TrainSpeedPlan, format_train_speed_table, run_train_speed_benchmark

__all__ = ["NoGpuError", "GPU_SPEED_PLAN", "GPU_TRAIN_PLAN", "run_gpu_check"]

TESTS = Path(__file__).resolve().parents[3] / "tests" / "test_gpu.py"
# 256 x 36 training images and 500 for validation fit in SHAPES' 10,000; no torch.compile (minutes per model).
GPU_TRAIN_PLAN = TrainSpeedPlan(steps=36, batch=256)
GPU_SPEED_PLAN = SpeedPlan(workloads=("cifar32", "imagenet224"), batches=(1, 64), repeats=10, exit_shares=(0.5,),
                           compile=False)


class NoGpuError(RuntimeError):
    """No CUDA device is visible: nothing was checked."""


def _run_tests(junit: Path) -> dict[str, Any]:
    """``pytest tests/test_gpu.py`` in a child process; its counts from the closing line."""
    if not TESTS.is_file():
        raise FileNotFoundError(f"{TESTS} is missing: run the GPU check from a clone of the repository")
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(TESTS),
                          f"--junitxml={junit}"], capture_output=True, text=True, cwd=TESTS.parents[1])
    print(out.stdout[-3000:], out.stderr[-2000:], sep="\n", flush=True)
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?)", out.stdout)}
    return {"returncode": out.returncode, **{k: counts.get(k, 0) for k in ("passed", "failed", "skipped")},
            "errors": counts.get("error", 0) + counts.get("errors", 0)}


def run_gpu_check(results: str | Path, data: str = "shapes", scratch: str | Path = "runs/gpu_check",
                  command: str = "") -> dict[str, Any]:
    """Run the check and write ``results`` (JSON) and ``<results>.md`` (the tables); raise ``NoGpuError``
    without a GPU. The returned summary's ``ok`` is False when a test failed or errored."""
    if not torch.cuda.is_available():
        raise NoGpuError(f"no CUDA device is visible to torch {torch.__version__} "
                         f"(CUDA build: {torch.version.cuda or 'none'}): the GPU check checked nothing")
    start = time.time()
    results = Path(results)
    summary: dict[str, Any] = {
        "device": torch.cuda.get_device_name(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "machine": machine("cuda"), "command": command,
    }
    print(f"[gpu-check] {summary['device']}, torch {summary['torch']}, CUDA {summary['cuda']}", flush=True)
    summary["tests"] = _run_tests(results.with_name(results.stem + "_junit.xml"))
    train = run_train_speed_benchmark(data, results.with_name(results.stem + "_train.json"), GPU_TRAIN_PLAN,
                                      scratch=scratch, command=command)
    speed = run_speed_benchmark(results.with_name(results.stem + "_speed.json"), GPU_SPEED_PLAN, devices=["cuda"],
                                command=command)
    summary["train"] = train
    summary["speed"] = speed
    summary["seconds"] = round(time.time() - start)
    t = summary["tests"]
    summary["ok"] = t["returncode"] == 0 and t["failed"] == 0 and t["errors"] == 0 and t["passed"] > 0
    save_records(results, [summary], {"command": command})
    results.with_suffix(".md").write_text(format_gpu_check(summary) + "\n")
    return summary


def format_gpu_check(summary: dict[str, Any]) -> str:
    t = summary["tests"]
    lines = [f"GPU check on {summary['device']} (torch {summary['torch']}, CUDA {summary['cuda']}), "
             f"{summary['seconds']} s: tests/test_gpu.py {t['passed']} passed, {t['failed']} failed, "
             f"{t['errors']} errors, {t['skipped']} skipped -> {'OK' if summary['ok'] else 'FAILED'}",
             "", format_train_speed_table(summary["train"]), "", format_speed_table(summary["speed"])]
    return "\n".join(lines)
