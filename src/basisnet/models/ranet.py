"""RANet (Yang et al., CVPR 2020): resolution-adaptive network, coarse resolutions first.

Our own implementation of the architecture of the official code (github.com/yangle15/RANet-pytorch),
built from the MSDNet pieces in ``basisnet.layers.densenet``. One sub-network ("flow") per entry of
``scale_list`` (1 = the coarsest resolution), cheapest first. Flow 0 is a dense network with exits;
every later flow starts at a finer (or the same) map and, for as many blocks as the previous flow has, fuses that
flow's features (upsampled) into its own while striding down to the coarsest resolution, then adds
``block_step`` plain dense blocks with one exit each. Option names are snake_case versions of the
official flags (``num_blocks`` = ``--nBlocks``, ``block_step``, ``num_channels``, ``growth_rate``,
``gr_factor``, ``bn_factor``, ``scale_list``, ``compress_factor``, ``step``, ``stepmode`` with "lin_grow"
for its "lg", ``reduction``). Multiply-adds relate to the official counter as explained in ``msdnet``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import ConvNormAct
from ..layers.densenet import (DenseLayer, ExitHead, ScaleStem, bottleneck_conv, check_factors, check_variant,
                               concat_channels, halve, head_for, init_weights, stem_side)
from .equilibrium import SharedTrunkHooks, split_exit
from .msdnet import STEPMODES, compressed, register_with_presets
from .protocol import State
from .staged import StagedMultiExit

# The constructor defaults are the official CIFAR script's config; explicit options override a preset's.
RANET_PRESETS: dict[str, dict[str, Any]] = {
    "cifar": {},
    # The official train_imagenet.sh, its other options at their defaults. (Its README's variant,
    # num_channels=32 and gr_factor = bn_factor = (4, 2, 2, 1), has 131M params and 2.82G MAdds.)
    "imagenet": dict(num_classes=1000, resolution=224, variant="imagenet", growth_rate=16, step=8,
                     scale_list=(1, 2, 3, 4), gr_factor=(4, 2, 1, 1), bn_factor=(4, 2, 1, 1)),
}


def resize(x: Tensor, size: torch.Size) -> Tensor:
    """Bilinear resampling (align_corners, as the official code) to ``size``; a no-op when it fits."""
    return x if x.shape[-2:] == size else F.interpolate(x, size=size, mode="bilinear", align_corners=True)


def transition(channels: int, reduction: float | None) -> tuple[nn.Module, int]:
    """A 1x1 compression to ``reduction`` of the channels, or nothing; returns it and the new width."""
    if reduction is None:
        return nn.Identity(), channels
    out = compressed(channels, reduction)
    return ConvNormAct(channels, out, 1), out


class DenseBlock(nn.Module):
    """``steps`` dense layers on one map, then an optional transition.

    Also returns the block input and every layer's output: the next flow fuses them layer by layer.
    """

    def __init__(self, in_channels: int, steps: int, growth: int, bn_width: int, reduction: float | None) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DenseLayer(in_channels + i * growth, growth, bn_width) for i in range(steps))
        self.transition, self.out_channels = transition(in_channels + steps * growth, reduction)

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        feats = [x]
        for layer in self.layers:
            x = layer(x)
            feats.append(x)
        return self.transition(x), feats


class FusionLayer(nn.Module):
    """A dense layer that also reads the coarser flow: ``floor(growth * compress_factor)`` new channels
    from the coarser map (3x3, then upsampled), the rest from its own map (3x3, strided when the flow
    steps down a resolution, with the input resampled to match)."""

    def __init__(self, in_channels: int, low_channels: int, growth: int, bn_width: int, low_bn_width: int,
                 compress_factor: float, stride: int) -> None:
        super().__init__()
        from_low = math.floor(growth * compress_factor)
        self.up = bottleneck_conv(low_channels, from_low, low_bn_width)
        self.normal = bottleneck_conv(in_channels, growth - from_low, bn_width, stride)

    def forward(self, x: Tensor, low: Tensor) -> Tensor:
        new = self.normal(x)
        size = new.shape[-2:]
        return concat_channels([resize(x, size), resize(self.up(low), size), new])


class FusionBlock(nn.Module):
    """Fusion layers over the matching block of the coarser flow, whose last map adds
    ``floor(width * compress_factor)`` channels (1x1, upsampled); then an optional transition."""

    def __init__(self, in_channels: int, low_channels: Sequence[int], growth: int, bn_width: int, low_bn_width: int,
                 compress_factor: float, down: bool, reduction: float | None) -> None:
        super().__init__()
        steps = len(low_channels) - 1
        self.layers = nn.ModuleList(
            FusionLayer(in_channels + i * growth, low_channels[i], growth, bn_width, low_bn_width, compress_factor,
                        2 if down and i == steps - 1 else 1)
            for i in range(steps)
        )
        width = in_channels + steps * growth
        extra = math.floor(width * compress_factor)
        self.last = ConvNormAct(low_channels[-1], extra, 1)
        self.transition, self.out_channels = transition(width + extra, reduction)

    def forward(self, x: Tensor, low: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        feats = [x]
        for layer, low_x in zip(self.layers, low):
            x = layer(x, low_x)
            feats.append(x)
        x = concat_channels([x, resize(self.last(low[-1]), x.shape[-2:])])
        return self.transition(x), feats


class RANet(SharedTrunkHooks, StagedMultiExit):
    """Resolution-adaptive network; defaults: the official CIFAR script (8 exits).

    Args:
        num_classes: classifier outputs.
        resolution: the input side the network is meant for (checked: the coarsest map must be one
            the head can halve twice); used to count multiply-adds.
        variant: "cifar" (3x3 stem, 128-wide heads) or "imagenet" (7x7/2 stem + max-pool, heads as
            wide as their input).
        num_blocks: dense blocks (= exits) of the first flow.
        block_step: extra blocks per later flow: its exits (its first blocks fuse the previous flow).
        step: layers per block ("even") or their slope ("lin_grow": block j of a flow has
            ``step * (j + 1)`` layers).
        stepmode: "even" or "lin_grow".
        num_channels: input channels of a flow (times its ``gr_factor``).
        growth_rate: new channels per layer (times the flow's ``gr_factor``).
        scale_list: resolution of each flow, 1 = coarsest, each one the same as or one above the last.
            A flow at scale s strides down s - 1 times (the official code's ``[-0:]`` slice also strides
            a repeated scale-1 flow, below the coarsest resolution).
        gr_factor, bn_factor: width multiplier and bottleneck width per flow.
        compress_factor: share of a fusion layer's new channels taken from the coarser flow.
        reduction: transition compression (a flow at scale s compresses at ``s - 1`` evenly spaced blocks).
    """

    def __init__(
        self,
        num_classes: int = 100,
        resolution: int = 32,
        variant: str = "cifar",
        num_blocks: int = 2,
        block_step: int = 2,
        step: int = 4,
        stepmode: str = "even",
        num_channels: int = 16,
        growth_rate: int = 6,
        scale_list: Sequence[int] = (1, 2, 3, 3),
        gr_factor: Sequence[int] = (4, 2, 1, 1),
        bn_factor: Sequence[int] = (4, 2, 1, 1),
        compress_factor: float = 0.25,
        reduction: float = 0.5,
    ) -> None:
        super().__init__()
        check_variant(variant)
        if stepmode not in STEPMODES:
            raise ValueError(f"unknown stepmode {stepmode!r}; choose one of {STEPMODES}")
        if min(num_classes, resolution, num_blocks, block_step, step, num_channels, growth_rate) < 1:
            raise ValueError("num_classes, resolution, num_blocks, block_step, step, num_channels and growth_rate "
                             f"must be >= 1; got {num_classes}, {resolution}, {num_blocks}, {block_step}, {step}, "
                             f"{num_channels}, {growth_rate}")
        scales = list(scale_list)
        if not scales or scales[0] != 1 or any(b - a not in (0, 1) for a, b in zip(scales, scales[1:])):
            raise ValueError(f"scale_list must start at 1 and rise by 0 or 1 per flow, got {scales}")
        num_flows = len(scales)
        check_factors(num_flows, gr_factor=gr_factor, bn_factor=bn_factor)
        if not 0.0 < reduction <= 1.0:
            raise ValueError(f"reduction must be in (0, 1], got {reduction}")
        for i in range(1, num_flows):
            growth = growth_rate * gr_factor[i]
            if not 1 <= math.floor(growth * compress_factor) < growth:
                raise ValueError(f"compress_factor={compress_factor} must split the {growth} new channels of flow "
                                 f"{i}'s layers between the coarser flow and its own, leaving each at least one")

        # The stem computes the finest map first and the coarsest last; flow i reads map i counted from the end.
        order = list(reversed(range(num_flows)))
        strides = [1 if scales[a] == scales[b] else 2 for a, b in zip(order, order[1:])]
        self.stem = ScaleStem([num_channels * gr_factor[i] for i in order], strides, variant)
        sides = [stem_side(resolution, variant)]
        for stride in strides:
            sides.append(halve(sides[-1]) if stride == 2 else sides[-1])
        sides.reverse()

        self.num_classes = num_classes
        self.resolution = resolution
        flow_blocks = [num_blocks + block_step * i for i in range(num_flows)]
        flows, heads = [], []
        low_channels: list[list[int]] = []
        for i, scale in enumerate(scales):
            growth, width, side = growth_rate * gr_factor[i], num_channels * gr_factor[i], sides[i]
            fused = flow_blocks[i - 1] if i else 0
            # Step down one resolution at the end of the blocks where the last scale - 1 earlier flows end.
            downs = set(flow_blocks[i - scale + 1:i])
            transitions = {k * flow_blocks[i] // scale for k in range(1, scale)}
            blocks: list[nn.Module] = []
            next_low: list[list[int]] = []
            for j in range(flow_blocks[i]):
                steps = step if stepmode == "even" else step * (j + 1)
                red = reduction if j + 1 in transitions else None
                next_low.append([width + k * growth for k in range(steps + 1)])
                block: FusionBlock | DenseBlock
                if j < fused:
                    block = FusionBlock(width, low_channels[j], growth, bn_factor[i], bn_factor[i - 1], compress_factor,
                                        j + 1 in downs, red)
                    side = halve(side) if j + 1 in downs else side
                else:
                    block = DenseBlock(width, steps, growth, bn_factor[i], red)
                    ExitHead.check_input(side, f"flow {i} (scale_list={scales}) at resolution {resolution}")
                    heads.append(head_for(block.out_channels, num_classes, variant))
                blocks.append(block)
                width = block.out_channels
            flows.append(nn.ModuleList(blocks))
            low_channels = next_low
        self.flows = nn.ModuleList(flows)
        self.heads = nn.ModuleList(heads)
        init_weights(self)

    def start(self, x: Tensor) -> State:
        """The stem's maps, one per flow (coarsest first), and a cursor at flow 0, block 0."""
        return {"maps": list(reversed(self.stem(x))), "flow": 0, "block": 0, "h": None, "feats": [], "low": [],
                "exit": 0}

    def step(self, state: State, k: int) -> tuple[Tensor, State]:
        """Run blocks from the cursor up to and including the next one with an exit (exit ``k``)."""
        if k != state["exit"]:
            raise ValueError(f"RANet runs its exits in order: the state is at exit {state['exit']}, asked for {k}")
        s = dict(state)
        while True:
            flow = self.flows[s["flow"]]
            j = s["block"]
            if j == 0:  # take this flow's stem map out of the state: later steps need not carry it
                h, s["maps"] = s["maps"][s["flow"]], [*s["maps"][:s["flow"]], None, *s["maps"][s["flow"] + 1:]]
            else:
                h = s["h"]
            block = flow[j]
            exits = not isinstance(block, FusionBlock)
            h, f = block(h) if exits else block(h, s["low"][j])
            feats = [*s["feats"], f]
            if j + 1 == len(flow):  # the next flow fuses this one's features
                s.update(flow=s["flow"] + 1, block=0, h=None, feats=[], low=feats)
            else:
                s.update(block=j + 1, h=h, feats=feats)
            if exits:
                s["exit"] = k + 1
                if self.gradient_equilibrium:
                    h, s = split_exit(h, s, k, self.num_exits)
                return self.heads[k](h), s


register_with_presets("ranet", RANet, RANET_PRESETS)
