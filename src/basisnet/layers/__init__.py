"""Layers: basis conv/linear, the weights they are given, how they execute, and the MobileNet building
blocks (torch only)."""

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
from .execution import ExecutionPolicy, ForcedPath, TunedPaths, current_policy, execution_policy
from .path_tuning import tune_paths
from .weights import Kernel, LayerWeights, MixingCoefficients, SynthesizedKernels

__all__ = [
    "ACTIVATIONS", "BASIS_LAYERS", "BLOCK_PARTS", "PATHS", "BasisConv2d", "BasisLinear", "BasisMixer", "NonFiniteCoefficientsError",
    "BlockSpec", "ConvNormAct", "ExecutionPolicy", "ForcedPath", "InvertedResidual", "Kernel", "LayerWeights",
    "LinearAct", "MixingCoefficients", "Router", "SqueezeExcite", "SynthesizedKernels", "TunedPaths",
    "check_finite_coefficients", "current_policy", "execution_policy", "make_divisible", "to_channels_last",
    "tune_paths",
]
