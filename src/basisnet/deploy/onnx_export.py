"""ONNX export, one graph per stage of a multi-exit model, in the form the serving batch runs fastest.

Any registered model exports through its staged interface (``start`` / ``step``): stage k becomes a
graph whose inputs are the tensors of the state it continues from and whose outputs are exit k's
logits and the tensors of the state it hands on. For BasisNet that is the lightweight model with its
coefficient head (image -> logits, coefficients) and the specialist (image, coefficients -> logits);
for MSDNet and RANet one graph per exit segment. ``OnnxStages`` runs the graphs with ONNX Runtime and
early exit on the host, as ``EarlyExitPredictor`` does in PyTorch.

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

import copy
import json
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..layers import BasisConv2d, BasisLinear, ExecutionPolicy, execution_policy
from ..models import BasisNet
from ..models.protocol import MultiExitClassifier, State
from .fold import fold_basis_batchnorm

__all__ = ["OnnxStages", "StageGraph", "check_export_batch", "export_stages", "softmax_max"]

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
    """Write ``stage{k}.onnx`` for every exit and a ``stages.json`` manifest; returns the stages.

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
            logits, next_state = model.step(model.start(x) if k == 0 else _unflatten(skeleton, inputs), k)
            next_tensors, next_skeleton = _flatten(next_state)
            # state{k}_{i}: tensor i of the state stage k starts from (stage k-1's outputs, in order)
            in_names = ["images"] if k == 0 else [f"state{k}_{i}" for i in range(len(inputs))]
            last = k == model.num_exits - 1
            out_names = ["logits", *([] if last else [f"state{k + 1}_{i}" for i in range(len(next_tensors))])]
            path = out_dir / f"stage{k}.onnx"
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


class OnnxStages:
    """The exported stages in ONNX Runtime, with early exit on the host: after each stage the images
    whose confidence reaches ``threshold`` leave; the next stage runs on the rest only.

    ``threads``: intra-op threads of every stage, or one count per stage. Sessions open on first use
    and are not pickled: a copy sent to another process (a stream's stage worker) opens only the
    stage it runs, there."""

    def __init__(self, out_dir: str | Path, threshold: float = 1.0, threads: int | Sequence[int] | None = None,
                 providers: Sequence[str] = ("CPUExecutionProvider",)) -> None:
        import onnxruntime  # noqa: F401  optional extra (pip install basisnet[onnx]): fail here, not in a worker

        self.out_dir = Path(out_dir)
        manifest_path = self.out_dir / MANIFEST
        if not manifest_path.is_file():
            raise FileNotFoundError(f"{manifest_path}: no exported stages here (basisnet export RUN --output DIR)")
        manifest = json.loads(manifest_path.read_text())
        self.stages = [StageGraph(**s) for s in manifest["stages"]]
        self.num_exits = len(self.stages)
        self.threads = self._thread_counts(threads)
        self.providers = list(providers)
        self.threshold = threshold
        self.resolution = manifest["resolution"]
        self.batch = check_export_batch(manifest.get("batch", "dynamic"))  # graphs before the batch forms: dynamic
        self._sessions: dict[int, Any] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_sessions": {}}

    def with_threads(self, threads: int | Sequence[int]) -> OnnxStages:
        """The same stages with other thread counts (sessions open anew, on first use)."""
        other = copy.copy(self)
        other.threads, other._sessions = self._thread_counts(threads), {}
        return other

    def _thread_counts(self, threads: int | Sequence[int] | None) -> list[int | None]:
        counts = list(threads) if isinstance(threads, Sequence) else [threads] * self.num_exits
        if len(counts) != self.num_exits:
            raise ValueError(f"threads: {self.num_exits} counts expected (one per stage), got {counts}")
        return counts

    def session(self, k: int) -> Any:
        """Stage ``k``'s ``onnxruntime.InferenceSession`` (opened on first use)."""
        if k not in self._sessions:
            import onnxruntime as ort

            options = ort.SessionOptions()
            if self.threads[k]:
                options.intra_op_num_threads = self.threads[k]
            self._sessions[k] = ort.InferenceSession(str(self.out_dir / self.stages[k].path), options,
                                                     providers=self.providers)
        return self._sessions[k]

    @property
    def sessions(self) -> list[Any]:
        return [self.session(k) for k in range(self.num_exits)]

    def _run(self, k: int, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        return self.session(k).run(None, dict(zip(self.stages[k].inputs, inputs)))

    def run_stage(self, k: int, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Stage ``k`` on any number of images; a fixed-batch graph gets them in slices of its batch,
        the last slice padded with copies of its last image (their outputs dropped)."""
        size, total = self.batch, inputs[0].shape[0]
        if size is None or total == size:
            return self._run(k, inputs)
        parts = []
        for start in range(0, total, size):
            part = [t[start:start + size] for t in inputs]
            short = size - part[0].shape[0]
            if short:
                part = [np.concatenate([t, np.repeat(t[-1:], short, 0)]) for t in part]
            parts.append([out[:size - short] for out in self._run(k, part)])
        return [np.concatenate(outs) for outs in zip(*parts)]

    def exits(self, images: np.ndarray) -> list[np.ndarray]:
        """Every exit's logits (no early exit), as the PyTorch model's ``forward``."""
        inputs, logits = [images], []
        for k in range(self.num_exits):
            out = self.run_stage(k, inputs)
            logits.append(out[0])
            inputs = out[1:]
        return logits

    def predict(self, images: np.ndarray, last: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Classes, confidences and answering stages (0-based), each image computed only up to its exit
        (``last``: the last stage to run, every image answering there at the latest)."""
        last = self.num_exits - 1 if last is None else last
        batch = images.shape[0]
        classes = np.zeros(batch, dtype=np.int64)
        conf = np.zeros(batch, dtype=np.float32)
        stage = np.full(batch, last, dtype=np.int64)
        alive = np.arange(batch)
        inputs = [images]
        for k in range(last + 1):
            out = self.run_stage(k, inputs)
            conf[alive], classes[alive] = softmax_max(out[0])
            if k == last:
                break
            done = conf[alive] >= self.threshold
            stage[alive[done]] = k
            if done.all():
                break
            keep = np.flatnonzero(~done)
            alive, inputs = alive[keep], [t[keep] for t in out[1:]]
        return classes, conf, stage

    def exit_latency_ms(self, repeats: int = 200) -> list[float]:
        """Milliseconds to answer one image at each exit in ONNX Runtime: ``predict`` at batch 1 stopped
        after that exit, host bookkeeping included (median of ``repeats``; cf.
        ``deploy.latency.exit_latency_ms`` for PyTorch)."""
        from .latency import median_ms

        x = np.random.default_rng(0).standard_normal((1, 3, self.resolution, self.resolution)).astype(np.float32)
        return [median_ms(lambda k=k: self.predict(x, last=k), torch.device("cpu"), repeats=repeats)
                for k in range(self.num_exits)]


def softmax_max(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Confidence (top softmax probability) and class of each row of ``logits``."""
    shifted = np.exp(logits - logits.max(-1, keepdims=True))
    probs = shifted / shifted.sum(-1, keepdims=True)
    return probs.max(-1), probs.argmax(-1)
