"""What an early-exit runtime runs: a model's stages, behind one protocol whatever executes them.

Early exit needs of a runtime only that it can compute exit k for the images still undecided and hand
their state on to exit k + 1. ``Stages`` writes that down once; ``TorchStages`` runs any registered
model's own ``start`` / ``step`` in PyTorch, ``deploy.onnx_runtime.OnnxStages`` the graphs ``basisnet
export`` wrote, in ONNX Runtime. The early-exit predictor, the stream and the latency timer take a
``Stages`` and never ask which runtime it is: what differs between runtimes is a property they state.

Every implementation speaks torch tensors at its boundary (a state is a nesting of tensors with the
batch first, ``models.protocol``), so one early-exit loop and one ``select_state`` serve all of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from ..evaluate import exit_madds
from ..models.protocol import MultiExitClassifier, State, select_state

__all__ = ["Stages", "TorchStages"]


@runtime_checkable
class Stages(Protocol):
    """A multi-exit model's stages as a runtime executes them."""

    num_exits: int
    resolution: int  # the image side the stages take
    device: torch.device  # where images and states live (and what a timer synchronizes)
    label: str  # the runtime as a user reads it ("PyTorch eager", "ONNX Runtime")
    releases_gil: bool  # a stage computes without holding the GIL: threads serve a stream as well as processes

    @property
    def exit_costs(self) -> Sequence[float] | None:
        """Cumulative multiply-adds per image at each exit, or None where the runtime cannot count them."""
        ...

    def start(self, images: Tensor) -> State:
        """The state before exit 0 of a normalized batch (B, 3, H, W); cheap."""
        ...

    def step(self, state: State, k: int) -> tuple[Tensor, State]:
        """Exit ``k``'s logits and the state exit ``k + 1`` continues from."""
        ...

    def select(self, state: State, keep: Tensor) -> State:
        """The state of the images at batch positions ``keep`` (a long tensor) only."""
        ...

    def with_threads(self, threads: Sequence[int]) -> Stages:
        """These stages with stage k on ``threads[k]`` intra-op threads, where the runtime bounds threads per
        stage; where they belong to the process instead, the worker running a stage sets them."""
        ...


class TorchStages:
    """Any multi-exit model's own ``start`` / ``step``, in PyTorch.

    ``compile``: run both through ``torch.compile`` (True = inductor, or a backend name), with dynamic
    shapes since every stage sees a different number of images. ``exit_costs``: the model's cumulative
    MAdds per exit when already counted (counted on first use otherwise). A model whose weights are
    channels_last gets its images in that layout too.
    """

    label = "PyTorch eager"
    releases_gil = False  # at batch 1 an eager model spends much of its time in Python dispatch

    def __init__(self, model: MultiExitClassifier, compile: bool | str = False,
                 exit_costs: Sequence[float] | None = None) -> None:
        self.model = model.eval()
        self.num_exits, self.resolution = model.num_exits, model.resolution
        param = next(model.parameters())
        self.device = param.device
        self._channels_last = param.dim() == 4 and param.is_contiguous(memory_format=torch.channels_last)
        self._costs = list(exit_costs) if exit_costs is not None else None
        self._start, self._step = model.start, model.step
        if compile:
            backend = "inductor" if compile is True else compile
            self._start = torch.compile(model.start, backend=backend, dynamic=True)
            self._step = torch.compile(model.step, backend=backend, dynamic=True)

    @property
    def exit_costs(self) -> list[float]:
        if self._costs is None:
            self._costs = exit_madds(self.model)
        return self._costs

    def start(self, images: Tensor) -> State:
        if self._channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self._start(images)

    def step(self, state: State, k: int) -> tuple[Tensor, State]:
        return self._step(state, k)

    def select(self, state: State, keep: Tensor) -> State:
        return select_state(state, keep)

    def with_threads(self, threads: Sequence[int]) -> TorchStages:
        """The same stages: PyTorch's intra-op threads are the process's, which a stream worker sets."""
        return self
