"""The staged base of the dense multi-exit peers (MSDNet, RANet): exits are heads after stages of a trunk.

A subclass builds ``self.heads`` (one per exit, cheapest first) and writes ``step``; what follows from
that is written here once: the number of exits, and the full forward as the staged run in which every
image goes on (so the two can never disagree). ``start`` is the input itself unless a model needs more.
The base holds no parameters, so a subclass's state-dict keys are those of its own modules.
"""

from __future__ import annotations

from torch import Tensor, nn

from .protocol import State, run_exits

__all__ = ["StagedMultiExit"]


class StagedMultiExit(nn.Module):
    heads: nn.ModuleList

    @property
    def num_exits(self) -> int:
        return len(self.heads)

    def forward(self, x: Tensor, max_exits: int | None = None) -> list[Tensor]:
        """Logits of exits 1..``max_exits`` (default: all), cheapest first; nothing after the last is run."""
        return run_exits(self, x, max_exits)

    def start(self, x: Tensor) -> State:
        return x

    def step(self, state: State, k: int) -> tuple[Tensor, State]:
        raise NotImplementedError
