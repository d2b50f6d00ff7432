"""MobileNetV2 / V3 described as block tables, built by one builder, static or with basis layers.

The tables follow the papers (and torchvision's ``mobilenetv3.py``). A network is a one-exit
multi-exit classifier: ``forward`` returns ``[logits]``. With ``num_bases > 0`` the chosen convs are
basis layers and ``forward(x, coeffs)`` takes coefficients of shape (B, L, N) or (L, N), one row per
basis layer in network order (``num_basis_layers`` = L); with ``routing=True`` each block computes
its own (CondConv) and no coefficients are passed. Where the coefficients enter, the network turns them
into its layers' ``LayerWeights`` once (``layer_weights``): the kernels synthesized at once where the
caller's ``ExecutionPolicy`` fuses, else the coefficients, which each layer mixes on the policy's path.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..layers import (
    BASIS_LAYERS,
    BLOCK_PARTS,
    BlockSpec,
    ConvNormAct,
    InvertedResidual,
    LinearAct,
    LayerWeights,
    MixingCoefficients,
    check_finite_coefficients,
    make_divisible,
)
from ..layers.synthesis import PackedBases, PackedMixer
from .protocol import State, exits_to_run
from .registry import register_model

NETWORK_PARTS = ("stem", *BLOCK_PARTS, "last", "classifier")
DEFAULT_BASIS_PARTS = BLOCK_PARTS


@dataclass(frozen=True)
class ArchSpec:
    """A whole MobileNet as data: stem, block table, last conv and classifier head."""

    stem: int
    stem_act: str
    blocks: tuple[BlockSpec, ...]
    last_conv: int
    last_act: str
    head_hidden: int | None  # MobileNetV3's extra linear layer before the classifier
    keep_last_width: bool = False  # MobileNetV2 never shrinks its 1280-channel last conv


def _v3(rows: Sequence[tuple[int, int, int, bool, str, int]]) -> tuple[BlockSpec, ...]:
    return tuple(BlockSpec(*row) for row in rows)


def _v2(rows: Sequence[tuple[int, int, int, int]], stem: int) -> tuple[BlockSpec, ...]:
    """Expand MobileNetV2's (t, c, n, s) table into one row per block."""
    blocks, in_ch = [], stem
    for t, c, n, s in rows:
        for i in range(n):
            blocks.append(BlockSpec(3, in_ch * t, c, False, "R6", s if i == 0 else 1))
            in_ch = c
    return tuple(blocks)


ARCHS: dict[str, ArchSpec] = {
    # kernel, expanded, out, SE, activation, stride
    "mobilenetv3_large": ArchSpec(16, "HS", _v3([
        (3, 16, 16, False, "RE", 1),
        (3, 64, 24, False, "RE", 2),
        (3, 72, 24, False, "RE", 1),
        (5, 72, 40, True, "RE", 2),
        (5, 120, 40, True, "RE", 1),
        (5, 120, 40, True, "RE", 1),
        (3, 240, 80, False, "HS", 2),
        (3, 200, 80, False, "HS", 1),
        (3, 184, 80, False, "HS", 1),
        (3, 184, 80, False, "HS", 1),
        (3, 480, 112, True, "HS", 1),
        (3, 672, 112, True, "HS", 1),
        (5, 672, 160, True, "HS", 2),
        (5, 960, 160, True, "HS", 1),
        (5, 960, 160, True, "HS", 1),
    ]), last_conv=960, last_act="HS", head_hidden=1280),
    "mobilenetv3_small": ArchSpec(16, "HS", _v3([
        (3, 16, 16, True, "RE", 2),
        (3, 72, 24, False, "RE", 2),
        (3, 88, 24, False, "RE", 1),
        (5, 96, 40, True, "HS", 2),
        (5, 240, 40, True, "HS", 1),
        (5, 240, 40, True, "HS", 1),
        (5, 120, 48, True, "HS", 1),
        (5, 144, 48, True, "HS", 1),
        (5, 288, 96, True, "HS", 2),
        (5, 576, 96, True, "HS", 1),
        (5, 576, 96, True, "HS", 1),
    ]), last_conv=576, last_act="HS", head_hidden=1024),
    # t, c, n, s
    "mobilenetv2": ArchSpec(32, "R6", _v2([
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    ], stem=32), last_conv=1280, last_act="R6", head_hidden=None, keep_last_width=True),
}


class MobileNet(nn.Module):
    """A MobileNet from an ``ArchSpec``: the one builder for every variant.

    Args:
        arch: key of ``ARCHS`` or an ``ArchSpec``.
        width: channel multiplier (channels rounded to multiples of 8).
        num_classes: classifier outputs.
        resolution: the input side the network is meant for; used to count multiply-adds.
        drop_strides: how many of the first stride-2 steps (stem first) run at stride 1 instead;
            2 suits 32x32 CIFAR images (final map 4x4 instead of 1x1).
        num_bases: N; 0 builds a static network.
        basis_parts: which convs are basis layers: any of ``NETWORK_PARTS``.
        routing: CondConv: each block routes its own coefficients from its input.
        dropout: before the classifier.
        norm_eps: BatchNorm epsilon (torchvision's MobileNetV3 uses 1e-3; imported weights need their own).
    """

    num_exits = 1

    def __init__(
        self,
        arch: str | ArchSpec = "mobilenetv3_large",
        width: float = 1.0,
        num_classes: int = 1000,
        resolution: int = 224,
        drop_strides: int = 0,
        num_bases: int = 0,
        basis_parts: Sequence[str] = DEFAULT_BASIS_PARTS,
        routing: bool = False,
        dropout: float = 0.2,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if isinstance(arch, str):
            if arch not in ARCHS:
                raise ValueError(f"unknown architecture {arch!r}; choose one of {sorted(ARCHS)}")
            spec = ARCHS[arch]
        else:
            spec = arch
        if width <= 0:
            raise ValueError(f"width must be > 0, got {width}")
        if num_classes < 1 or resolution < 1 or num_bases < 0 or drop_strides < 0:
            raise ValueError(
                f"need num_classes >= 1, resolution >= 1, num_bases >= 0, drop_strides >= 0; got "
                f"{num_classes}, {resolution}, {num_bases}, {drop_strides}"
            )
        unknown = set(basis_parts) - set(NETWORK_PARTS)
        if unknown:
            raise ValueError(f"unknown basis_parts {sorted(unknown)}; choose from {NETWORK_PARTS}")
        if routing and set(basis_parts) - set(BLOCK_PARTS):
            raise ValueError("routing (CondConv) applies to block convs only: basis_parts must be within "
                             f"{BLOCK_PARTS}")
        self.config = dict(
            arch=arch, width=width, num_classes=num_classes, resolution=resolution, drop_strides=drop_strides,
            num_bases=num_bases, basis_parts=tuple(basis_parts), routing=routing, dropout=dropout,
            norm_eps=norm_eps,
        )
        self.resolution = resolution
        self.num_classes = num_classes

        def bases(part: str) -> int:
            return num_bases if part in basis_parts and not routing else 0

        def ch(c: int) -> int:
            return make_divisible(c * width)

        strides_left = drop_strides

        def stride(s: int) -> int:
            nonlocal strides_left
            if s == 2 and strides_left > 0:
                strides_left -= 1
                return 1
            return s

        self.stem = ConvNormAct(3, ch(spec.stem), 3, stride(2), act=spec.stem_act, num_bases=bases("stem"))
        in_ch = ch(spec.stem)
        blocks = []
        for row in spec.blocks:
            blocks.append(InvertedResidual(
                in_ch, ch(row.expanded), ch(row.out), row.kernel, stride(row.stride), row.se, row.act,
                num_bases=num_bases, basis_parts=[p for p in basis_parts if p in BLOCK_PARTS], routing=routing,
            ))
            in_ch = ch(row.out)
        if strides_left:
            raise ValueError(f"drop_strides={drop_strides} exceeds the {drop_strides - strides_left} stride-2 steps")
        self.blocks = nn.ModuleList(blocks)
        last = make_divisible(spec.last_conv * (max(width, 1.0) if spec.keep_last_width else width))
        self.last_conv = ConvNormAct(in_ch, last, 1, act=spec.last_act, num_bases=bases("last"))
        self.num_features = last
        head = []
        if spec.head_hidden:
            hidden = ch(spec.head_hidden)
            head.append(LinearAct(last, hidden, spec.last_act, num_bases=bases("classifier")))
            last = hidden
        head.append(LinearAct(last, num_classes, None, num_bases=bases("classifier")))
        self.head = nn.ModuleList(head)
        self.dropout = nn.Dropout(dropout)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eps = norm_eps
        _init_weights(self)
        name_basis_layers(self)
        # Fixed once built; counted here, not per forward (at batch 1 walking the modules costs as much
        # as a conv layer).
        self.num_basis_layers = sum(m.num_basis_layers for m in self._coeff_users())
        self._basis_layers = tuple(m for m in self.modules() if isinstance(m, BASIS_LAYERS))
        # One fused synthesis for a shared coefficient set where the policy fuses (a packed copy of the
        # bases, rebuilt when they change); per-layer mixing where gradients flow or coefficients differ per image.
        self.mixer = PackedMixer() if self.num_basis_layers else None
        self._packed: PackedBases | None = None

    def _coeff_users(self) -> Iterator[nn.Module]:
        yield self.stem
        yield from self.blocks
        yield self.last_conv
        yield from self.head

    def basis_layers_per_block(self) -> list[int]:
        """Coefficient rows per coefficient-consuming module, in order (for per-block sharing)."""
        return [n for n in (m.num_basis_layers for m in self._coeff_users()) if n]

    def _check_coeffs(self, x: Tensor, coeffs: Tensor | None) -> None:
        layers = self.num_basis_layers
        if layers == 0:
            if coeffs is not None:
                raise ValueError("this network has no externally driven basis layers; pass coeffs=None")
            return
        if coeffs is None or coeffs.dim() not in (2, 3) or coeffs.shape[-2] != layers:
            shape = None if coeffs is None else tuple(coeffs.shape)
            raise ValueError(
                f"coefficients of shape {shape} do not fit: expected ({x.shape[0]}, {layers}, "
                f"{self.config['num_bases']}) or ({layers}, {self.config['num_bases']})"
            )
        check_finite_coefficients(coeffs, type(self).__name__)

    def packed_bases(self) -> PackedBases:
        """The packed copy of the bases for the fused synthesis, rebuilt if a parameter changed since.
        While tracing (compile, export) the copy made before is taken as it is: a constant of the graph."""
        tracing = torch.compiler.is_compiling() or torch.compiler.is_exporting()
        if self._packed is None or (not tracing and not self._packed.matches(self._basis_layers)):
            self._packed = PackedBases(self._basis_layers)
        return self._packed

    def layer_weights(self, x: Tensor, coeffs: Tensor | None) -> LayerWeights | None:
        """The checked coefficients as the layers' weights: the kernels of every layer synthesized at once
        where the caller's policy fuses (one coefficient set for the batch, autograd off), else the
        coefficients for each layer to mix; None for a network without external coefficients."""
        self._check_coeffs(x, coeffs)
        if coeffs is None:
            return None
        weights = MixingCoefficients(coeffs)
        if weights.policy.fuses(weights.shared):
            return self.mixer(self.packed_bases(), coeffs.reshape(coeffs.shape[-2:]))
        return weights

    def forward_features(self, x: Tensor, coeffs: Tensor | None = None) -> Tensor:
        """Pooled features before the classifier head."""
        return self._features(x, self.layer_weights(x, coeffs))

    def _features(self, x: Tensor, weights: LayerWeights | None) -> Tensor:
        row = 0
        for module in [self.stem, *self.blocks, self.last_conv]:
            n = module.num_basis_layers
            x = module(x, weights.rows(row, n)) if n else module(x)
            row += n
        return x.mean((2, 3))

    def _head(self, features: Tensor, weights: LayerWeights | None) -> Tensor:
        """The classifier head on pooled features (``weights``: the whole network's; it takes its rows)."""
        x, row = features, self.num_basis_layers - sum(m.num_basis_layers for m in self.head)
        for i, layer in enumerate(self.head):
            if i == len(self.head) - 1:
                x = self.dropout(x)
            n = layer.num_basis_layers
            x = layer(x, weights.rows(row, n)) if n else layer(x)
            row += n
        return x

    def forward(
        self, x: Tensor, coeffs: Tensor | None = None, max_exits: int | None = None, return_features: bool = False
    ) -> list[Tensor]:
        """``[logits]``; with ``return_features`` also the pooled features: ``[logits, features]``."""
        exits_to_run(max_exits, 1)
        weights = self.layer_weights(x, coeffs)
        features = self._features(x, weights)
        logits = self._head(features, weights)
        return [logits, features] if return_features else [logits]

    def start(self, x: Tensor) -> State:
        return x

    def step(self, state: State, k: int) -> tuple[Tensor, State]:
        """The one exit (a network with external basis coefficients is a specialist: BasisNet stages it)."""
        exits_to_run(k + 1, 1)
        return self.forward(state)[0], None

    def synthesize(self, coeffs: Tensor) -> MobileNet:
        """The static network whose weights are this one's mixed by one coefficient set (L, N).

        For deployment at batch 1 or for a stream that shares coefficients: the result is an ordinary
        MobileNet with no mixing cost.
        """
        if self.config["routing"]:
            raise ValueError("a CondConv (routing) network mixes per input; it has no single static form")
        expected = (self.num_basis_layers, self.config["num_bases"])
        if tuple(coeffs.shape) != expected or expected[0] == 0:
            raise ValueError(f"synthesize needs one coefficient set of shape {expected}, got {tuple(coeffs.shape)}")
        static = MobileNet(**{**self.config, "num_bases": 0}).to(next(self.parameters()).device)
        state = {k: v for k, v in self.state_dict().items()}
        for layer, row in zip(self._basis_layers, coeffs.unbind(0)):
            for key, value in layer.synthesized_state(row).items():
                state[f"{layer.layer_name}.{key}"] = value
        static.load_state_dict(state)
        return static.train(self.training)


def name_basis_layers(model: nn.Module) -> None:
    """Give every basis layer its qualified name, so its errors say where it sits."""
    for name, module in model.named_modules():
        if isinstance(module, BASIS_LAYERS):
            module.layer_name = name


def _init_weights(model: nn.Module) -> None:
    """torchvision's MobileNet init, applied to each basis kernel independently."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, BASIS_LAYERS[0])):
            for w in (m.weight if isinstance(m, BASIS_LAYERS) else [m.weight]):
                nn.init.kaiming_normal_(w, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.Linear, BASIS_LAYERS[1])):
            nn.init.normal_(m.weight, 0, 0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _builder(arch: str, condconv: bool = False):
    def build(**kwargs) -> MobileNet:
        if condconv:  # CondConv's defaults: routed block convs, 8 experts (Yang et al., 2019)
            kwargs = {"routing": True, "num_bases": 8, **kwargs}
        return MobileNet(arch, **kwargs)

    build.__name__ = f"condconv_{arch}" if condconv else arch
    build.__doc__ = (f"{arch} with CondConv routing in every block (default num_bases=8)" if condconv
                     else f"{arch}") + " (see ``MobileNet`` for the options)."
    return build


for _arch in ARCHS:
    register_model(_arch, _builder(_arch), signature_of=MobileNet)
    register_model(f"condconv_{_arch}", _builder(_arch, condconv=True), signature_of=MobileNet)
