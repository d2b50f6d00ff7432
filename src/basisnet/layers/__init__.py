"""Layers: basis conv/linear and the MobileNet building blocks (torch only)."""

from .basis import (
    BASIS_LAYERS,
    PATHS,
    BasisConv2d,
    BasisLinear,
    BasisMixer,
    NonFiniteCoefficientsError,
    check_finite_coefficients,
)
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
from .path_tuning import tune_paths

__all__ = [
    "ACTIVATIONS", "BASIS_LAYERS", "BLOCK_PARTS", "PATHS", "BasisConv2d", "BasisLinear", "BasisMixer", "NonFiniteCoefficientsError",
    "BlockSpec", "ConvNormAct", "InvertedResidual", "LinearAct", "Router", "SqueezeExcite", "make_divisible",
    "check_finite_coefficients", "to_channels_last", "tune_paths",
]

