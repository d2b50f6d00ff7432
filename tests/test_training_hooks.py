"""The training-hook contract (``models.protocol.TrainingHooks``) over every registered model, BasisNet's
static phase as its hooks drive it, and the loop calling the hooks of whatever model it trains."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from basisnet.data import BatchLoader, EvalTransform, ImageTensorDataset, TrainAugment
from basisnet.models import TrainingHooks, list_models, model_class
from basisnet.train import (ConfigError, TrainConfig, TrainData, build_parts, check_train_options, fit, load_config,
                            training_hooks)
from helpers import ToyNet, tiny_model

EPOCHS = 4  # static_phase=0.5: BasisNet's bases are tied in epochs 0-1 and mixed from epoch 2


def _tc(**overrides) -> TrainConfig:
    return TrainConfig(**{"epochs": EPOCHS, "static_phase": 0.5, "init_noise": 0.01, "seed": 3, **overrides})


def _flags(model: nn.Module) -> set[str]:
    """The plain attributes a hook may set (BasisNet's ``static_phase``, ``gradient_equilibrium``, ...)."""
    return {k for k, v in vars(model).items() if not k.startswith("_") and isinstance(v, (bool, int, float))}


def _same(a: nn.Module, b: nn.Module) -> bool:
    """The same weights and the same flags (read as attributes: one may be the class's default)."""
    sa, sb = a.state_dict(), b.state_dict()
    flags = _flags(a) | _flags(b)
    return ({k: getattr(a, k) for k in flags} == {k: getattr(b, k) for k in flags} and sa.keys() == sb.keys()
            and all(torch.equal(sa[k], sb[k]) for k in sa))


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_keeps_the_training_hook_contract(name: str) -> None:
    """The class the registry names is the one it builds (config checks need no model); an opt-in option is
    accepted exactly by the models that list it; and what the hooks do follows from the epoch and the config
    alone: a run resumed at an epoch's start or in its middle has the weights and flags of one never stopped."""
    model = tiny_model(name).train()
    assert type(model) is model_class(name)
    hooks = training_hooks(model)
    assert isinstance(hooks, TrainingHooks)
    if "gradient_equilibrium" in hooks.train_options:
        check_train_options(model_class(name), TrainConfig(gradient_equilibrium=True))
    else:
        with pytest.raises(ConfigError, match="train.gradient_equilibrium: "):
            check_train_options(model_class(name), TrainConfig(gradient_equilibrium=True))
    tc = _tc(gradient_equilibrium="gradient_equilibrium" in hooks.train_options)
    uninterrupted = copy.deepcopy(model)
    training_hooks(uninterrupted).begin_training(tc, resume=False)
    after_epoch_hook = []
    for epoch in range(EPOCHS):
        training_hooks(uninterrupted).begin_epoch(epoch, tc, step=True)
        after_epoch_hook.append(copy.deepcopy(uninterrupted))
    # (epoch, the weights its checkpoint holds, the step flag the loop passes): saved at the end of the epoch
    # before (so before this epoch's hook) or in this epoch's middle (after it)
    resumes = [(e, after_epoch_hook[e - 1], True) for e in range(1, EPOCHS)]
    resumes += [(e, after_epoch_hook[e], False) for e in range(EPOCHS)]
    for epoch, saved, step in resumes:
        resumed = copy.deepcopy(model)
        training_hooks(resumed).begin_training(tc, resume=True)
        resumed.load_state_dict(saved.state_dict())
        training_hooks(resumed).begin_epoch(epoch, tc, step=step)
        assert _same(resumed, after_epoch_hook[epoch]), (epoch, step)


@pytest.mark.parametrize("name", list_models())
def test_with_its_options_off_a_model_trains_as_if_it_had_no_hooks(name: str) -> None:
    model = tiny_model(name).train()
    tc = _tc(static_phase=0.0)
    hooked = copy.deepcopy(model)
    training_hooks(hooked).begin_training(tc, resume=False)
    for epoch in range(EPOCHS):
        training_hooks(hooked).begin_epoch(epoch, tc, step=True)
        assert _same(hooked, model), epoch


def _tied(model: nn.Module) -> bool:
    kernels = [t for t in model.specialist.state_dict().values() if t.dim() == 5]  # (bases, out, in, kh, kw)
    assert kernels
    return all(torch.equal(t[0], b) for t in kernels for b in t[1:])


def test_basisnet_ties_its_bases_for_the_static_phase_and_unties_them_at_its_end() -> None:
    """Through the parts the loop builds: bases tied and uniform coefficients in epochs 0-1, the upcycling step
    at the start of epoch 2 (its noise from ``train.seed`` alone); the EMA copy takes the phase, not the step."""
    tc = _tc(ema_decay=0.9)
    parts = build_parts(tiny_model("basisnet").train(), tc, steps_per_epoch=1)
    net, ema = parts.net, parts.ema.module
    assert _tied(net) and _tied(ema)
    for epoch in (0, 1):
        parts.begin_epoch(epoch, step=True)
        assert net.static_phase and ema.static_phase and _tied(net)
    parts.begin_epoch(2, step=True)
    assert not net.static_phase and not ema.static_phase
    assert not _tied(net) and _tied(ema)  # the EMA follows the trained weights from here
    again = build_parts(tiny_model("basisnet").train(), tc, steps_per_epoch=1)
    again.begin_epoch(2, step=True)
    assert _same(again.net, net)  # the same noise in any process that crosses the boundary
    other_seed = build_parts(tiny_model("basisnet").train(), _tc(seed=4), steps_per_epoch=1)
    other_seed.begin_epoch(2, step=True)
    assert not _same(other_seed.net, net)


def test_basisnet_skips_the_static_phase_when_init_from_starts_its_specialist() -> None:
    tc = _tc(init_from={"specialist": "some-run"})
    model = tiny_model("basisnet").train()
    assert model.static_phase_epochs(tc) == 0 and model.static_phase_epochs(_tc()) == EPOCHS // 2
    hooked = copy.deepcopy(model)
    training_hooks(hooked).begin_training(tc, resume=False)
    training_hooks(hooked).begin_epoch(0, tc, step=True)
    assert _same(hooked, model) and not _tied(hooked)


class _Recording(ToyNet):
    """ToyNet with training hooks that record what the loop asks of them."""

    train_options: frozenset[str] = frozenset()

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.seen: list[tuple] = []

    def begin_training(self, tc, resume: bool) -> None:
        self.seen.append(("begin_training", resume))

    def begin_epoch(self, epoch: int, tc, step: bool) -> None:
        self.seen.append(("begin_epoch", epoch, step))


def _fit(run_dir: Path, model: nn.Module, resume: bool = False) -> None:
    gen = torch.Generator().manual_seed(0)
    data = ImageTensorDataset(torch.randint(0, 256, (32, 3, 8, 8), dtype=torch.uint8, generator=gen),
                              torch.arange(32) % 3, ["a", "b", "c"])
    cfg = load_config(None, ["train.epochs=2", "train.warmup_epochs=0", "data.batch_size=8", "train.ema_decay=0.5",
                             "train.checkpoint_every_steps=2"])
    loaders = TrainData(BatchLoader(data, 8, shuffle=True, seed=1), BatchLoader(data, 16, shuffle=False),
                        TrainAugment(crop_size=8, padding=1), EvalTransform())
    fit(model, loaders, cfg, run_dir, resume=resume, progress=False)


@pytest.mark.parametrize("crash_at, step", [(5, True), (7, False)], ids=["epoch-end", "mid-epoch"])
def test_fit_calls_the_hooks_of_the_model_it_trains(tmp_path: Path, crash_at: int, step: bool) -> None:
    """Once before training, then at every epoch; resumed in an epoch's middle, that epoch without the step.
    (4 steps per epoch, a checkpoint every 2: killed at step 5 the run resumes at epoch 2's start, at step 7
    in its middle.)"""
    model = _Recording()
    _fit(tmp_path / "a", model)
    assert model.seen == [("begin_training", False), ("begin_epoch", 0, True), ("begin_epoch", 1, True)]
    with pytest.raises(KeyboardInterrupt):
        _fit(tmp_path / "b", _Recording(crash_at=crash_at))
    resumed = _Recording()
    _fit(tmp_path / "b", resumed, resume=True)
    assert resumed.seen == [("begin_training", True), ("begin_epoch", 1, step)]
