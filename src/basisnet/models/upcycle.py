"""Upcycling: a static network becomes its basis twin, every basis a noisy copy of the static kernel.

The one implementation behind ``train.init_from`` (trained static runs spread into BasisNet) and
BasisNet's in-run static phase (``train.static_phase``: the specialist trains as one static net, then
its kernel is spread into N bases). Starting every basis from the same good kernel gives the specialist
image features first; the bases then drift apart only as far as the loss asks, and the coefficients
cannot become a shortcut that carries the class instead of the image.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from ..layers import BASIS_LAYERS
from .mobilenet import MobileNet

__all__ = ["UpcycleError", "collapse_bases_", "keep_own_classifiers", "spread_into_bases", "upcycle"]


class UpcycleError(ValueError):
    """A source state does not fit the model it should start (missing, extra or mis-shaped tensors)."""


def spread_into_bases(
    model: nn.Module, tensors: Mapping[str, Tensor], noise: float = 0.01, source: str = "weights",
    generator: torch.Generator | None = None,
) -> None:
    """Load ``tensors`` into ``model``; a basis tensor (N, *shape) takes N noisy copies of a (*shape) one.

    ``noise`` is the standard deviation of the added noise relative to the source tensor's own standard
    deviation. The keys must be the model's, each with a matching or basis-expanded shape; otherwise
    ``UpcycleError`` lists what differs (naming ``source``) and the model is left untouched.
    """
    state = model.state_dict()
    missing = sorted(set(state) - set(tensors))
    unexpected = sorted(set(tensors) - set(state))
    bad = [f"{k}: source {tuple(tensors[k].shape)} vs model {tuple(v.shape)}" for k, v in state.items()
           if k in tensors and tensors[k].shape != v.shape and tuple(tensors[k].shape) != tuple(v.shape[1:])]
    if missing or unexpected or bad:
        lines = ([f"  missing in source: {k}" for k in missing[:20]] + [f"  not in the model: {k}" for k in unexpected[:20]]
                 + [f"  shape mismatch: {s}" for s in bad[:20]])
        raise UpcycleError(f"{source} cannot start this model:\n" + "\n".join(lines))
    new = {}
    for key, target in state.items():
        src = tensors[key].to(target.device, target.dtype)
        if src.shape == target.shape:
            new[key] = src.clone()
            continue
        copies = src.unsqueeze(0).expand_as(target).clone()
        if noise > 0 and src.numel() > 1:
            scale = noise * src.float().std().clamp_min(1e-12)
            draw = torch.randn(copies.shape, generator=generator, dtype=copies.dtype)
            copies += scale * draw.to(copies.device)
        new[key] = copies
    model.load_state_dict(new)


def keep_own_classifiers(model: nn.Module, tensors: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Source tensors in which every MobileNet classifier (of ``model`` or inside it) whose class count
    differs from the source's is replaced by the model's own: a start for a data set with other classes.
    Returns the tensors and one note per replaced classifier."""
    state = model.state_dict()
    tensors, notes = dict(tensors), []
    for prefix, net in model.named_modules():
        if not isinstance(net, MobileNet):
            continue
        last = f"{prefix}.head.{len(net.head) - 1}.fc" if prefix else f"head.{len(net.head) - 1}.fc"
        keys = [k for k in state if k.startswith(last + ".")]
        weight = tensors.get(f"{last}.weight")
        if weight is None or weight.shape[-2] == net.num_classes:
            continue
        notes.append(f"new classifier{' of ' + prefix if prefix else ''}: the source has {weight.shape[-2]} classes, "
                     f"the model {net.num_classes}")
        tensors.update({k: state[k] for k in keys})
    return tensors, notes


def upcycle(static: MobileNet, num_bases: int, noise: float = 0.01,
            generator: torch.Generator | None = None) -> MobileNet:
    """The basis twin of a static MobileNet: the same network with ``num_bases`` noisy copies of every
    kernel of its ``basis_parts`` (default: every block conv). With ``noise=0`` it computes exactly what
    ``static`` does, whatever the coefficients."""
    if static.config["num_bases"] or static.config["routing"]:
        raise UpcycleError(f"upcycle needs a static network, got one with num_bases={static.config['num_bases']}"
                           f"{' and routing' if static.config['routing'] else ''}")
    if num_bases < 1:
        raise UpcycleError(f"num_bases must be >= 1, got {num_bases}")
    twin = MobileNet(**{**static.config, "num_bases": num_bases})
    twin.to(next(static.parameters()).device)
    spread_into_bases(twin, static.state_dict(), noise, source="upcycle", generator=generator)
    return twin.train(static.training)


@torch.no_grad()
def collapse_bases_(model: nn.Module, noise: float = 0.0, generator: torch.Generator | None = None) -> None:
    """In place: every basis of every basis layer becomes a copy of the layer's first basis (+ noise).

    With ``noise=0`` the bases are tied: under uniform coefficients they receive identical updates and
    stay tied, so the network trains as one static net. With ``noise > 0`` it is the upcycling step
    (the same ``spread_into_bases``), applied to a network whose bases are already tied.
    """
    state = dict(model.state_dict())
    for name, layer in model.named_modules():
        if isinstance(layer, BASIS_LAYERS):
            for key, tensor in layer.named_parameters(recurse=False):
                state[f"{name}.{key}" if name else key] = tensor[0]
    spread_into_bases(model, state, noise, source="collapse_bases_", generator=generator)
