"""Basis layers: a conv / linear layer whose weight is a per-input mix of N basis kernels.

``W(x) = sum_n alpha_n(x) * W_n``. The coefficients ``alpha`` come from outside (BasisNet's
lightweight model) or from a router (CondConv). A layer is given ``LayerWeights`` of one row
(``basisnet.layers.weights``): ``MixingCoefficients`` it mixes itself, or ``SynthesizedKernels`` a
network mixed for all its layers at once, which the layer runs as one plain conv / linear. Execution
paths for coefficients, all giving the same result:

- ``synthesized``: mix once, run one plain conv. For batch 1 and for coefficients shared by a batch.
- ``matmul``: per-sample kernels, one batched matmul (dense 1x1 convs and linear layers), in the
  input's memory layout (channels_last stays channels_last, no copy).
- ``grouped``: per-sample kernels, the batch folded into the channel axis and one grouped conv (the
  CondConv trick; for a depthwise conv, one wider depthwise conv). A channels_last input is folded
  to (H, W, B*C) so the conv keeps its fast channels_last kernel.
- ``grouped_aten`` (depthwise only): the same forward as ``grouped``, with autograd's own conv
  backward instead of the layer's (faster for 3x3 kernels on large maps, much slower for 5x5).
- ``mix_outputs``: every basis kernel applied, then the outputs mixed per sample (N times the
  conv's multiply-adds). Never the fastest; the one formulation whose graph keeps the batch
  dynamic (ONNX freezes a grouped conv's group count), so dynamic-batch exports use it.
- ``loop``: one conv per sample. The reference the tests compare against; at small batches it can
  also be the fastest, which ``tune_paths`` finds out by timing.

``batched`` (the default for per-sample coefficients) is the path the coefficients' ``ExecutionPolicy``
chooses (``basisnet.layers.execution``): by default ``matmul`` for dense 1x1 convs and ``grouped`` for
the rest, or what ``tune_paths`` measured fastest, or an exporter's form. The layer keeps no choice of
its own. The forward has no host sync: finiteness of coefficients is checked once per network forward,
where they enter (``check_finite_coefficients``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .execution import ExecutionPolicy, channels_last
from .weights import LayerWeights, MixingCoefficients, SynthesizedKernels

PATHS = ("batched", "synthesized", "matmul", "grouped", "grouped_aten", "mix_outputs", "loop")
# Paths whose forward is another path's: only worth timing where gradients flow.
BACKWARD_VARIANTS = {"grouped_aten": "grouped"}


class NonFiniteCoefficientsError(ValueError):
    """Coefficients with NaN or Inf: a diverged coefficient head upstream, not a shape mistake."""


def check_finite_coefficients(coeffs: Tensor, where: str) -> None:
    """Raise ``NonFiniteCoefficientsError`` for NaN/Inf coefficients of CPU tensors.

    Once per network forward, not per layer: it reads a value on the host. Skipped while compiling and
    for accelerator tensors (a sync per step would stall the device; there a diverged head shows up
    as a non-finite loss, which training stops on)."""
    if coeffs.device.type != "cpu" or torch.compiler.is_compiling():
        return
    if not torch.isfinite(coeffs).all():
        raise NonFiniteCoefficientsError(f"{where}: coefficients contain NaN or Inf")


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
        # Set by the model builder to the module's qualified name so errors (and policies) say which layer.
        self.layer_name = type(self).__name__

    def per_sample_paths(self) -> tuple[str, ...]:
        """The per-sample paths this layer can run, the default first."""
        return ("matmul", "loop")

    def _one_row(self, weights: LayerWeights) -> None:
        if not isinstance(weights, (MixingCoefficients, SynthesizedKernels)):
            raise TypeError(f"{self.layer_name}: weights must be MixingCoefficients or SynthesizedKernels, got "
                            f"{type(weights).__name__} (one layer's coefficients: MixingCoefficients.of_layer(coeffs))")
        if weights.num_layers != 1:
            raise ValueError(f"{self.layer_name}: given the weights of {weights.num_layers} layers; a basis layer "
                             "takes one row")

    def _check_coeffs(self, coeffs: Tensor, batch: int) -> Tensor:
        """Shape checks only (no host sync: values are checked where coefficients enter the network)."""
        n = self.num_bases
        ok = (coeffs.dim() == 1 and coeffs.shape[0] == n) or (
            coeffs.dim() == 2 and coeffs.shape[1] == n and coeffs.shape[0] in (1, batch)
        )
        if not ok:
            raise ValueError(
                f"{self.layer_name}: coefficients of shape {tuple(coeffs.shape)} do not fit; expected "
                f"({batch}, {n}) per sample or ({n},) shared by the batch (this layer has {n} bases)"
            )
        return coeffs.to(self.weight.dtype)

    def _choose_path(self, coeffs: Tensor, x: Tensor, path: str | None, policy: ExecutionPolicy) -> str:
        batch = x.shape[0]
        shared = coeffs.dim() == 1 or coeffs.shape[0] == 1
        if path is None:
            if shared:
                return "synthesized"
            path = "batched"
        if path not in PATHS:
            raise ValueError(f"{self.layer_name}: unknown path {path!r}; choose one of {PATHS}")
        if path == "synthesized" and not shared and batch > 1:
            raise ValueError(f"{self.layer_name}: the synthesized path needs one coefficient vector for the batch")
        if path == "batched":
            path = policy.path(self, x)
        if path != "synthesized" and path not in (*self.per_sample_paths(), self.dynamic_batch_path()):
            raise ValueError(f"{self.layer_name}: path {path!r} does not apply; choose one of "
                             f"{('synthesized', *self.per_sample_paths())}")
        return path

    def dynamic_batch_path(self) -> str:
        """The per-sample path whose traced graph works at any batch size."""
        return "matmul"

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
        check_finite_coefficients(coeffs, self.layer_name)
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

    @property
    def is_pointwise(self) -> bool:
        """A dense 1x1 conv at stride 1 without padding: a matmul over channels."""
        return (
            self.kernel_size == (1, 1)
            and self.stride == (1, 1)
            and self.padding == (0, 0)
            and self.groups == 1
        )

    @property
    def is_depthwise(self) -> bool:
        """One group per channel, as many out as in."""
        return self.groups == self.in_channels == self.out_channels

    def dynamic_batch_path(self) -> str:
        return "matmul" if self.is_pointwise else "mix_outputs"

    def per_sample_paths(self) -> tuple[str, ...]:
        if self.is_pointwise:
            return ("matmul", "grouped", "loop")
        return ("grouped", "grouped_aten", "loop") if self.is_depthwise else ("grouped", "loop")

    def forward(self, x: Tensor, weights: LayerWeights, path: str | None = None) -> Tensor:
        """``weights``: this layer's row; ``path`` overrides the policy's choice for coefficients."""
        self._one_row(weights)
        if isinstance(weights, SynthesizedKernels):
            return self._conv(x, *weights.kernel(), self.groups)
        batch = x.shape[0]
        coeffs = self._check_coeffs(weights.layer_coeffs(), batch)
        path = self._choose_path(coeffs, x, path, weights.policy)
        if path == "synthesized":
            return self._conv(x, *self._mix_one(coeffs), self.groups)
        coeffs = coeffs.reshape(-1, self.num_bases).expand(batch, -1)
        if path == "loop":
            return torch.cat([self._conv(x[i : i + 1], *self._mix_one(coeffs[i]), self.groups) for i in range(batch)])
        if path == "mix_outputs":
            return self._mix_outputs(x, coeffs)
        weight, bias = self._mix(coeffs)
        out = self._matmul(x, weight) if path == "matmul" else self._grouped(x, weight, path == "grouped")
        return out if bias is None else out + bias[:, :, None, None]

    def _matmul(self, x: Tensor, weight: Tensor) -> Tensor:
        """Dense 1x1 as (B, out, in) x (B, in, H*W), or transposed for channels_last: no layout change."""
        batch, _, h, w = x.shape
        weight = weight.view(batch, self.out_channels, self.in_channels)
        if channels_last(x):
            out = torch.bmm(x.permute(0, 2, 3, 1).reshape(batch, h * w, self.in_channels), weight.transpose(1, 2))
            return out.view(batch, h, w, self.out_channels).permute(0, 3, 1, 2)
        return torch.bmm(weight, x.flatten(2)).view(batch, self.out_channels, h, w)

    def _mix_outputs(self, x: Tensor, coeffs: Tensor) -> Tensor:
        """All N kernels as one conv (per group: N stacked outputs), then the outputs mixed per sample."""
        n, g = self.num_bases, self.groups
        per_group = self.out_channels // g
        # (N, out, in/g, k, k) -> (g, N, out/g, ...) -> one conv with N * out channels
        weight = self.weight.view(n, g, per_group, *self.weight.shape[2:]).transpose(0, 1).reshape(
            n * self.out_channels, *self.weight.shape[2:])
        out = self._conv(x, weight, None, g)
        out = out.view(x.shape[0], g, n, per_group, *out.shape[2:])
        out = torch.einsum("bgnchw,bn->bgchw", out, coeffs).reshape(x.shape[0], self.out_channels, *out.shape[-2:])
        if self.bias is not None:
            out = out + (coeffs @ self.bias)[:, :, None, None]
        return out

    def _grouped(self, x: Tensor, weight: Tensor, own_backward: bool = True) -> Tensor:
        """One conv with ``groups * batch`` groups over the batch folded into channels (a depthwise
        conv: with its own backward unless ``own_backward`` is off)."""
        batch = x.shape[0]
        weight = weight.reshape(-1, *weight.shape[2:])
        if own_backward and self.is_depthwise:
            return _FoldedDepthwise.apply(x, weight, self.stride, self.padding, self.dilation)
        out = self._conv(_fold(x), weight, None, self.groups * batch)
        return _unfold(out, batch, like=x)

    def synthesize(self, coeffs: Tensor) -> nn.Conv2d:
        """A plain ``nn.Conv2d`` holding the kernel for one coefficient vector (deployment at batch 1)."""
        conv = nn.Conv2d(
            self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
            self.dilation, self.groups, bias=self.bias is not None,
        ).to(self.weight.device, self.weight.dtype)
        conv.load_state_dict(self.synthesized_state(coeffs))
        return conv


def _fold(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (1, B*C, H, W); a channels_last input is folded as (H, W, B*C) so the conv that
    follows keeps its fast channels_last kernel (NCHW: a free view)."""
    batch, channels, h, w = x.shape
    if channels_last(x):
        return x.permute(2, 3, 0, 1).reshape(1, h, w, batch * channels).permute(0, 3, 1, 2)
    return x.reshape(1, batch * channels, h, w)


def _unfold(out: Tensor, batch: int, like: Tensor) -> Tensor:
    """(1, B*C, H, W) -> (B, C, H, W) in the memory layout of ``like``."""
    channels, (h, w) = out.shape[1] // batch, out.shape[2:]
    if channels_last(like):
        out = out.permute(0, 2, 3, 1).reshape(h, w, batch, channels)
        return out.permute(2, 0, 1, 3).contiguous().permute(0, 3, 1, 2)
    return out.reshape(batch, channels, h, w)


class _FoldedDepthwise(torch.autograd.Function):
    """Depthwise conv with a kernel per (sample, channel), as one wide depthwise conv.

    Autograd's own backward of that conv is slow on CPU (oneDNN: many times the forward for 5x5 kernels
    in channels_last), so the backward is written out as two more depthwise convs on the NCHW fold:
    the input gradient is the transposed conv, the kernel gradient a correlation of the padded input
    with the output gradient (dilated by the stride)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, stride: tuple, padding: tuple, dilation: tuple) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.conf = (stride, padding, dilation)
        groups = weight.shape[0]
        return _unfold(F.conv2d(_fold(x), weight, None, stride, padding, dilation, groups), x.shape[0], like=x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        stride, padding, dilation = ctx.conf
        groups = weight.shape[0]
        g = grad.contiguous().view(1, groups, *grad.shape[2:])
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            folded = (1, groups, *x.shape[2:])
            grad_x = torch.nn.grad.conv2d_input(folded, weight, g, stride, padding, dilation, groups)
            grad_x = grad_x.view(x.shape).contiguous(memory_format=_layout(x))
        if ctx.needs_input_grad[1]:
            kernel = g.view(groups, 1, *g.shape[2:])
            grad_w = F.conv2d(x.contiguous().view(1, groups, *x.shape[2:]), kernel, None, dilation, padding, stride,
                              groups)
            grad_w = grad_w[..., : weight.shape[2], : weight.shape[3]].reshape(weight.shape)
        return grad_x, grad_w, None, None, None


def _layout(x: Tensor) -> torch.memory_format:
    return torch.channels_last if channels_last(x) else torch.contiguous_format


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

    # A linear layer is a dense 1x1 conv on a 1x1 map.
    is_pointwise = True
    is_depthwise = False

    def forward(self, x: Tensor, weights: LayerWeights, path: str | None = None) -> Tensor:
        """``weights``: this layer's row; ``path`` overrides the policy's choice for coefficients."""
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"{self.layer_name}: expected input (batch, {self.in_features}), got {tuple(x.shape)}")
        self._one_row(weights)
        if isinstance(weights, SynthesizedKernels):
            return F.linear(x, *weights.kernel())
        batch = x.shape[0]
        coeffs = self._check_coeffs(weights.layer_coeffs(), batch)
        path = self._choose_path(coeffs, x, path, weights.policy)
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
