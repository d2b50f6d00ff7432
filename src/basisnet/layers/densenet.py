"""Building blocks shared by the multi-scale dense networks MSDNet and RANet (torch only).

Both networks grow DenseNet-style feature maps at several resolutions: every layer concatenates new
features to its input, a 1x1 bottleneck first narrows wide inputs, 1x1 transitions compress channels,
and each exit has the same classifier head (two stride-2 3x3 convs, pooling, linear).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .blocks import ConvNormAct

# "cifar": 3x3 stem at full resolution, 128-channel heads; "imagenet": 7x7/2 stem + 3x3/2 max-pool,
# heads as wide as their input (as in both official codes).
VARIANTS = ("cifar", "imagenet")
CIFAR_HEAD_CHANNELS = 128


def halve(side: int) -> int:
    """Side after a stride-2 conv or pool with "same" padding (3x3/p1, 7x7/p3, max-pool 3/p1)."""
    return (side + 1) // 2


def stem_side(resolution: int, variant: str) -> int:
    return resolution if variant == "cifar" else halve(halve(resolution))


def check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {VARIANTS}")


def check_factors(num_scales: int, **factors: Sequence[int]) -> None:
    """Per-scale factors (grFactor, bnFactor) need one positive entry per scale."""
    for name, values in factors.items():
        if len(values) != num_scales:
            raise ValueError(f"{name} has {len(values)} entries but the network has {num_scales} scales")
        if min(values) < 1:
            raise ValueError(f"{name} entries must be >= 1, got {list(values)}")


def concat_channels(parts: Sequence[Tensor]) -> Tensor:
    """Concatenate along channels, channels_last whenever one part strictly is.

    ``torch.cat`` falls back to NCHW when one part's strides are ambiguous (a 1-channel map from a
    resampling is "contiguous" in both formats): every later conv of a channels_last model then copies
    its input, forward and backward. Such parts are restrided first (a clone of one channel).
    """
    if any(p.dim() == 4 and not p.is_contiguous() and p.is_contiguous(memory_format=torch.channels_last)
           for p in parts):
        parts = [p if p.stride(1) == 1 else p.clone(memory_format=torch.channels_last) for p in parts]
    return torch.cat(list(parts), 1)


def bottleneck_conv(in_channels: int, out_channels: int, bn_width: int, stride: int = 1) -> nn.Sequential:
    """1x1 conv to ``min(in, bn_width * out)`` channels, then a 3x3 conv; BN + ReLU after each.

    The 1x1 keeps the 3x3 cheap once the dense input has grown wide.
    """
    inner = min(in_channels, bn_width * out_channels)
    return nn.Sequential(ConvNormAct(in_channels, inner, 1), ConvNormAct(inner, out_channels, 3, stride))


class DenseLayer(nn.Module):
    """Concatenate ``growth`` new channels to the input (a DenseNet layer with a bottleneck)."""

    def __init__(self, in_channels: int, growth: int, bn_width: int) -> None:
        super().__init__()
        self.conv = bottleneck_conv(in_channels, growth, bn_width)

    def forward(self, x: Tensor) -> Tensor:
        return concat_channels([x, self.conv(x)])


class ScaleStem(nn.Module):
    """The first layer of both networks: a stem, then one 3x3 conv per further map.

    Returns every map it computes, in computation order (finest first). ``strides`` are those of the
    convs after the stem (RANet repeats a resolution with stride 1).
    """

    def __init__(self, channels: Sequence[int], strides: Sequence[int], variant: str) -> None:
        super().__init__()
        check_variant(variant)
        if variant == "cifar":
            stem: nn.Module = ConvNormAct(3, channels[0], 3)
        else:
            # Bias before BN as in both official stems, so their checkpoints map one to one.
            stem = nn.Sequential(nn.Conv2d(3, channels[0], 7, 2, 3), nn.BatchNorm2d(channels[0]), nn.ReLU(inplace=True),
                                 nn.MaxPool2d(3, 2, 1))
        layers = [stem]
        for c_in, c_out, stride in zip(channels, channels[1:], strides):
            layers.append(ConvNormAct(c_in, c_out, 3, stride))
        self.layers = nn.ModuleList(layers)

    def forward(self, x: Tensor) -> list[Tensor]:
        maps = []
        for layer in self.layers:
            x = layer(x)
            maps.append(x)
        return maps


class ExitHead(nn.Module):
    """The MSDNet classifier: two stride-2 3x3 convs, global average pool, linear.

    ``hidden`` is the conv width (128 on CIFAR, the input width on ImageNet). The official heads pool
    with ``AvgPool2d(2)``, the same as a global average on the 2x2 map every standard config gives.
    """

    def __init__(self, in_channels: int, num_classes: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or in_channels
        self.convs = nn.Sequential(ConvNormAct(in_channels, hidden, 3, 2), ConvNormAct(hidden, hidden, 3, 2))
        self.fc = nn.Linear(hidden, num_classes)

    @staticmethod
    def check_input(side: int, where: str) -> None:
        """Reject maps the head would shrink below 2x2 (the official code crashes on them)."""
        pooled = halve(halve(side))
        if pooled < 2:
            raise ValueError(
                f"{where}: its {side}x{side} feature map leaves {pooled}x{pooled} after the classifier's two "
                "stride-2 convs (need at least 2x2); use fewer scales or a larger resolution"
            )

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.convs(x).mean((2, 3)))


def head_for(in_channels: int, num_classes: int, variant: str) -> ExitHead:
    return ExitHead(in_channels, num_classes, CIFAR_HEAD_CHANNELS if variant == "cifar" else None)


def init_weights(model: nn.Module) -> None:
    """He (fan-out) convs, unit BatchNorm, zero linear biases: what both official codes intend.

    (MSDNet's ``_init_weights`` reaches no module and RANet's misses the stem, leaving PyTorch defaults.)
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)
