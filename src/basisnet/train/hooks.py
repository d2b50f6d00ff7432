"""A model's training hooks as the loop sees them, and the check of model-specific ``train.*`` options.

The hooks themselves belong to the models (``models.protocol.TrainingHooks``: BasisNet's static phase,
gradient equilibrium of MSDNet and RANet); this module gives a model without any the hooks that do nothing,
so the loop calls the same two methods on every model and names no model class.
"""
from __future__ import annotations

from torch import nn

from ..models.protocol import TrainingHooks, TrainSettings
from ..models.registry import list_models, model_class
from .config import ConfigError

__all__ = ["check_train_options", "training_hooks"]

# Opt-in options that only some models follow: set for another model they are a config error, not ignored.
_OPT_IN = {"gradient_equilibrium": "has no trunk shared by its exits"}


class _NoHooks:
    """The hooks of a model that owns no training steps (MobileNet, CondConv, ...)."""

    train_options: frozenset[str] = frozenset()

    def begin_training(self, tc: TrainSettings, resume: bool) -> None:
        pass

    def begin_epoch(self, epoch: int, tc: TrainSettings, step: bool) -> None:
        pass


_NO_HOOKS = _NoHooks()


def training_hooks(model: nn.Module) -> TrainingHooks:
    """``model`` itself if it has training hooks, else hooks that do nothing (pass the unwrapped module)."""
    return model if isinstance(model, TrainingHooks) else _NO_HOOKS


def _train_options(cls: type) -> frozenset[str]:
    return getattr(cls, "train_options", _NoHooks.train_options)


def check_train_options(model_cls: type, tc: TrainSettings) -> None:
    """Refuse an opt-in option (``train.gradient_equilibrium``) that ``model_cls`` does not follow; needs the
    class only (``models.model_class(name)``), so a config is checked before any model is built."""
    for key, reason in _OPT_IN.items():
        if getattr(tc, key) and key not in _train_options(model_cls):
            users = [name for name in list_models() if key in _train_options(model_class(name))]
            raise ConfigError(f"train.{key}: {model_cls.__name__} {reason}; it applies to {' and '.join(users)}")
