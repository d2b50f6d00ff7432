"""``basisnet bench deploy``: a trained BasisNet run as it ships. ONNX Runtime against PyTorch eager per
stage, and stream specialization on CIFAR-10 "cameras" that each see a subset of the classes.

A camera's test images are split in two by file order: the first half is what it saw before (its
coefficients are averaged there), the second half is what it is scored on. Each camera compares the
generic BasisNet (its specialist exit, per-image coefficients), the specialized static network (one
coefficient set, no lightweight model) and, given a trained static run, the static backbone.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..data import load_image_files
from ..deploy import TorchStages, mean_coefficients
from ..deploy.latency import stage_ms
from ..evaluate import count_madds, exit_madds
from ..layers import to_channels_last
from ..inputs import eval_transform
from ..train import RunDir
from ..workflow import image_files, load_run

__all__ = ["CAMERAS", "format_deploy_tables", "run_deploy_benchmark"]

CAMERAS: dict[str, tuple[str, ...]] = {
    "vehicles": ("airplane", "automobile", "ship", "truck"),
    "animals": ("bird", "cat", "deer", "dog", "frog", "horse"),
    "road": ("automobile", "truck"),
}


def onnx_latency(model: torch.nn.Module, out_dir: Path, batches: Sequence[int] = (1, 8),
                 repeats: int = 20, export: bool = True) -> list[dict[str, Any]]:
    """Milliseconds per stage, PyTorch eager (channels_last) against ONNX Runtime (CPU, same threads).
    ``export=False``: time the stages ``model`` already exported to ``out_dir`` (``basisnet export``)."""
    from ..deploy.onnx_export import export_stages
    from ..deploy.onnx_runtime import OnnxStages

    if export:
        export_stages(model, out_dir)
    onnx = OnnxStages(out_dir, threads=torch.get_num_threads())
    eager = TorchStages(to_channels_last(model))
    rows = []
    for batch in batches:
        for k, (torch_ms, ort_ms) in enumerate(zip(stage_ms(eager, batch, repeats), stage_ms(onnx, batch, repeats))):
            rows.append({"stage": k + 1, "batch": batch, "pytorch_ms": round(torch_ms, 3),
                         "onnxruntime_ms": round(ort_ms, 3)})
    return rows


def _accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    return round(100.0 * float((logits.argmax(-1) == targets).float().mean()), 2)


def camera_specialization(run_dir: Path, data: Path, static_run: Path | None = None,
                          cameras: Mapping[str, Sequence[str]] = CAMERAS) -> list[dict[str, Any]]:
    """Per camera: top-1 on its own held-out stream for the generic BasisNet, its specialized static
    network and (if given) the static backbone, with their MAdds per image."""
    model, cfg = load_run(run_dir)
    classes = json.loads(RunDir(run_dir).classes.read_text())
    normalize = eval_transform(cfg)
    static = load_run(static_run)[0] if static_run else None
    rows = []
    for camera, names in cameras.items():
        seen, scored, targets = [], [], []
        for name in names:
            files = image_files(data / "test" / name)
            half = len(files) // 2
            seen += files[:half]
            scored += files[half:]
            targets += [classes.index(name)] * (len(files) - half)
        past = normalize(load_image_files(seen, cfg.data.image_size))
        now = normalize(load_image_files(scored, cfg.data.image_size))
        y = torch.tensor(targets)
        coeffs, _ = mean_coefficients(model, past.split(256))
        special = model.specialist.synthesize(coeffs).eval()
        with torch.inference_mode():
            generic = torch.cat([model(b)[-1] for b in now.split(256)])
            specialized = torch.cat([special(b)[0] for b in now.split(256)])
            static_logits = None if static is None else torch.cat([static(b)[0] for b in now.split(256)])
        row = {"camera": camera, "classes": list(names), "seen": len(seen), "scored": len(scored),
               "basisnet_top1": _accuracy(generic, y), "basisnet_madds": round(exit_madds(model)[-1] / 1e6, 2),
               "specialized_top1": _accuracy(specialized, y),
               "specialized_madds": round(count_madds(special).madds / 1e6, 2)}
        if static is not None:
            row["static_top1"] = _accuracy(static_logits, y)
            row["static_madds"] = round(count_madds(static).madds / 1e6, 2)
        rows.append(row)
    return rows


def run_deploy_benchmark(run_dir: str | Path, data: str | Path, results: str | Path, static_run: str | Path | None = None,
                         command: str = "") -> dict[str, Any]:
    start = time.time()
    run_dir = Path(run_dir)
    model, _ = load_run(run_dir)
    out = {"run": str(run_dir), "command": command, "threads": torch.get_num_threads(),
           "onnx": onnx_latency(model, run_dir / "onnx"),  # the graphs stay with the run
           "cameras": camera_specialization(run_dir, Path(data), Path(static_run) if static_run else None)}
    out["seconds"] = round(time.time() - start)
    Path(results).parent.mkdir(parents=True, exist_ok=True)
    Path(results).write_text(json.dumps(out, indent=2) + "\n")
    return out


def format_deploy_tables(out: Mapping[str, Any]) -> str:
    lines = ["stage  batch  PyTorch eager (ms)  ONNX Runtime (ms)"]
    lines += [f"{r['stage']:>5}  {r['batch']:>5}  {r['pytorch_ms']:>18.3f}  {r['onnxruntime_ms']:>17.3f}" for r in out["onnx"]]
    lines.append("")
    lines.append("camera     images (seen/scored)  BasisNet top-1 @ MAdds  specialized static  static backbone")
    for r in out["cameras"]:
        static = f"{r['static_top1']:.2f}% @ {r['static_madds']:.2f}M" if "static_top1" in r else "(no run given)"
        lines.append(f"{r['camera']:<10} {r['seen']:>6}/{r['scored']:<6}          {r['basisnet_top1']:6.2f}% @ "
                     f"{r['basisnet_madds']:.2f}M    {r['specialized_top1']:6.2f}% @ {r['specialized_madds']:.2f}M   {static}")
    return "\n".join(lines)
