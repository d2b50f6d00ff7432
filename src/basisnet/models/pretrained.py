"""Weights of torchvision's and timm's MobileNets in basisnet's ``MobileNet``: name maps as data.

Each supported checkpoint is named ``SOURCE:NAME`` (``torchvision:mobilenet_v3_large``,
``timm:mobilenetv3_small_100``); ``PRETRAINED`` gives its architecture and the few definition
choices that differ from basisnet's defaults, ``LAYOUTS`` where the source library keeps each layer.
A converted state dict uses basisnet's names, so it loads into a static network or, through
``upcycle.spread_into_bases``, into a basis network (a BasisNet specialist).

Definition differences, resolved so that logits match (tests/test_pretrained.py):

- BatchNorm epsilon: torchvision's MobileNetV3 uses 1e-3 (momentum 0.01), timm and torchvision's
  MobileNetV2 1e-5: imported networks get ``norm_eps`` from the table. Momentum only matters in training;
  basisnet keeps PyTorch's 0.1 (a fine-tuning run re-estimates the statistics quickly either way).
- MobileNetV3's hidden head layer: timm stores it as a 1x1 conv after pooling, basisnet as a linear
  layer (reshaped on import).
- Width: basisnet and torchvision round every layer's channels times the width to a multiple of 8;
  timm derives expanded channels from the rounded input and keeps MobileNetV3's stem at 16, so only
  its width-1.0 networks share basisnet's shapes: the others are not in ``PRETRAINED`` (refused by name;
  forced under a width-1.0 name, the mis-shaped tensors are listed). torchvision ships weights at 1.0 only.
- Squeeze-excite width (expanded / 4 rounded to 8), hard-sigmoid and hard-swish (``nn.Hardsigmoid`` /
  ``nn.Hardswish``) are the same in all three; dropout sits before the classifier in all three and does
  nothing in eval mode.
"""
from __future__ import annotations

import argparse
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .mobilenet import ARCHS, MobileNet
from .upcycle import UpcycleError, keep_own_classifiers, spread_into_bases

__all__ = ["LAYOUTS", "PRETRAINED", "Layout", "Pretrained", "PretrainedError", "convert_state_dict",
           "list_pretrained", "load_into", "load_pretrained", "parse_source", "read_checkpoint"]


class PretrainedError(UpcycleError):
    """A checkpoint is not one of the supported MobileNets, or does not fit the model it should start."""


@dataclass(frozen=True)
class Layout:
    """Where a library keeps each layer of a MobileNet: ``str.format`` templates of state-dict prefixes.

    A block's prefix takes ``{b}`` (block index from 0; ``{b1}`` = b + 1) or, for libraries that nest
    blocks in stages, ``{stage}`` and ``{i}`` (index within the stage). Inside a block ``{n}`` counts the
    block's layers present in order (expand, depthwise, squeeze-excite, project) and ``{n1}`` = n + 1.
    Conv/norm pairs are (conv, norm) prefixes; a block without an expand conv may name its layers
    differently (``*_no_expand``). ``{last_index}`` is the number of blocks + 1 (or of stages, with stages).
    """

    stem: tuple[str, str]
    block: str
    expand: tuple[str, str]
    depthwise: tuple[str, str]
    project: tuple[str, str]
    se: tuple[str, str] | None  # squeeze, excite (None: the architecture has no squeeze-excite)
    last: tuple[str, str]
    head: tuple[str, ...]  # linear layers in order (a 1x1 conv there is reshaped)
    depthwise_no_expand: tuple[str, str] | None = None
    project_no_expand: tuple[str, str] | None = None
    stages: tuple[int, ...] = ()  # blocks per stage, for nested layouts


_TV_V3 = Layout(stem=("features.0.0", "features.0.1"), block="features.{b1}.block",
                expand=("{n}.0", "{n}.1"), depthwise=("{n}.0", "{n}.1"), project=("{n}.0", "{n}.1"),
                se=("{n}.fc1", "{n}.fc2"), last=("features.{last_index}.0", "features.{last_index}.1"),
                head=("classifier.0", "classifier.3"))
_TV_V2 = Layout(stem=("features.0.0", "features.0.1"), block="features.{b1}.conv",
                expand=("{n}.0", "{n}.1"), depthwise=("{n}.0", "{n}.1"), project=("{n}", "{n1}"),
                se=None, last=("features.{last_index}.0", "features.{last_index}.1"), head=("classifier.1",))


def _timm(stages: tuple[int, ...], v3: bool) -> Layout:
    return Layout(stem=("conv_stem", "bn1"), block="blocks.{stage}.{i}",
                  expand=("conv_pw", "bn1"), depthwise=("conv_dw", "bn2"), project=("conv_pwl", "bn3"),
                  depthwise_no_expand=("conv_dw", "bn1"), project_no_expand=("conv_pw", "bn2"),
                  se=("se.conv_reduce", "se.conv_expand"),
                  last=("blocks.{last_index}.0.conv", "blocks.{last_index}.0.bn1") if v3 else ("conv_head", "bn2"),
                  head=("conv_head", "classifier") if v3 else ("classifier",), stages=stages)


LAYOUTS: dict[tuple[str, str], Layout] = {
    ("torchvision", "mobilenetv3_large"): _TV_V3,
    ("torchvision", "mobilenetv3_small"): _TV_V3,
    ("torchvision", "mobilenetv2"): _TV_V2,
    ("timm", "mobilenetv3_large"): _timm((1, 2, 3, 4, 2, 3), v3=True),
    ("timm", "mobilenetv3_small"): _timm((1, 2, 3, 2, 3), v3=True),
    ("timm", "mobilenetv2"): _timm((1, 2, 3, 4, 3, 3, 1), v3=False),
}


@dataclass(frozen=True)
class Pretrained:
    """One supported checkpoint (all at width 1.0): basisnet's architecture and the options that match it."""

    arch: str
    norm_eps: float = 1e-5

    def model_kwargs(self) -> dict[str, Any]:
        return {"arch": self.arch, "width": 1.0, "norm_eps": self.norm_eps}



PRETRAINED: dict[str, Pretrained] = {
    "torchvision:mobilenet_v2": Pretrained("mobilenetv2"),
    "torchvision:mobilenet_v3_large": Pretrained("mobilenetv3_large", norm_eps=1e-3),
    "torchvision:mobilenet_v3_small": Pretrained("mobilenetv3_small", norm_eps=1e-3),
    # timm's other widths round differently (expanded channels = ratio x the rounded input, stem kept at 16):
    # their tensors do not fit basisnet's width rule, and the import says which ones.
    "timm:mobilenetv2_100": Pretrained("mobilenetv2"),
    "timm:mobilenetv3_large_100": Pretrained("mobilenetv3_large"),
    "timm:mobilenetv3_small_100": Pretrained("mobilenetv3_small"),
}


def list_pretrained() -> list[str]:
    """The ``SOURCE:NAME`` checkpoints basisnet reads."""
    return sorted(PRETRAINED)


def _entry(name: str) -> Pretrained:
    if name not in PRETRAINED:
        raise PretrainedError(f"unsupported pretrained model {name!r}; supported: {', '.join(list_pretrained())}")
    return PRETRAINED[name]


def _layout(name: str) -> Layout:
    """The layout of a supported ``SOURCE:NAME``: the library is the name's prefix."""
    return LAYOUTS[name.split(":")[0], _entry(name).arch]


def parse_source(spec: str) -> tuple[str, str] | None:
    """``"torchvision:mobilenet_v3_large=PATH"`` -> (name, PATH); None for anything else (a run directory
    or weights file). A known source prefix with an unknown name or no ``=PATH`` is an error."""
    match = re.fullmatch(r"(torchvision|timm):([\w.]+)(?:=(.*))?", str(spec), flags=re.S)
    if not match:
        return None
    name, path = f"{match[1]}:{match[2]}", match[3]
    _entry(name)
    if not path:
        raise PretrainedError(f"{spec!r}: name the checkpoint file as {name}=PATH (basisnet downloads nothing)")
    return name, path


def read_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """A state dict from a ``.pth``/``.pt`` file (``torch.load(weights_only=True)``) or ``.safetensors``.

    Common wrappers are unwrapped: ``{"state_dict": ...}`` / ``{"model": ...}`` and DDP's ``module.`` prefix.
    """
    path = Path(path)
    if not path.is_file():
        raise PretrainedError(f"checkpoint not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(path)
        else:  # training checkpoints (timm's, torchvision's references) also hold their argparse options
            with torch.serialization.safe_globals([argparse.Namespace]):
                state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch / safetensors raise several types for foreign or truncated files
        raise PretrainedError(f"cannot read checkpoint {path}: {e}") from None
    for key in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise PretrainedError(f"{path} holds no state dict of tensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def _block_prefixes(layout: Layout, count: int) -> Iterator[str]:
    if not layout.stages:
        yield from (layout.block.format(b=b, b1=b + 1) for b in range(count))
        return
    if sum(layout.stages) != count:
        raise ValueError(f"layout stages {layout.stages} hold {sum(layout.stages)} blocks, the network {count}")
    for stage, size in enumerate(layout.stages):
        yield from (layout.block.format(stage=stage, i=i) for i in range(size))


def _module_map(name: str) -> dict[str, str]:
    """basisnet module prefix -> source module prefix, for every layer of the named network."""
    entry = _entry(name)
    layout, spec = _layout(name), ARCHS[entry.arch]
    last_index = len(layout.stages) if layout.stages else len(spec.blocks) + 1
    pairs = {"stem.0": layout.stem[0], "stem.1": layout.stem[1],
             "last_conv.0": layout.last[0].format(last_index=last_index),
             "last_conv.1": layout.last[1].format(last_index=last_index)}
    for b, (row, prefix) in enumerate(zip(spec.blocks, _block_prefixes(layout, len(spec.blocks)))):
        in_ch = spec.stem if b == 0 else spec.blocks[b - 1].out
        has_expand = row.expanded != in_ch
        parts = [("expand", layout.expand)] if has_expand else []
        parts.append(("depthwise", layout.depthwise if has_expand else layout.depthwise_no_expand or layout.depthwise))
        if row.se and layout.se:
            parts.append(("se", layout.se))
        parts.append(("project", layout.project if has_expand else layout.project_no_expand or layout.project))
        for n, (part, (first, second)) in enumerate(parts):
            ours = ("se.fc1", "se.fc2") if part == "se" else (f"{part}.0", f"{part}.1")
            for mine, theirs in zip(ours, (first, second)):
                pairs[f"blocks.{b}.{mine}"] = f"{prefix}.{theirs.format(n=n, n1=n + 1)}"
    for i, theirs in enumerate(layout.head):
        pairs[f"head.{i}.fc"] = theirs
    return pairs


def convert_state_dict(name: str, state: Mapping[str, Tensor] | nn.Module) -> dict[str, Tensor]:
    """A torchvision / timm state dict (or module) under basisnet's names, for a static ``MobileNet``.

    Every tensor of the source must be used and every basisnet layer found; otherwise ``PretrainedError``
    lists the tensors that did not match (the checkpoint is another architecture or another library's).
    Shapes are checked where the tensors are loaded (they depend on the target's width and classes).
    """
    if isinstance(state, nn.Module):
        state = state.state_dict()
    prefixes = _module_map(name)
    out, used, missing = {}, set(), []
    for mine, theirs in prefixes.items():
        keys = [k for k in state if k.startswith(theirs + ".") and "." not in k[len(theirs) + 1:]]
        if not keys:
            missing.append(f"{theirs}.* (basisnet {mine})")
        for key in keys:
            tensor = state[key]
            if mine.startswith("head.") and tensor.dim() == 4:  # timm's conv_head: a 1x1 conv after pooling
                tensor = tensor.flatten(1)
            out[f"{mine}.{key[len(theirs) + 1:]}"] = tensor
            used.add(key)
    unused = sorted(set(state) - used)
    if missing or unused:
        lines = [f"  not in the checkpoint: {m}" for m in missing[:20]] + [f"  not used: {k}" for k in unused[:20]]
        more = len(missing) + len(unused) - len(lines)
        raise PretrainedError(f"the checkpoint is not {name}:\n" + "\n".join(lines)
                              + (f"\n  ... and {more} more" if more > 0 else ""))
    return out


def load_pretrained(name: str, source: str | Path | Mapping[str, Tensor] | nn.Module, num_classes: int | None = None,
                    **kwargs: Any) -> MobileNet:
    """A static basisnet ``MobileNet`` computing what the named torchvision / timm network computes.

    ``source``: a checkpoint file, a state dict or the module itself. ``num_classes`` other than the
    checkpoint's gives a freshly initialised classifier; ``kwargs`` go to ``MobileNet`` (e.g. ``dropout``).
    """
    entry = _entry(name)
    state = read_checkpoint(source) if isinstance(source, (str, Path)) else source
    tensors = convert_state_dict(name, state)
    classes = tensors[f"head.{len(_layout(name).head) - 1}.fc.weight"].shape[0]
    model = MobileNet(**{**entry.model_kwargs(), "num_classes": num_classes or classes, **kwargs})
    load_into(model, name, tensors)
    return model.eval()


def load_into(model: MobileNet, name: str, tensors: Mapping[str, Tensor], noise: float = 0.0,
              generator: torch.Generator | None = None) -> list[str]:
    """Load converted ``tensors`` into ``model`` (basis layers take noisy copies); nothing changes on error.

    Returns notes for the log: a classifier left at its own initialisation because the class counts
    differ, a BatchNorm epsilon other than the source's (the outputs then differ slightly).
    """
    entry = _entry(name)
    mine = {"arch": model.config["arch"], "width": model.config["width"]}
    if mine != {"arch": entry.arch, "width": 1.0}:
        raise PretrainedError(f"{name} is {entry.arch} at width 1.0; the model is {mine['arch']} at width {mine['width']}")
    state = model.state_dict()
    # Older or converted files may lack BatchNorm's step counters, which PyTorch's own loading tolerates.
    tensors = {**{k: v for k, v in state.items() if k.endswith("num_batches_tracked")}, **tensors}
    tensors, notes = keep_own_classifiers(model, tensors)
    try:
        spread_into_bases(model, tensors, noise, source=name, generator=generator)
    except UpcycleError as err:
        raise PretrainedError(str(err)) from None
    eps = model.config["norm_eps"]
    if eps != entry.norm_eps:
        notes.append(f"BatchNorm eps {eps:g} vs {entry.norm_eps:g} in {name}: set norm_eps={entry.norm_eps:g} "
                     "for the source's exact outputs")
    return notes
