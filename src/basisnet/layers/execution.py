"""How basis layers compute: an execution policy that the caller owns and the layers read from their weights.

Every per-sample path of a basis layer gives the same result (``basisnet.layers.basis``); which one is
fastest depends on the layer, the batch, the memory layout, the machine and whether gradients flow, and
an exported graph must hold the forms its runtime serves. So the choice is not state of the layers: an
``ExecutionPolicy`` says, per layer and input, which per-sample path runs, and whether one coefficient set
shared by the batch is mixed for the whole network at once (the fused synthesis, ``PackedBases``).

The caller owns the policy for a block of code, ``with execution_policy(policy): ...`` (the way
``torch.nn.attention.sdpa_kernel`` chooses attention kernels), so it reaches layers under any front end
(a forward, the staged ``step`` calls, a training step, an exporter's trace). Nothing is written into a
model: ``MixingCoefficients`` takes the current policy when they are made, where coefficients enter a
network, and each layer reads it from the weights it is given. The policy in force is process-wide (a
stream's stage threads run under the policy of the code that started them), held in a plain module
list rather than a ``ContextVar``, which ``torch.compile`` cannot trace everywhere.

Policies: ``ExecutionPolicy()`` (each layer's default path; what runs outside any ``with``),
``TunedPaths`` (the fastest measured by ``tune_paths``), ``ForcedPath`` (one path wherever it applies:
benchmarks comparing paths) and the exporter's forms (``deploy.onnx_export.ExportPaths``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor

__all__ = ["ExecutionPolicy", "ForcedPath", "PathKey", "TunedPaths", "current_policy", "execution_policy",
           "path_key"]

# What a layer's fastest per-sample path depends on: batch, channels_last input, autograd recording.
PathKey = tuple[int, bool, bool]


def channels_last(x: Tensor) -> bool:
    """A 4-D input in channels_last memory (that is not also contiguous, as a 1x1 map is)."""
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def path_key(x: Tensor) -> PathKey:
    return x.shape[0], channels_last(x), torch.is_grad_enabled()


class PathChoices(Protocol):
    """What a policy asks of a basis layer."""

    layer_name: str

    def per_sample_paths(self) -> tuple[str, ...]: ...


@dataclass(frozen=True)
class ExecutionPolicy:
    """Each layer's default per-sample path (the first of ``per_sample_paths()``), and fusion.

    ``fuse``: a network mixes one coefficient set shared by the batch for all its layers at once (one
    matmul over its packed bases) instead of layer by layer. Only where autograd does not record: the
    packed bases are a detached copy, so a fused forward would give the bases no gradient; where
    gradients flow the layers always mix their own parameters (the same kernels, summed in another order).
    """

    fuse: bool = field(default=True, kw_only=True)

    def fuses(self, shared: bool) -> bool:
        """Whether a network fuses the synthesis for coefficients (``shared``: one set for the batch)."""
        return self.fuse and shared and not torch.is_grad_enabled()

    def path(self, layer: PathChoices, x: Tensor) -> str:
        """The per-sample path ``layer`` runs on input ``x``."""
        return layer.per_sample_paths()[0]


@dataclass(frozen=True)
class TunedPaths(ExecutionPolicy):
    """The per-sample path ``tune_paths`` timed fastest for each layer on the input it saw; an input of
    another batch, layout or grad mode gets the layer's default."""

    timings: Mapping[tuple[str, PathKey], Mapping[str, float]]  # (layer name, path key) -> {path: ms}

    def fastest(self, layer_name: str, key: PathKey) -> str | None:
        timings = self.timings.get((layer_name, key))
        return None if timings is None else min(timings, key=timings.__getitem__)

    def path(self, layer: PathChoices, x: Tensor) -> str:
        return self.fastest(layer.layer_name, path_key(x)) or super().path(layer, x)


@dataclass(frozen=True)
class ForcedPath(ExecutionPolicy):
    """``forced`` in every layer that can run it, the default in the others."""

    forced: str

    def path(self, layer: PathChoices, x: Tensor) -> str:
        return self.forced if self.forced in layer.per_sample_paths() else super().path(layer, x)


# The policies of the open ``execution_policy`` blocks, innermost last, above the default.
_POLICIES: list[ExecutionPolicy] = [ExecutionPolicy()]


def current_policy() -> ExecutionPolicy:
    """The policy of the innermost ``execution_policy`` block (``ExecutionPolicy()`` outside any)."""
    return _POLICIES[-1]


@contextmanager
def execution_policy(policy: ExecutionPolicy) -> Iterator[ExecutionPolicy]:
    """Basis layers run by ``policy`` inside the block (coefficients made there carry it)."""
    if not isinstance(policy, ExecutionPolicy):
        raise TypeError(f"execution_policy needs an ExecutionPolicy, got {type(policy).__name__}")
    _POLICIES.append(policy)
    try:
        yield policy
    finally:
        _POLICIES.pop()
