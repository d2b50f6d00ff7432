"""MSDNet (Huang et al., ICLR 2018): a multi-scale dense network with an exit after every block.

Our own implementation of the architecture of the official code (github.com/kalviny/MSDNet-PyTorch):
the same layers, channel widths, scale pruning, transitions and classifier heads, so parameter counts
and multiply-adds match it, and so do the logits once its weights are copied in. Option names are
snake_case versions of its flags (``num_blocks`` = ``--nBlocks``, ``num_channels`` = ``--nChannels``,
``growth_rate``, ``gr_factor``, ``bn_factor``, ``base``, ``step``, ``stepmode``, ``prune``, ``reduction``);
``variant`` stands for its ``--data`` switch between the CIFAR and ImageNet stems and heads. Exit k runs
blocks 1..k whole, as the official forward does.

Multiply-adds: ``basisnet.evaluate.exit_madds`` counts convolutions and linear layers only (FLOPs / 2
of ``FlopCounterMode``). The official ``op_counter.py`` also adds one op per ReLU output element, per
pooling window element and per linear bias, so its figures are 0.5-1.2% higher on the CIFAR configs
(and 0.5-0.8% on ImageNet). The CIFAR-100 MSDNet (10 blocks, step 2, base 4) counts 14.97M at exit 1
and 121.09M at exit 10 here against 15.14M and 121.68M there; RANet's CIFAR config (``ranet``) 15.75M
and 94.34M against 15.83M and 95.00M. Restricted to conv + linear, their counter gives exactly ours.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from ..layers import ConvNormAct
from ..layers.densenet import (DenseLayer, ExitHead, ScaleStem, bottleneck_conv, check_factors, check_variant,
                               concat_channels, halve, head_for, init_weights, stem_side)
from .equilibrium import SharedTrunkHooks, split_exit
from .protocol import State
from .registry import register_model
from .staged import StagedMultiExit

STEPMODES = ("even", "lin_grow")
PRUNE_MODES = ("max", "min")

# The constructor defaults are the CIFAR config; explicit options override a preset's values.
MSDNET_PRESETS: dict[str, dict[str, Any]] = {
    "cifar": {},
    # The official README's ImageNet model (5 blocks, step 4).
    "imagenet": dict(num_classes=1000, resolution=224, variant="imagenet", num_blocks=5, base=4, step=4,
                     num_channels=32, growth_rate=16, gr_factor=(1, 2, 4, 4), bn_factor=(1, 2, 4, 4)),
}


class DownNormal(nn.Module):
    """MSDNet's layer at a scale below the finest: keep the input, add half of the new features from
    the finer scale (strided 3x3) and half from this scale (3x3)."""

    def __init__(self, finer_channels: int, channels: int, growth: int, finer_bn_width: int, bn_width: int) -> None:
        super().__init__()
        self.down = bottleneck_conv(finer_channels, growth // 2, finer_bn_width, stride=2)
        self.normal = bottleneck_conv(channels, growth // 2, bn_width)

    def forward(self, finer: Tensor, x: Tensor) -> Tensor:
        return concat_channels([x, self.down(finer), self.normal(x)])


class MultiScaleLayer(nn.Module):
    """One MSDNet layer: ``growth * gr_factor[s]`` new channels at each of the ``out_scales`` coarsest scales.

    A layer with one input scale more than it outputs drops the finest map, which then only feeds the
    next scale's strided conv.
    """

    def __init__(self, in_channels: int, growth: int, gr_factor: Sequence[int], bn_factor: Sequence[int],
                 in_scales: int, out_scales: int) -> None:
        super().__init__()
        n = len(gr_factor)
        self.dropped = in_scales - out_scales
        convs: list[nn.Module] = []
        for s in range(n - out_scales, n):
            if s == n - out_scales and not self.dropped:
                convs.append(DenseLayer(in_channels * gr_factor[s], growth * gr_factor[s], bn_factor[s]))
            else:
                convs.append(DownNormal(in_channels * gr_factor[s - 1], in_channels * gr_factor[s],
                                        growth * gr_factor[s], bn_factor[s - 1], bn_factor[s]))
        self.convs = nn.ModuleList(convs)

    def forward(self, maps: list[Tensor]) -> list[Tensor]:
        out = []
        for j, conv in enumerate(self.convs):
            i = j + self.dropped
            out.append(conv(maps[i - 1], maps[i]) if i else conv(maps[0]))
        return out


class ScaleTransition(nn.ModuleList):
    """1x1 conv-BN-ReLU at every scale: compress each map to ``out_channels * gr_factor[s]`` channels."""

    def __init__(self, in_channels: int, out_channels: int, gr_factor: Sequence[int]) -> None:
        super().__init__(ConvNormAct(in_channels * g, out_channels * g, 1) for g in gr_factor)

    def forward(self, maps: list[Tensor]) -> list[Tensor]:
        return [conv(x) for conv, x in zip(self, maps)]


def scale_range(prune: str, num_scales: int, total_layers: int, layer: int) -> tuple[int, int]:
    """(input scales, output scales) of layer ``layer`` (1-based) of ``total_layers``.

    "max" drops the finest scale evenly along the depth; "min" keeps every scale until the last
    layers, which keep only what the final coarsest map still needs.
    """
    if prune == "max":
        interval = -(-total_layers // num_scales)
        return num_scales - max(0, layer - 2) // interval, num_scales - (layer - 1) // interval
    return min(num_scales, total_layers - layer + 2), min(num_scales, total_layers - layer + 1)


def compressed(channels: int, reduction: float) -> int:
    """Width after a transition; an empty output is a config error."""
    out = math.floor(reduction * channels)
    if out < 1:
        raise ValueError(f"reduction={reduction} compresses {channels} channels to none")
    return out


class MSDNet(SharedTrunkHooks, StagedMultiExit):
    """Multi-scale dense network; defaults: a CIFAR-100 anytime model (10 blocks, step 2, base 4).

    Args:
        num_classes: classifier outputs.
        resolution: the input side the network is meant for (checked: every exit needs a map the
            head can halve twice); used to count multiply-adds.
        variant: "cifar" (3x3 stem, 128-wide heads) or "imagenet" (7x7/2 stem + max-pool, heads as
            wide as their input).
        num_blocks: blocks, one exit each.
        base: layers in the first block.
        step: layers per later block ("even") or its slope ("lin_grow": block i has ``step * i + 1``).
        stepmode: "even" or "lin_grow".
        num_channels: channels of the finest scale after the stem (times ``gr_factor``).
        growth_rate: new channels per layer at the finest scale (times ``gr_factor``).
        gr_factor: width multiplier per scale, finest first; its length is the number of scales.
        bn_factor: bottleneck width (times the new channels) per scale.
        prune: "max" or "min" scale pruning (see ``scale_range``).
        reduction: transition compression; 0 turns transitions off.
    """

    def __init__(
        self,
        num_classes: int = 100,
        resolution: int = 32,
        variant: str = "cifar",
        num_blocks: int = 10,
        base: int = 4,
        step: int = 2,
        stepmode: str = "even",
        num_channels: int = 16,
        growth_rate: int = 6,
        gr_factor: Sequence[int] = (1, 2, 4),
        bn_factor: Sequence[int] = (1, 2, 4),
        prune: str = "max",
        reduction: float = 0.5,
    ) -> None:
        super().__init__()
        check_variant(variant)
        if stepmode not in STEPMODES:
            raise ValueError(f"unknown stepmode {stepmode!r}; choose one of {STEPMODES}")
        if prune not in PRUNE_MODES:
            raise ValueError(f"unknown prune {prune!r}; choose one of {PRUNE_MODES}")
        if min(num_classes, resolution, num_blocks, base, num_channels, growth_rate) < 1 or step < 0:
            raise ValueError("num_classes, resolution, num_blocks, base, num_channels and growth_rate must be >= 1 "
                             f"and step >= 0; got {num_classes}, {resolution}, {num_blocks}, {base}, {num_channels}, "
                             f"{growth_rate}, {step}")
        if not gr_factor:
            raise ValueError("gr_factor needs one entry per scale; got none")
        num_scales = len(gr_factor)
        check_factors(num_scales, gr_factor=gr_factor, bn_factor=bn_factor)
        odd = [s for s in range(1, num_scales) if growth_rate * gr_factor[s] % 2]
        if odd:
            raise ValueError(f"growth_rate * gr_factor must be even at scales {odd}: their new features come half "
                             "from the finer scale and half from their own")
        if not 0.0 <= reduction <= 1.0:
            raise ValueError(f"reduction must be in [0, 1], got {reduction}")
        steps = [base] + [step if stepmode == "even" else step * i + 1 for i in range(1, num_blocks)]
        if min(steps) < 1:
            raise ValueError(f"every block needs a layer; step={step} gives blocks of {steps} layers")
        side = stem_side(resolution, variant)
        for _ in range(num_scales - 1):
            side = halve(side)
        ExitHead.check_input(side, f"the coarsest of {num_scales} scales at resolution {resolution}")

        self.num_classes = num_classes
        self.resolution = resolution
        total, layer, channels = sum(steps), 0, num_channels
        blocks, heads = [], []
        for i, n_layers in enumerate(steps):
            modules: list[nn.Module] = []
            if i == 0:
                modules.append(ScaleStem([num_channels * g for g in gr_factor], [2] * (num_scales - 1), variant))
            for _ in range(n_layers):
                layer += 1
                in_scales, out_scales = scale_range(prune, num_scales, total, layer)
                modules.append(MultiScaleLayer(channels, growth_rate, gr_factor, bn_factor, in_scales, out_scales))
                channels += growth_rate
                at_transition = in_scales > out_scales if prune == "max" else layer in (total // 3, 2 * total // 3)
                if reduction > 0 and at_transition:
                    out = compressed(channels, reduction)
                    modules.append(ScaleTransition(channels, out, gr_factor[num_scales - out_scales:]))
                    channels = out
            blocks.append(nn.Sequential(*modules))
            heads.append(head_for(channels * gr_factor[-1], num_classes, variant))
        self.blocks = nn.ModuleList(blocks)
        self.heads = nn.ModuleList(heads)
        init_weights(self)

    def step(self, state: State, k: int) -> tuple[Tensor, State]:
        """Block ``k`` (block 0 holds the stem) on the maps of block ``k - 1``, then its exit."""
        maps = self.blocks[k](state)
        feature = maps[-1]
        if self.gradient_equilibrium:
            feature, maps = split_exit(feature, maps, k, self.num_exits)
        return self.heads[k](feature), maps


def register_with_presets(name: str, cls: type[nn.Module], presets: Mapping[str, Mapping[str, Any]],
                          default: str = "cifar") -> None:
    """Register ``cls`` with one extra option, ``preset``: a standard config that explicit options override."""

    def build(preset: str = default, **options: Any) -> nn.Module:
        if preset not in presets:
            raise ValueError(f"model {name!r} has no preset {preset!r}; choose one of {sorted(presets)}")
        return cls(**{**presets[preset], **options})

    # The registry reads the accepted options from this signature: the class's plus ``preset``.
    params = [*inspect.signature(cls).parameters.values(),
              inspect.Parameter("preset", inspect.Parameter.KEYWORD_ONLY, default=default)]
    build.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    build.__name__ = name
    build.__doc__ = f"{cls.__name__} from a preset ({', '.join(presets)}); explicit options override its values."
    register_model(name, build, model_class=cls)


register_with_presets("msdnet", MSDNet, MSDNET_PRESETS)
