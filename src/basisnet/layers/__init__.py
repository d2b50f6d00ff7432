"""Layers: basis conv/linear and the MobileNet building blocks (torch only)."""

from .basis import BASIS_LAYERS, PATHS, BasisConv2d, BasisLinear, BasisMixer, NonFiniteCoefficientsError
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
    to_channels_last,
)

__all__ = [
    "ACTIVATIONS", "BASIS_LAYERS", "BLOCK_PARTS", "PATHS", "BasisConv2d", "BasisLinear", "BasisMixer", "NonFiniteCoefficientsError",
    "BlockSpec", "ConvNormAct", "InvertedResidual", "LinearAct", "Router", "SqueezeExcite", "make_divisible",
    "to_channels_last",
]

