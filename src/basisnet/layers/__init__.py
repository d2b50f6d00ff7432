"""Layers: basis conv/linear and the MobileNet building blocks (torch only)."""

from .basis import BASIS_LAYERS, PATHS, BasisConv2d, BasisLinear, BasisMixer
from .blocks import (
    ACTIVATIONS,
    BLOCK_PARTS,
    BlockSpec,
    ConvNormAct,
    InvertedResidual,
    LinearAct,
    Router,
    SqueezeExcite,
    make_divisible,
)

__all__ = [
    "ACTIVATIONS", "BASIS_LAYERS", "BLOCK_PARTS", "PATHS", "BasisConv2d", "BasisLinear", "BasisMixer",
    "BlockSpec", "ConvNormAct", "InvertedResidual", "LinearAct", "Router", "SqueezeExcite", "make_divisible",
]


def to_channels_last(module):
    """Channels-last for every 4-D parameter and buffer (``Module.to`` would choke on 5-D basis kernels)."""
    import torch

    for tensor in [*module.parameters(), *module.buffers()]:
        if tensor.dim() == 4:
            tensor.data = tensor.data.contiguous(memory_format=torch.channels_last)
    return module


__all__.append("to_channels_last")
