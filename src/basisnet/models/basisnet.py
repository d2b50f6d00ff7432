"""BasisNet: a lightweight model previews the image, then a specialist synthesized for it answers.

Exit 1 is the lightweight model's own prediction; its pooled embedding also feeds a coefficient head
(one linear layer -> L x N values, softmax over N with a temperature) whose output mixes the N basis
kernels of every basis layer of the specialist. Exit 2 is the specialist's prediction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import BLOCK_PARTS
from .mobilenet import MobileNet
from .protocol import State, TrainSettings, exits_to_run
from .registry import register_model
from .upcycle import collapse_bases_

COEFF_SHARING = ("layer", "block", "network")
_UPCYCLE_SEED_OFFSET = 0xB1A5  # the noise that separates the bases after the static phase


@dataclass
class BasisNetOutput:
    lightweight: Tensor  # logits of exit 1
    specialist: Tensor | None  # logits of exit 2 (None when stopped after exit 1)
    coeffs: Tensor | None  # (B, L, N) mixing coefficients

    def exits(self) -> list[Tensor]:
        return [self.lightweight] if self.specialist is None else [self.lightweight, self.specialist]


class BasisNet(nn.Module):
    """Two-stage model synthesis (Zhang et al., 2021), as a two-exit classifier.

    Args:
        num_classes, resolution, drop_strides: as for ``MobileNet`` (the specialist's input).
        specialist, specialist_width: architecture and width of the specialist.
        lightweight, lightweight_width: architecture and width of the lightweight model.
        lightweight_resolution: its input side (default: half of ``resolution``); the image is
            downscaled with antialiasing.
        lightweight_drop_strides: ``drop_strides`` of the lightweight model (default: as the specialist).
        num_bases: N, basis kernels per basis layer.
        basis_parts: which specialist convs are basis layers (default: every block conv; SE and
            classifier stay static).
        coeff_sharing: "layer" (one coefficient vector per basis layer), "block" (one per block) or
            "network" (one for the whole specialist).
        temperature: softmax temperature of the coefficients (lower = sharper choice of bases).
        basis_dropout: in training, drop each basis with this probability and renormalise the survivors.
        dropout: classifier dropout of both models.
        norm_eps, lightweight_norm_eps: BatchNorm epsilon of the specialist and of the lightweight model
            (default: ``norm_eps``); 1e-3 for weights imported from torchvision's MobileNetV3.
    """

    num_exits = 2

    def __init__(
        self,
        num_classes: int = 1000,
        resolution: int = 224,
        drop_strides: int = 0,
        specialist: str = "mobilenetv3_large",
        specialist_width: float = 1.0,
        lightweight: str = "mobilenetv3_small",
        lightweight_width: float = 1.0,
        lightweight_resolution: int | None = None,
        lightweight_drop_strides: int | None = None,
        num_bases: int = 8,
        basis_parts: Sequence[str] = BLOCK_PARTS,
        coeff_sharing: str = "layer",
        temperature: float = 1.0,
        basis_dropout: float = 0.0,
        dropout: float = 0.2,
        norm_eps: float = 1e-5,
        lightweight_norm_eps: float | None = None,
    ) -> None:
        super().__init__()
        if num_bases < 1:
            raise ValueError(f"num_bases must be >= 1, got {num_bases}")
        if coeff_sharing not in COEFF_SHARING:
            raise ValueError(f"coeff_sharing must be one of {COEFF_SHARING}, got {coeff_sharing!r}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not 0.0 <= basis_dropout < 1.0:
            raise ValueError(f"basis_dropout must be in [0, 1), got {basis_dropout}")
        self.resolution = resolution
        self.num_classes = num_classes
        self.lightweight_resolution = lightweight_resolution or max(resolution // 2, 1)
        self.temperature = temperature
        self.basis_dropout = basis_dropout
        self.num_bases = num_bases
        self.lightweight = MobileNet(
            lightweight, lightweight_width, num_classes, self.lightweight_resolution,
            drop_strides if lightweight_drop_strides is None else lightweight_drop_strides, dropout=dropout,
            norm_eps=norm_eps if lightweight_norm_eps is None else lightweight_norm_eps,
        )
        self.specialist = MobileNet(
            specialist, specialist_width, num_classes, resolution, drop_strides,
            num_bases=num_bases, basis_parts=basis_parts, dropout=dropout, norm_eps=norm_eps,
        )
        layers = self.specialist.num_basis_layers
        if layers == 0:
            raise ValueError(f"basis_parts={tuple(basis_parts)} leaves the specialist without basis layers")
        groups = {"layer": [1] * layers, "block": self.specialist.basis_layers_per_block(), "network": [layers]}
        sizes = groups[coeff_sharing]
        # Row l of the specialist's coefficients is row row_index[l] of the head's output.
        self.register_buffer("row_index", torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes)),
                             persistent=False)
        self.coeff_head = nn.Linear(self.lightweight.num_features, len(sizes) * num_bases)
        # Zero init: every basis starts with equal weight, so early training sees one averaged network.
        nn.init.zeros_(self.coeff_head.weight)
        nn.init.zeros_(self.coeff_head.bias)
        # Set by training (train.static_phase), never saved: uniform coefficients, tied bases.
        self.static_phase = False

    def begin_static_phase(self) -> None:
        """Tie every basis to its layer's first and mix them uniformly: the specialist trains as one
        static network (its tied bases get identical updates) while the lightweight model learns."""
        collapse_bases_(self.specialist)
        self.static_phase = True

    def end_static_phase(self, noise: float, generator: torch.Generator | None = None) -> None:
        """Upcycle: every basis becomes the trained static kernel plus ``noise`` (relative to its std);
        the coefficient head (untouched by the static phase, so still zero) starts learning from uniform."""
        collapse_bases_(self.specialist, noise, generator)
        self.static_phase = False

    # Training hooks (models.protocol.TrainingHooks): the static phase of ``train.static_phase``.
    train_options = frozenset({"static_phase"})

    @staticmethod
    def static_phase_epochs(tc: TrainSettings) -> int:
        """Epochs of the static phase (``train.static_phase``); 0 when ``train.init_from`` starts the
        specialist (it is upcycled already)."""
        if {"model", "specialist"} & set(tc.init_from):
            return 0
        return round(tc.static_phase * tc.epochs)

    def begin_training(self, tc: TrainSettings, resume: bool) -> None:
        if self.static_phase_epochs(tc) and not resume:
            self.begin_static_phase()

    def begin_epoch(self, epoch: int, tc: TrainSettings, step: bool) -> None:
        """The static phase in its epochs, mixed bases after them; the upcycling step (``step``) at the start
        of the first mixed epoch, its noise drawn from ``train.seed`` alone."""
        static_epochs = self.static_phase_epochs(tc)
        if not static_epochs:
            return
        if step and epoch == static_epochs:
            self.end_static_phase(tc.init_noise, torch.Generator().manual_seed(tc.seed + _UPCYCLE_SEED_OFFSET))
        self.static_phase = epoch < static_epochs

    def preview(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Stage 1: lightweight logits and embedding from a downscaled copy of the image."""
        small = x
        if x.shape[-1] != self.lightweight_resolution or x.shape[-2] != self.lightweight_resolution:
            small = F.interpolate(x, size=self.lightweight_resolution, mode="bilinear", antialias=True,
                                  align_corners=False)
        logits, embedding = self.lightweight(small, return_features=True)
        return logits, embedding

    def coefficients(self, embedding: Tensor) -> Tensor:
        """(B, L, N) mixing coefficients from the lightweight embedding ((L, N) in the static phase)."""
        logits = self.coeff_head(embedding).view(embedding.shape[0], -1, self.num_bases)
        if self.static_phase:
            # One uniform set for the batch, so the specialist runs its plain-conv path; adding the head's
            # output times zero keeps the head in the graph (DDP wants every parameter used).
            uniform = torch.full_like(logits[0], 1.0 / self.num_bases) + 0.0 * logits.mean(0)
            return uniform[self.row_index]
        coeffs = torch.softmax(logits / self.temperature, dim=-1)
        if self.training and self.basis_dropout > 0:
            keep = torch.rand_like(coeffs) >= self.basis_dropout
            keep = keep | ~keep.any(-1, keepdim=True)  # never drop every basis of a row
            coeffs = coeffs * keep
            coeffs = coeffs / coeffs.sum(-1, keepdim=True)
        return coeffs[:, self.row_index]

    def specialize(self, x: Tensor, embedding: Tensor) -> tuple[Tensor, Tensor]:
        """Stage 2: the specialist's logits for ``x`` with weights mixed from ``embedding``."""
        coeffs = self.coefficients(embedding)
        return self.specialist(x, coeffs)[0], coeffs

    def forward_output(self, x: Tensor, max_exits: int | None = None) -> BasisNetOutput:
        light, embedding = self.preview(x)
        if exits_to_run(max_exits, self.num_exits) == 1:
            return BasisNetOutput(light, None, None)
        specialist, coeffs = self.specialize(x, embedding)
        return BasisNetOutput(light, specialist, coeffs)

    def forward(self, x: Tensor, max_exits: int | None = None) -> list[Tensor]:
        return self.forward_output(x, max_exits).exits()

    def start(self, x: Tensor) -> State:
        return x

    def step(self, state: State, k: int) -> tuple[Tensor, State]:
        """Exit 0: the preview and the coefficients (state: the image and its (B, L, N) coefficients, what
        a second processing unit needs); exit 1: the specialist."""
        if k == 0:
            light, embedding = self.preview(state)
            coeffs = self.coefficients(embedding)
            if coeffs.dim() == 2:  # the static phase's one set, per image so a runtime can select images
                coeffs = coeffs.expand(state.shape[0], -1, -1)
            return light, (state, coeffs)
        exits_to_run(k + 1, self.num_exits)
        x, coeffs = state
        return self.specialist(x, coeffs)[0], None


register_model("basisnet", BasisNet)
