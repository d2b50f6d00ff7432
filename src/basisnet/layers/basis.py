"""Basis layers: a conv / linear layer whose weight is a per-input mix of N basis kernels.

``W(x) = sum_n alpha_n(x) * W_n``. The coefficients ``alpha`` come from outside (BasisNet's
lightweight model) or from a router (CondConv). Three execution paths give the same result:

- ``batched``: mix all samples' kernels with one matmul, fold the batch into the channel axis and
  run one grouped conv (the CondConv trick; a batched matmul for dense 1x1 convs). For training and
  batched inference with per-sample coefficients.
- ``synthesized``: mix once, run one plain conv. For batch 1 and for coefficients shared by a batch.
- ``loop``: one conv per sample. The reference the tests compare against, nothing else.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PATHS = ("batched", "synthesized", "loop")


class NonFiniteCoefficientsError(ValueError):
    """Coefficients with NaN or Inf: a diverged coefficient head upstream, not a shape mistake."""


class BasisMixer(nn.Module):
    """``coeffs @ bases`` as one matmul, in its own module so multiply-add counters report kernel
    synthesis as a line of its own (``<layer>.mixer``)."""

    def forward(self, coeffs: Tensor, bases: Tensor) -> Tensor:
        return (coeffs @ bases.flatten(1)).view(coeffs.shape[0], *bases.shape[1:])


class _BasisLayer(nn.Module):
    """Shared plumbing: the bases, coefficient checks, path choice."""

    weight: Tensor
    bias: Tensor | None

    def __init__(self, num_bases: int) -> None:
        super().__init__()
        if num_bases < 1:
            raise ValueError(f"{type(self).__name__}: num_bases must be >= 1, got {num_bases}")
        self.num_bases = num_bases
        self.mixer = BasisMixer()
        # Set by the model builder to the module's qualified name so errors say which layer.
        self.layer_name = type(self).__name__

    def _check_coeffs(self, coeffs: Tensor, batch: int) -> Tensor:
        n = self.num_bases
        if not isinstance(coeffs, Tensor):
            raise ValueError(f"{self.layer_name}: coefficients must be a Tensor of shape ({batch}, {n}) or ({n},)")
        ok = (coeffs.dim() == 1 and coeffs.shape[0] == n) or (
            coeffs.dim() == 2 and coeffs.shape[1] == n and coeffs.shape[0] in (1, batch)
        )
        if not ok:
            raise ValueError(
                f"{self.layer_name}: coefficients of shape {tuple(coeffs.shape)} do not fit; expected "
                f"({batch}, {n}) per sample or ({n},) shared by the batch (this layer has {n} bases)"
            )
        if not torch.isfinite(coeffs).all():
            raise NonFiniteCoefficientsError(f"{self.layer_name}: coefficients contain NaN or Inf")
        return coeffs.to(self.weight.dtype)

    def _choose_path(self, coeffs: Tensor, batch: int, path: str | None) -> str:
        shared = coeffs.dim() == 1 or coeffs.shape[0] == 1
        if path is None:
            return "synthesized" if shared else "batched"
        if path not in PATHS:
            raise ValueError(f"{self.layer_name}: unknown path {path!r}; choose one of {PATHS}")
        if path == "synthesized" and not shared and batch > 1:
            raise ValueError(f"{self.layer_name}: the synthesized path needs one coefficient vector for the batch")
        return path

    def _mix(self, coeffs: Tensor) -> tuple[Tensor, Tensor | None]:
        """Per-row weights (and biases) for coefficients of shape (R, N)."""
        weight = self.mixer(coeffs, self.weight)
        bias = self.mixer(coeffs, self.bias) if self.bias is not None else None
        return weight, bias

    def _mix_one(self, coeffs: Tensor) -> tuple[Tensor, Tensor | None]:
        weight, bias = self._mix(coeffs.reshape(1, self.num_bases))
        return weight[0], None if bias is None else bias[0]

    def synthesized_state(self, coeffs: Tensor) -> dict[str, Tensor]:
        """The concrete ``weight`` (and ``bias``) for one coefficient vector, as a plain layer's state."""
        coeffs = self._check_coeffs(coeffs, 1)
        with torch.no_grad():
            weight, bias = self._mix_one(coeffs)
        state = {"weight": weight.clone()}
        if bias is not None:
            state["bias"] = bias.clone()
        return state


def _init_bases_(weight: Tensor, bias: Tensor | None, fan_in: int) -> None:
    """Each basis like a freshly built ``nn.Conv2d`` / ``nn.Linear`` of that shape, independently."""
    for w in weight:
        nn.init.kaiming_uniform_(w, a=math.sqrt(5))
    if bias is not None:
        bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        nn.init.uniform_(bias, -bound, bound)


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


class BasisConv2d(_BasisLayer):
    """A 2-D convolution with ``num_bases`` kernels mixed per input (dense, depthwise or grouped)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        num_bases: int,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = False,
    ) -> None:
        super().__init__(num_bases)
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"BasisConv2d: in_channels ({in_channels}) and out_channels ({out_channels}) "
                f"must be divisible by groups ({groups})"
            )
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = _pair(kernel_size)
        self.stride, self.padding, self.dilation = _pair(stride), _pair(padding), _pair(dilation)
        shape = (num_bases, out_channels, in_channels // groups, *self.kernel_size)
        self.weight = nn.Parameter(torch.empty(shape))
        self.bias = nn.Parameter(torch.empty(num_bases, out_channels)) if bias else None
        _init_bases_(self.weight, self.bias, fan_in=shape[2] * shape[3] * shape[4])

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"num_bases={self.num_bases}, stride={self.stride}, padding={self.padding}, "
            f"dilation={self.dilation}, groups={self.groups}, bias={self.bias is not None}"
        )

    def _conv(self, x: Tensor, weight: Tensor, bias: Tensor | None, groups: int) -> Tensor:
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, groups)

    def _is_pointwise(self) -> bool:
        return (
            self.kernel_size == (1, 1)
            and self.stride == (1, 1)
            and self.padding == (0, 0)
            and self.groups == 1
        )

    def forward(self, x: Tensor, coeffs: Tensor, path: str | None = None) -> Tensor:
        batch = x.shape[0]
        coeffs = self._check_coeffs(coeffs, batch)
        path = self._choose_path(coeffs, batch, path)
        if path == "synthesized":
            return self._conv(x, *self._mix_one(coeffs), self.groups)
        coeffs = coeffs.reshape(-1, self.num_bases).expand(batch, -1)
        if path == "loop":
            return torch.cat([self._conv(x[i : i + 1], *self._mix_one(coeffs[i]), self.groups) for i in range(batch)])
        weight, bias = self._mix(coeffs)
        if self._is_pointwise():
            # Dense 1x1: a batched matmul over (out, in) x (in, H*W) beats a B-group conv on CPU.
            h, w = x.shape[-2:]
            out = torch.bmm(weight.flatten(1, 3).view(batch, self.out_channels, self.in_channels), x.flatten(2))
            out = out.view(batch, self.out_channels, h, w)
            return out if bias is None else out + bias[:, :, None, None]
        out = self._conv(
            x.reshape(1, -1, *x.shape[2:]),
            weight.reshape(-1, *weight.shape[2:]),
            None if bias is None else bias.reshape(-1),
            self.groups * batch,
        )
        return out.view(batch, self.out_channels, *out.shape[2:])

    def synthesize(self, coeffs: Tensor) -> nn.Conv2d:
        """A plain ``nn.Conv2d`` holding the kernel for one coefficient vector (deployment at batch 1)."""
        conv = nn.Conv2d(
            self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
            self.dilation, self.groups, bias=self.bias is not None,
        ).to(self.weight.device, self.weight.dtype)
        conv.load_state_dict(self.synthesized_state(coeffs))
        return conv


class BasisLinear(_BasisLayer):
    """A linear layer with ``num_bases`` weight matrices mixed per input."""

    def __init__(self, in_features: int, out_features: int, num_bases: int, bias: bool = True) -> None:
        super().__init__(num_bases)
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(num_bases, out_features, in_features))
        self.bias = nn.Parameter(torch.empty(num_bases, out_features)) if bias else None
        _init_bases_(self.weight, self.bias, fan_in=in_features)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, num_bases={self.num_bases}, bias={self.bias is not None}"

    def forward(self, x: Tensor, coeffs: Tensor, path: str | None = None) -> Tensor:
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"{self.layer_name}: expected input (batch, {self.in_features}), got {tuple(x.shape)}")
        batch = x.shape[0]
        coeffs = self._check_coeffs(coeffs, batch)
        path = self._choose_path(coeffs, batch, path)
        if path == "synthesized":
            return F.linear(x, *self._mix_one(coeffs))
        coeffs = coeffs.reshape(-1, self.num_bases).expand(batch, -1)
        if path == "loop":
            return torch.cat([F.linear(x[i : i + 1], *self._mix_one(coeffs[i])) for i in range(batch)])
        weight, bias = self._mix(coeffs)
        out = torch.bmm(weight, x.unsqueeze(-1)).squeeze(-1)
        return out if bias is None else out + bias

    def synthesize(self, coeffs: Tensor) -> nn.Linear:
        """A plain ``nn.Linear`` holding the weight for one coefficient vector."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        linear = linear.to(self.weight.device, self.weight.dtype)
        linear.load_state_dict(self.synthesized_state(coeffs))
        return linear


BASIS_LAYERS = (BasisConv2d, BasisLinear)
