"""Building blocks shared by every MobileNet-shaped network, static or basis.

One implementation per block: a ``num_bases`` argument turns chosen convs into basis convs, so static,
BasisNet and CondConv networks are the same code. Blocks that hold basis layers take their
``LayerWeights`` (``basisnet.layers.weights``) -- one row per basis layer of the block, in order -- and
hand each layer its row, unless they route themselves (CondConv): then they compute coefficients from
their input and are called without weights, as blocks without basis layers are.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .basis import BasisConv2d, BasisLinear
from .weights import LayerWeights, MixingCoefficients

ACTIVATIONS: dict[str, type[nn.Module]] = {"RE": nn.ReLU, "R6": nn.ReLU6, "HS": nn.Hardswish}

# Which convs of an inverted residual block can be basis layers.
BLOCK_PARTS = ("expand", "depthwise", "project")


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round channels to a multiple of ``divisor`` without losing more than 10% (MobileNet rule)."""
    min_value = min_value or divisor
    new = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


def to_channels_last(module: nn.Module) -> nn.Module:
    """Channels-last for every 4-D parameter and buffer (``Module.to`` rejects 5-D basis kernels), with the
    strides a channels_last tensor of its shape is made with. A depthwise kernel (C, 1, k, k) counts as
    channels_last in either stride of its size-1 dimension, so ``contiguous`` leaves it as it is; but its
    gradient is made with these strides, and DistributedDataParallel, whose buckets follow the parameters,
    would copy every such gradient at every step (its "grad strides do not match" warning)."""
    for tensor in [*module.parameters(), *module.buffers()]:
        if tensor.dim() == 4:
            target = torch.empty_like(tensor.data, memory_format=torch.channels_last)
            if target.stride() != tensor.data.stride():
                tensor.data = target.copy_(tensor.data)
    return module


def activation(name: str | None) -> nn.Module:
    if name is None:
        return nn.Identity()
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name](inplace=True)


class ConvNormAct(nn.Sequential):
    """Conv (static or basis, no bias) -> BatchNorm -> activation. BatchNorm is shared by all bases."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        act: str | None = "RE",
        num_bases: int = 0,
    ) -> None:
        padding = (kernel_size - 1) // 2
        conv: nn.Module
        if num_bases:
            conv = BasisConv2d(in_channels, out_channels, kernel_size, num_bases, stride, padding, groups=groups)
        else:
            conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=False)
        super().__init__(conv, nn.BatchNorm2d(out_channels), activation(act))
        self.out_channels = out_channels

    @property
    def num_basis_layers(self) -> int:
        return int(isinstance(self[0], BasisConv2d))

    def forward(self, x: Tensor, weights: LayerWeights | None = None) -> Tensor:  # type: ignore[override]
        conv, norm, act = self
        x = conv(x, weights) if isinstance(conv, BasisConv2d) else conv(x)
        return act(norm(x))


class SqueezeExcite(nn.Module):
    """Channel attention of MobileNetV3: pool -> 1x1 -> ReLU -> 1x1 -> hard-sigmoid -> scale."""

    def __init__(self, channels: int, squeeze_channels: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, channels, 1)
        self.relu = nn.ReLU(inplace=True)
        self.gate = nn.Hardsigmoid(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * self.gate(self.fc2(self.relu(self.fc1(s))))


class Router(nn.Module):
    """CondConv routing: coefficients from the block's own input (pool -> linear -> sigmoid)."""

    def __init__(self, in_channels: int, num_bases: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_channels, num_bases)

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.fc(x.mean((2, 3))))


@dataclass(frozen=True)
class BlockSpec:
    """One row of an architecture table: an inverted residual block."""

    kernel: int
    expanded: int  # channels after the expand 1x1 (== input channels: no expand conv)
    out: int
    se: bool
    act: str  # "RE" | "R6" | "HS"
    stride: int


class InvertedResidual(nn.Module):
    """MobileNetV2/V3 block: [expand 1x1] -> depthwise kxk -> [SE] -> project 1x1 (+ residual).

    ``basis_parts`` names the convs that become basis layers; ``routing=True`` makes the block a
    CondConv block that computes one coefficient vector for all its basis layers from its input.
    """

    def __init__(
        self,
        in_channels: int,
        expanded: int,
        out_channels: int,
        kernel: int,
        stride: int,
        se: bool,
        act: str,
        num_bases: int = 0,
        basis_parts: Collection[str] = BLOCK_PARTS,
        routing: bool = False,
    ) -> None:
        super().__init__()
        unknown = set(basis_parts) - set(BLOCK_PARTS)
        if unknown:
            raise ValueError(f"unknown block parts {sorted(unknown)}; choose from {BLOCK_PARTS}")
        if routing and not num_bases:
            raise ValueError("a routing (CondConv) block needs num_bases >= 1")

        def bases(part: str) -> int:
            return num_bases if part in basis_parts else 0

        self.use_residual = stride == 1 and in_channels == out_channels
        self.expand = (
            ConvNormAct(in_channels, expanded, 1, act=act, num_bases=bases("expand"))
            if expanded != in_channels
            else None
        )
        self.depthwise = ConvNormAct(
            expanded, expanded, kernel, stride, groups=expanded, act=act, num_bases=bases("depthwise")
        )
        self.se = SqueezeExcite(expanded, make_divisible(expanded // 4, 8)) if se else None
        self.project = ConvNormAct(expanded, out_channels, 1, act=None, num_bases=bases("project"))
        self.router = Router(in_channels, num_bases) if routing and self._own_basis_layers() else None
        self.out_channels = out_channels

    def _convs(self) -> list[ConvNormAct]:
        return [m for m in (self.expand, self.depthwise, self.project) if m is not None]

    def _own_basis_layers(self) -> int:
        return sum(m.num_basis_layers for m in self._convs())

    @property
    def num_basis_layers(self) -> int:
        """Coefficient rows this block consumes from outside (0 when it routes itself)."""
        return 0 if self.router is not None else self._own_basis_layers()

    def forward(self, x: Tensor, weights: LayerWeights | None = None) -> Tensor:
        if self.router is not None:
            weights = MixingCoefficients(self.router(x).unsqueeze(1).expand(-1, self._own_basis_layers(), -1))
        elif weights is None and self.num_basis_layers:
            raise ValueError(f"this block has {self.num_basis_layers} basis layers: it needs their weights")
        out, row = x, 0
        for name in BLOCK_PARTS:
            conv = getattr(self, name)
            if conv is None:
                continue
            n = conv.num_basis_layers
            out = conv(out, weights.rows(row, n)) if n else conv(out)
            row += n
            if name == "depthwise" and self.se is not None:
                out = self.se(out)
        return x + out if self.use_residual else out


class LinearAct(nn.Module):
    """Linear (static or basis) -> optional activation, for classifier heads."""

    def __init__(self, in_features: int, out_features: int, act: str | None = None, num_bases: int = 0) -> None:
        super().__init__()
        self.fc = BasisLinear(in_features, out_features, num_bases) if num_bases else nn.Linear(in_features, out_features)
        self.act = activation(act)

    @property
    def num_basis_layers(self) -> int:
        return int(isinstance(self.fc, BasisLinear))

    def forward(self, x: Tensor, weights: LayerWeights | None = None) -> Tensor:
        x = self.fc(x, weights) if isinstance(self.fc, BasisLinear) else self.fc(x)
        return self.act(x)
