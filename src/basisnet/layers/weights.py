"""What a network hands its basis layers: mixing coefficients, or the kernels already synthesized from them.

A basis layer's weight is a mix of its N bases. A network either passes the coefficients down and each
layer mixes its own bases (per image, or once when one set serves the batch, on the path the caller's
``ExecutionPolicy`` chooses), or it mixes every layer at once beforehand (the fused synthesis,
``basisnet.layers.synthesis``) and passes the finished kernels, and each layer runs one plain conv /
linear. Both are ``LayerWeights``: one row per basis layer they cover, in network order. A block takes
the rows of its own layers (``rows``); a basis layer is given exactly one row.

A module without externally driven basis layers (a static network or block, a CondConv block that
computes its coefficients from its own input) is called without weights: ``None`` there means "nothing
to mix", not a third kind of weights.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

from torch import Tensor

from .execution import ExecutionPolicy, current_policy

__all__ = ["Kernel", "LayerWeights", "MixingCoefficients", "SynthesizedKernels"]


class LayerWeights(Protocol):
    """The weights of consecutive basis layers of a network, one row per layer."""

    @property
    def num_layers(self) -> int: ...

    def rows(self, start: int, count: int) -> LayerWeights:
        """The weights of the ``count`` layers from row ``start`` (a block's, or one layer's)."""
        ...


class MixingCoefficients:
    """Coefficients (B, L, N), a row per image, or one set (L, N) shared by the batch; and the policy
    by which the layers mix them (default: the caller's ``current_policy()`` when they are made)."""

    __slots__ = ("coeffs", "policy")

    def __init__(self, coeffs: Tensor, policy: ExecutionPolicy | None = None) -> None:
        self.coeffs = coeffs
        self.policy = current_policy() if policy is None else policy

    @classmethod
    def of_layer(cls, coeffs: Tensor, policy: ExecutionPolicy | None = None) -> MixingCoefficients:
        """One layer's coefficients: (B, N) per image or (N,) shared (the layer axis added)."""
        return cls(coeffs.unsqueeze(-2), policy)

    @property
    def num_layers(self) -> int:
        return self.coeffs.shape[-2] if self.coeffs.dim() >= 2 else 0

    @property
    def shared(self) -> bool:
        """One coefficient set for the whole batch."""
        return self.coeffs.dim() == 2 or self.coeffs.shape[0] == 1

    def rows(self, start: int, count: int) -> MixingCoefficients:
        return MixingCoefficients(self.coeffs.narrow(-2, start, count), self.policy)

    def layer_coeffs(self) -> Tensor:
        """The one layer's coefficients: (B, N) per image, (N,) shared."""
        return self.coeffs.select(-2, 0)


class Kernel(NamedTuple):
    """One layer's synthesized weight and bias."""

    weight: Tensor
    bias: Tensor | None


class SynthesizedKernels:
    """The kernels of consecutive basis layers, mixed already (by ``PackedBases``) from one coefficient set."""

    __slots__ = ("kernels",)

    def __init__(self, kernels: tuple[Kernel, ...]) -> None:
        self.kernels = kernels

    @property
    def num_layers(self) -> int:
        return len(self.kernels)

    def rows(self, start: int, count: int) -> SynthesizedKernels:
        return SynthesizedKernels(self.kernels[start:start + count])

    def kernel(self) -> Kernel:
        """The one layer's kernel."""
        return self.kernels[0]
