"""BatchNorm folded into BasisNet's basis kernels, for deployment graphs.

ONNX Runtime folds a BatchNorm into the conv before it only when the conv's weight is a constant; a
synthesized kernel is computed from the coefficients, so the BatchNorm would stay a node of its own
after every basis conv. Folding it into the bases instead keeps the graph as short as the static
twin's: each basis is scaled per output channel by ``gamma / sqrt(var + eps)`` (exact: mixing is
linear) and every basis gets the bias ``beta - mean * scale``, which mixes back to that same bias
because BasisNet's coefficients are a softmax (they sum to 1).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..layers import BasisConv2d, ConvNormAct
from ..models import BasisNet

__all__ = ["fold_basis_batchnorm"]


def fold_basis_batchnorm(model: BasisNet) -> BasisNet:
    """An eval-mode copy of ``model`` whose specialist's basis convs carry their BatchNorm (then Identity)."""
    if not isinstance(model, BasisNet):
        raise TypeError(f"fold_basis_batchnorm needs a BasisNet (softmax coefficients), got {type(model).__name__}")
    model = copy.deepcopy(model).eval()
    for module in model.specialist.modules():
        if not isinstance(module, ConvNormAct) or not isinstance(module[0], BasisConv2d):
            continue
        conv, norm = module[0], module[1]
        if not isinstance(norm, nn.BatchNorm2d):
            continue
        with torch.no_grad():
            scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
            shift = norm.bias - norm.running_mean * scale
            conv.weight.mul_(scale.view(1, -1, 1, 1, 1))
            bias = shift.expand(conv.num_bases, -1) if conv.bias is None else conv.bias * scale + shift
            conv.bias = nn.Parameter(bias.clone())
        module[1] = nn.Identity()
    model.specialist._packed = None
    return model
