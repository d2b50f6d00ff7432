"""The exported stages in ONNX Runtime, as ``Stages`` for the one early-exit predictor.

``basisnet export`` (``deploy.onnx_export``) writes one graph per stage and a ``stages.json`` manifest;
``OnnxStages`` runs them. A graph's inputs are the tensors of the state its stage continues from and its
outputs exit k's logits plus the tensors it hands on, so a state here is the list of those tensors (torch
tensors sharing memory with ONNX Runtime's arrays, so that early exit keeps only the undecided images
with the same ``select_state`` as in PyTorch).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..models.protocol import select_state
from .onnx_export import MANIFEST, StageGraph, check_export_batch

__all__ = ["OnnxStages"]


class OnnxStages:
    """The graphs of an export folder in ONNX Runtime.

    ``threads``: intra-op threads of every stage, or one count per stage. Sessions open on first use
    and are not pickled: a copy sent to another process (a stream's stage worker) opens only the
    stage it runs, there. A fixed-batch graph is fed in slices of its batch (``run_stage``)."""

    label = "ONNX Runtime"
    releases_gil = True  # a session runs its graph without the GIL
    exit_costs = None  # a graph does not count its multiply-adds
    device = torch.device("cpu")  # inputs and outputs cross as host arrays, whichever provider computes

    def __init__(self, out_dir: str | Path, threads: int | Sequence[int] | None = None,
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
        self.resolution = manifest["resolution"]
        self.batch = check_export_batch(manifest.get("batch", "dynamic"))  # graphs before the batch forms: dynamic
        self._sessions: dict[int, Any] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_sessions": {}}

    def with_threads(self, threads: Sequence[int]) -> OnnxStages:
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

    def start(self, images: Tensor) -> list[Tensor]:
        return [images]

    def step(self, state: list[Tensor], k: int) -> tuple[Tensor, list[Tensor]]:
        logits, *handed_on = self.run_stage(k, [np.ascontiguousarray(t.numpy()) for t in state])
        return torch.from_numpy(logits), [torch.from_numpy(t) for t in handed_on]

    def select(self, state: list[Tensor], keep: Tensor) -> list[Tensor]:
        return select_state(state, keep)

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
