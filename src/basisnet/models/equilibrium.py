"""Gradient equilibrium (Li et al., "Improved techniques for training adaptive deep networks", ICCV 2019).

In a multi-exit net with a shared trunk every block receives the *sum* of the gradients of the exits
after it, so early blocks take steps several times larger than late ones and the exits fight over them.
Gradient equilibrium rescales backward only (the forward is unchanged): where exit ``k`` of ``n``
branches off, the head's input gets ``1 / (n - k)`` of the head's gradient and the trunk going on gets
``(n - k - 1) / (n - k)`` of the later exits' gradient. By induction every trunk block then receives the
*mean* of its exits' gradients; each head keeps its own full gradient. IMTA rescales only the map the head
reads; here the whole staged state is rescaled, which makes the mean exact for every map (MSDNet's finer
scales, RANet's features carried to later flows and stem maps).

A model that supports it takes :class:`SharedTrunkHooks` as its training hooks (``train.gradient_equilibrium``
switches its ``gradient_equilibrium`` flag on) and calls :func:`split_exit` in ``step`` when the flag is set.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .protocol import State, TrainSettings, map_state

__all__ = ["SharedTrunkHooks", "scale_grad", "split_exit"]


class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return grad * ctx.scale, None


def scale_grad(x: Tensor, scale: float) -> Tensor:
    """``x`` unchanged forward; its gradient multiplied by ``scale`` backward."""
    return _ScaleGrad.apply(x, scale)


def split_exit(head_input: Tensor, state: State, k: int, num_exits: int) -> tuple[Tensor, State]:
    """Exit ``k``'s head input and the state later exits continue from, with their gradients balanced.

    Identity when gradients are off (evaluation, export), so a model pays nothing outside training.
    """
    if not torch.is_grad_enabled():
        return head_input, state
    remaining = num_exits - k
    return (scale_grad(head_input, 1.0 / remaining),
            map_state(state, lambda t: scale_grad(t, (remaining - 1) / remaining)))


class SharedTrunkHooks:
    """Training hooks (``models.protocol.TrainingHooks``) of a multi-exit model whose exits share a trunk."""

    train_options = frozenset({"gradient_equilibrium"})
    gradient_equilibrium = False  # training only, never saved: evaluation and export run without it

    def begin_training(self, tc: TrainSettings, resume: bool) -> None:
        self.gradient_equilibrium = tc.gradient_equilibrium

    def begin_epoch(self, epoch: int, tc: TrainSettings, step: bool) -> None:
        pass
