"""ONNX export, one graph per stage of a multi-exit model, in the form the serving batch runs fastest.

Any registered model exports through its staged interface (``start`` / ``step``): stage k becomes a
graph whose inputs are the tensors of the state it continues from and whose outputs are exit k's
logits and the tensors of the state it hands on. For BasisNet that is the lightweight model with its
coefficient head (image -> logits, coefficients) and the specialist (image, coefficients -> logits);
for MSDNet and RANet one graph per exit segment. ``deploy.onnx_runtime.OnnxStages`` runs them (the
``stages.json`` manifest written here says how), as ``Stages`` for the one early-exit predictor.

The batch the graphs serve (``batch``, written in the manifest) decides how basis layers export
(BENCHMARKS.md measures the forms in ONNX Runtime):

- ``1`` (streams, edge devices): the specialist is synthesized once per image in the graph, every
  layer's kernel by one fused matmul over the packed bases (``basisnet.layers.synthesis``), then each
  layer is one plain Conv / Gemm with a computed weight: the static twin's work plus reading the bases.
- ``N`` (bulk): per-image kernels for a fixed batch of N: dense 1x1 convs as one batched MatMul, other
  convs as one grouped Conv over the batch folded into channels (the group count is fixed by N).
- ``"dynamic"``: any batch; 1x1 convs as a batched MatMul, other basis convs apply every basis kernel
  and mix the outputs (N times their multiply-adds: a grouped conv would freeze the batch).

BasisNet's BatchNorms after basis convs are folded into the bases first (``deploy.fold``), as ONNX
Runtime does itself for constant-weight convs. A fixed-batch graph is fed in slices of its batch (the
last one padded), so ``OnnxStages`` takes any number of images with every form.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..layers import BasisConv2d, BasisLinear, ExecutionPolicy, execution_policy
from ..models import BasisNet
from ..models.protocol import MultiExitClassifier, flatten_state, unflatten_state
from .fold import fold_basis_batchnorm

__all__ = ["MANIFEST", "StageGraph", "check_export_batch", "export_stages"]

MANIFEST = "stages.json"


class _Stage(nn.Module):
    """Stage ``k`` as a module of tensors only: state tensors in, logits and next-state tensors out."""

    def __init__(self, model: MultiExitClassifier, k: int, skeleton: Any) -> None:
        super().__init__()
        self.model, self.k, self.skeleton = model, k, skeleton
        self.last = k == model.num_exits - 1

    def forward(self, *tensors: Tensor) -> tuple[Tensor, ...]:
        state = self.model.start(tensors[0]) if self.k == 0 else unflatten_state(self.skeleton, tensors)
        logits, next_state = self.model.step(state, self.k)
        return (logits,) if self.last else (logits, *flatten_state(next_state)[0])


def check_export_batch(batch: int | str) -> int | None:
    """The batch a graph serves: an int >= 1, or None for ``"dynamic"`` (clear error otherwise)."""
    if batch == "dynamic":
        return None
    try:
        value = int(batch)
    except (TypeError, ValueError):
        value = 0
    if value < 1 or (isinstance(batch, float) and batch != value):
        raise ValueError(f"export batch must be a positive integer or 'dynamic', got {batch!r}")
    return value


def export_path(layer: BasisConv2d | BasisLinear, batch: int | None) -> str:
    """A basis layer's exported per-sample form in a graph serving ``batch`` (None: any batch). At batch 1
    no layer is asked: the network's one coefficient set per graph run is fused before any layer mixes."""
    if batch is None:
        return layer.dynamic_batch_path()
    if layer.is_pointwise:
        return "matmul"
    return "grouped_aten" if layer.is_depthwise else "grouped"  # a plain grouped Conv in the graph


@dataclass(frozen=True)
class ExportPaths(ExecutionPolicy):
    """The execution policy a graph for ``batch`` is traced under: every basis layer on its exported form."""

    batch: int | None

    def path(self, layer: BasisConv2d | BasisLinear, x: Tensor) -> str:
        return export_path(layer, self.batch)


@dataclass
class StageGraph:
    """One exported stage: its file and the names of its inputs and outputs."""

    path: str
    inputs: list[str]
    outputs: list[str]


@contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter without the notices that concern neither these graphs nor their user: torchvision's
    detection ops it could not register, a deprecation inside torch's own pytree code, and the note that
    every input's batch axis is one axis (which is what a stage's inputs share by design)."""
    import warnings

    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
            warnings.filterwarnings("ignore", message=r".*The axis name: batch will not be used", category=UserWarning)
            yield
    finally:
        registration.setLevel(level)


def export_stages(model: MultiExitClassifier, out_dir: str | Path, batch: int | str = "dynamic",
                  opset: int | None = None) -> list[StageGraph]:
    """Write ``stage{k}.onnx`` for every exit k = 1..num_exits and a ``stages.json`` manifest; returns the stages.

    ``batch``: the batch the graphs serve (1, N or ``"dynamic"``; see the module docstring). Traced on
    random images at ``model.resolution``; with ``"dynamic"``, dim 0 of every input and output is a
    dynamic batch axis."""
    fixed = check_export_batch(batch)
    for name in ("onnx_ir", "onnxscript"):  # a line per deduplicated constant otherwise
        logging.getLogger(name).setLevel(logging.WARNING)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = fold_basis_batchnorm(model) if isinstance(model, BasisNet) else model.eval()
    param = next(model.parameters())
    x = torch.randn(fixed or 2, 3, model.resolution, model.resolution, device=param.device, dtype=param.dtype)
    stages: list[StageGraph] = []
    with torch.no_grad(), execution_policy(ExportPaths(fixed)):
        inputs: list[Tensor] = [x]
        skeleton: Any = None
        for k in range(model.num_exits):
            logits, next_state = model.step(model.start(x) if k == 0 else unflatten_state(skeleton, inputs), k)
            next_tensors, next_skeleton = flatten_state(next_state)
            # state{j}_{i}: tensor i of the state stage j hands on (stages counted from 1, as exits), in order
            in_names = ["images"] if k == 0 else [f"state{k}_{i}" for i in range(len(inputs))]
            last = k == model.num_exits - 1
            out_names = ["logits", *([] if last else [f"state{k + 1}_{i}" for i in range(len(next_tensors))])]
            path = out_dir / f"stage{k + 1}.onnx"
            dims = None
            if fixed is None:
                batch_dim = torch.export.Dim("batch", min=1)
                dims = (tuple({0: batch_dim} for _ in inputs),)
            with _quiet_exporter():
                torch.onnx.export(
                    _Stage(model, k, skeleton).eval(), tuple(inputs), str(path), input_names=in_names,
                    output_names=out_names, dynamic_shapes=dims, opset_version=opset, dynamo=True,
                    external_data=False, verbose=False,
                )
            stages.append(StageGraph(str(path.name), in_names, out_names))
            inputs, skeleton = next_tensors, next_skeleton
    manifest = {"num_exits": model.num_exits, "resolution": model.resolution, "num_classes": model.num_classes,
                "batch": "dynamic" if fixed is None else fixed, "stages": [s.__dict__ for s in stages]}
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return stages
