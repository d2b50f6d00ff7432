"""Model registry: ``create_model(name, **kwargs)`` for every architecture, timm style."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable

from torch import nn

_MODELS: dict[str, tuple[Callable[..., nn.Module], frozenset[str]]] = {}
_CLASSES: dict[str, type[nn.Module]] = {}
_DEFAULTS: dict[str, dict[str, object]] = {}


def register_model(name: str, builder: Callable[..., nn.Module], signature_of: Callable | None = None,
                   model_class: type[nn.Module] | None = None) -> None:
    """Register ``builder`` under ``name``; its accepted keywords come from ``signature_of`` (default: itself).

    ``model_class`` is the class it builds (default: ``builder`` or ``signature_of``, whichever is a class),
    so a config can be checked against the model before one is built (:func:`model_class`).
    """
    params = inspect.signature(signature_of or builder).parameters
    accepted = frozenset(k for k, p in params.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))
    cls = model_class or next((c for c in (builder, signature_of) if isinstance(c, type)), None)
    if cls is None:
        raise TypeError(f"register_model({name!r}): pass model_class, the class {builder.__name__} builds")
    _MODELS[name] = (builder, accepted - {"self", "arch"})
    _CLASSES[name] = cls
    _DEFAULTS[name] = {k: (None if params[k].default is inspect.Parameter.empty else params[k].default)
                       for k in sorted(_MODELS[name][1])}


def list_models() -> list[str]:
    return sorted(_MODELS)


def model_options(name: str) -> frozenset[str]:
    return _entry(name)[1]


def model_defaults(name: str) -> dict[str, object]:
    """Every option of model ``name`` with its constructor's default (None where it has none), by name."""
    _entry(name)
    return dict(_DEFAULTS[name])


def model_class(name: str) -> type[nn.Module]:
    """The class ``create_model(name)`` builds, without building one."""
    _entry(name)
    return _CLASSES[name]


def _entry(name: str) -> tuple[Callable[..., nn.Module], frozenset[str]]:
    if name not in _MODELS:
        hint = difflib.get_close_matches(name, _MODELS, n=1)
        raise ValueError(f"unknown model {name!r}" + (f"; did you mean {hint[0]!r}?" if hint else "")
                         + f" Available: {', '.join(list_models())}")
    return _MODELS[name]


def check_options(name: str, kwargs: dict, prefix: str = "") -> None:
    """Refuse a model name or option the registry does not know, with a did-you-mean; ``prefix`` names
    where the options were written (``model.kwargs.`` in a config), so a typo is caught before any work."""
    _, accepted = _entry(name)
    for key in kwargs:
        if key not in accepted:
            hint = difflib.get_close_matches(key, accepted, n=1)
            where = f"{prefix}{key}: " if prefix else ""
            raise ValueError(f"{where}model {name!r} has no option {key!r}"
                             + (f"; did you mean '{prefix}{hint[0]}'?" if hint else "")
                             + f" Options: {', '.join(sorted(accepted))}")


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model; unknown options are errors with a did-you-mean."""
    check_options(name, kwargs)
    return _entry(name)[0](**kwargs)
