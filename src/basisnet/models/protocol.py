"""The multi-exit contract every registered model keeps, written once.

A multi-exit classifier returns a list of logits, cheapest exit first. Early exit saves time only if
a model can stop, so every model also runs *staged*: ``start(x)`` makes a state, ``step(state, k)``
computes exit ``k`` (0-based, in order) and returns its logits and the state exit ``k + 1`` needs.
Between steps a runtime may keep only the undecided images with ``select_state``; the full forward
is the staged run with nobody leaving (``run_exits``). ``tests/test_protocol.py`` checks the contract
over ``list_models()``.

A state is any nesting of lists, tuples and dicts whose tensors have the batch as their first
dimension; other values (ints, None) are cursors and pass through ``select_state`` untouched. A runtime
that passes tensors only (an exported graph) takes a state apart with ``flatten_state`` and puts it back
with ``unflatten_state``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

from torch import Tensor

State = Any


@runtime_checkable
class MultiExitClassifier(Protocol):
    """What evaluation, early exit and the benchmarks rely on, and nothing more."""

    num_classes: int
    resolution: int  # the input side the model is meant for (multiply-adds are counted there)

    @property
    def num_exits(self) -> int: ...

    def __call__(self, x: Tensor, max_exits: int | None = None) -> list[Tensor]:
        """Logits of exits 1..``max_exits`` (default: all); nothing after the last is computed."""
        ...

    def start(self, x: Tensor) -> State:
        """The state before exit 0 (cheap: nothing an early exit could skip)."""
        ...

    def step(self, state: State, k: int) -> tuple[Tensor, State]:
        """Logits of exit ``k`` and the state exit ``k + 1`` continues from."""
        ...


class TrainSettings(Protocol):
    """The part of the training config (``basisnet.train.TrainConfig``) a model's training hooks read;
    structural, so models import no training code."""

    epochs: int
    seed: int
    static_phase: float
    init_noise: float
    init_from: Mapping[str, Any]
    gradient_equilibrium: bool


@runtime_checkable
class TrainingHooks(Protocol):
    """Steps of its own training a model owns (BasisNet's static phase, gradient equilibrium of a shared
    trunk). The training loop calls them on every model and names no model class; a model without them
    trains as a plain multi-exit classifier (``basisnet.train.hooks``). ``tests/test_training_hooks.py``
    checks the contract over ``list_models()``."""

    # The model-specific ``train.*`` options this model follows; an opt-in one (``gradient_equilibrium``)
    # set for a model that does not list it is a config error, raised before any work.
    train_options: ClassVar[frozenset[str]]

    def begin_training(self, tc: TrainSettings, resume: bool) -> None:
        """Once, before the optimizer and the EMA copy see the weights (``resume``: they are loaded next)."""
        ...

    def begin_epoch(self, epoch: int, tc: TrainSettings, step: bool) -> None:
        """Before the batches of ``epoch`` (0-based; also when a run resumes inside it). ``step``: also take
        the one-off change to the weights due at the epoch's start; False for a copy that follows trained
        weights (the EMA) and for an epoch resumed mid-way, whose start has passed. What a hook does must
        follow from ``epoch`` and ``tc`` alone, so a resumed run (any rank) does what an uninterrupted one did."""
        ...


def exits_to_run(max_exits: int | None, num_exits: int) -> int:
    """``max_exits`` checked against the model's exits (None = all)."""
    if max_exits is None:
        return num_exits
    if not 1 <= max_exits <= num_exits:
        raise ValueError(f"max_exits must be in [1, {num_exits}], got {max_exits}")
    return max_exits


def run_exits(model: MultiExitClassifier, x: Tensor, max_exits: int | None = None) -> list[Tensor]:
    """The full forward as a staged run in which every image goes on."""
    state = model.start(x)
    logits = []
    for k in range(exits_to_run(max_exits, model.num_exits)):
        out, state = model.step(state, k)
        logits.append(out)
    return logits


def map_state(state: State, fn: Callable[[Any], Any], leaf: type | tuple[type, ...] = Tensor) -> State:
    """``state`` with ``fn`` applied to every value of type ``leaf``; the nesting and other values kept."""
    if isinstance(state, leaf):
        return fn(state)
    if isinstance(state, dict):
        return {key: map_state(value, fn, leaf) for key, value in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(map_state(value, fn, leaf) for value in state)
    return state


def select_state(state: State, index: Tensor) -> State:
    """The state of the images ``index`` (a long tensor of batch positions) only."""
    return map_state(state, lambda t: t[index])  # unlike index_select, keeps channels_last maps so


@dataclass(frozen=True)
class _Slot:
    """Where tensor ``index`` of a flattened state goes back."""

    index: int


def flatten_state(state: State) -> tuple[list[Tensor], State]:
    """The tensors of ``state`` in a fixed order (``map_state``'s), and a skeleton holding their places and the
    state's other values: what crosses a boundary that passes tensors only (an ONNX graph's inputs)."""
    tensors: list[Tensor] = []

    def take(tensor: Tensor) -> _Slot:
        tensors.append(tensor)
        return _Slot(len(tensors) - 1)

    return tensors, map_state(state, take)


def unflatten_state(skeleton: State, tensors: Sequence[Tensor]) -> State:
    """The state ``flatten_state`` took apart, with ``tensors`` in the places of its own."""
    return map_state(skeleton, lambda slot: tensors[slot.index], leaf=_Slot)
