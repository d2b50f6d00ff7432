"""ONNX export, one graph per stage of a multi-exit model, each with a dynamic batch axis.

Any registered model exports through its staged interface (``start`` / ``step``): stage k becomes a
graph whose inputs are the tensors of the state it continues from and whose outputs are exit k's
logits and the tensors of the state it hands on. For BasisNet that is the lightweight model with its
coefficient head (image -> logits, coefficients) and the specialist (image, coefficients -> logits);
for MSDNet and RANet one graph per exit segment. ``OnnxStages`` runs the graphs with ONNX Runtime and
early exit on the host, as ``EarlyExitPredictor`` does in PyTorch.

Basis layers export with their dynamic-batch formulation (``BasisConv2d.dynamic_batch_path``): a
batched matmul for dense 1x1 convs, every kernel applied and the outputs mixed for the rest. The
grouped-conv trick would freeze the batch size into the graph's group count.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..layers import BASIS_LAYERS
from ..models.protocol import MultiExitClassifier, State

__all__ = ["OnnxStages", "StageGraph", "export_stages"]

MANIFEST = "stages.json"


def _flatten(state: State) -> tuple[list[Tensor], Any]:
    """The tensors of a state in a fixed order, and a skeleton with their places (other values kept)."""
    tensors: list[Tensor] = []

    def walk(node: Any) -> Any:
        if isinstance(node, Tensor):
            tensors.append(node)
            return ("__tensor__", len(tensors) - 1)
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, (list, tuple)):
            return [walk(v) for v in node] if isinstance(node, list) else ("__tuple__", [walk(v) for v in node])
        return node

    return tensors, walk(state)


def _unflatten(skeleton: Any, tensors: Sequence[Tensor]) -> State:
    if isinstance(skeleton, tuple) and len(skeleton) == 2 and skeleton[0] == "__tensor__":
        return tensors[skeleton[1]]
    if isinstance(skeleton, tuple) and len(skeleton) == 2 and skeleton[0] == "__tuple__":
        return tuple(_unflatten(v, tensors) for v in skeleton[1])
    if isinstance(skeleton, dict):
        return {k: _unflatten(v, tensors) for k, v in skeleton.items()}
    if isinstance(skeleton, list):
        return [_unflatten(v, tensors) for v in skeleton]
    return skeleton


class _Stage(nn.Module):
    """Stage ``k`` as a module of tensors only: state tensors in, logits and next-state tensors out."""

    def __init__(self, model: MultiExitClassifier, k: int, skeleton: Any) -> None:
        super().__init__()
        self.model, self.k, self.skeleton = model, k, skeleton
        self.last = k == model.num_exits - 1

    def forward(self, *tensors: Tensor) -> tuple[Tensor, ...]:
        state = self.model.start(tensors[0]) if self.k == 0 else _unflatten(self.skeleton, tensors)
        logits, next_state = self.model.step(state, self.k)
        return (logits,) if self.last else (logits, *_flatten(next_state)[0])


@contextmanager
def dynamic_batch_paths(model: nn.Module) -> Iterator[None]:
    """Every basis layer on its dynamic-batch formulation while the block runs."""
    layers = [m for m in model.modules() if isinstance(m, BASIS_LAYERS)]
    for layer in layers:
        layer.export_path = layer.dynamic_batch_path()
    try:
        yield
    finally:
        for layer in layers:
            layer.export_path = None


@dataclass
class StageGraph:
    """One exported stage: its file and the names of its inputs and outputs."""

    path: str
    inputs: list[str]
    outputs: list[str]


def export_stages(model: MultiExitClassifier, out_dir: str | Path, batch: int = 2,
                  opset: int | None = None) -> list[StageGraph]:
    """Write ``stage{k}.onnx`` for every exit and a ``stages.json`` manifest; returns the stages.

    Traced on a random batch of ``batch`` images at ``model.resolution``; dim 0 of every input and
    output is the dynamic batch axis."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    param = next(model.parameters())
    x = torch.randn(batch, 3, model.resolution, model.resolution, device=param.device, dtype=param.dtype)
    stages: list[StageGraph] = []
    with torch.no_grad(), dynamic_batch_paths(model):
        inputs: list[Tensor] = [x]
        skeleton: Any = None
        for k in range(model.num_exits):
            logits, next_state = model.step(model.start(x) if k == 0 else _unflatten(skeleton, inputs), k)
            next_tensors, next_skeleton = _flatten(next_state)
            # state{k}_{i}: tensor i of the state stage k starts from (stage k-1's outputs, in order)
            in_names = ["images"] if k == 0 else [f"state{k}_{i}" for i in range(len(inputs))]
            last = k == model.num_exits - 1
            out_names = ["logits", *([] if last else [f"state{k + 1}_{i}" for i in range(len(next_tensors))])]
            path = out_dir / f"stage{k}.onnx"
            batch_dim = torch.export.Dim("batch", min=1)
            torch.onnx.export(
                _Stage(model, k, skeleton), tuple(inputs), str(path), input_names=in_names, output_names=out_names,
                dynamic_shapes=(tuple({0: batch_dim} for _ in inputs),), opset_version=opset, dynamo=True,
                external_data=False,
            )
            stages.append(StageGraph(str(path.name), in_names, out_names))
            inputs, skeleton = next_tensors, next_skeleton
    manifest = {"num_exits": model.num_exits, "resolution": model.resolution, "num_classes": model.num_classes,
                "stages": [s.__dict__ for s in stages]}
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return stages


class OnnxStages:
    """The exported stages in ONNX Runtime, with early exit on the host: after each stage the images
    whose confidence reaches ``threshold`` leave; the next stage runs on the rest only."""

    def __init__(self, out_dir: str | Path, threshold: float = 1.0, threads: int | None = None,
                 providers: Sequence[str] = ("CPUExecutionProvider",)) -> None:
        import onnxruntime as ort  # optional extra: pip install basisnet[onnx]

        out_dir = Path(out_dir)
        manifest = json.loads((out_dir / MANIFEST).read_text())
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.sessions = [ort.InferenceSession(str(out_dir / s["path"]), options, providers=list(providers))
                         for s in manifest["stages"]]
        self.stages = [StageGraph(**s) for s in manifest["stages"]]
        self.threshold = threshold
        self.resolution = manifest["resolution"]

    def run_stage(self, k: int, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        feeds = dict(zip(self.stages[k].inputs, inputs))
        return self.sessions[k].run(None, feeds)

    def exits(self, images: np.ndarray) -> list[np.ndarray]:
        """Every exit's logits (no early exit), as the PyTorch model's ``forward``."""
        inputs, logits = [images], []
        for k in range(len(self.stages)):
            out = self.run_stage(k, inputs)
            logits.append(out[0])
            inputs = out[1:]
        return logits

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Classes, confidences and answering stages (0-based), each image computed only up to its exit."""
        batch = images.shape[0]
        classes = np.zeros(batch, dtype=np.int64)
        conf = np.zeros(batch, dtype=np.float32)
        stage = np.full(batch, len(self.stages) - 1, dtype=np.int64)
        alive = np.arange(batch)
        inputs = [images]
        for k in range(len(self.stages)):
            out = self.run_stage(k, inputs)
            logits = out[0] - out[0].max(-1, keepdims=True)
            probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
            conf[alive], classes[alive] = probs.max(-1), probs.argmax(-1)
            if k == len(self.stages) - 1:
                break
            done = conf[alive] >= self.threshold
            stage[alive[done]] = k
            if done.all():
                break
            keep = np.flatnonzero(~done)
            alive, inputs = alive[keep], [t[keep] for t in out[1:]]
        return classes, conf, stage
