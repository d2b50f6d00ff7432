"""Run configuration: typed dataclasses, YAML loading, ``key=value`` overrides.

Every option is checked (name, type, range) before any work starts, so a typo
in a long run's config fails in the first second instead of silently using a
default or crashing hours later. The dataclasses are frozen: what the machine and
the data decide (``basisnet.resolve``) makes a new config, so the one a run was
given and the one it trained with can both be trusted.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence, Union

import yaml

__all__ = [
    "ConfigError", "ModelConfig", "DataConfig", "TrainConfig", "RunConfig",
    "load_config", "save_config", "validate_config", "config_to_dict", "config_from_dict", "config_help", "config_diff",
]

# Keys that only change bookkeeping or speed, so a resumed run may change them without losing exactness.
_RESUME_FREE_KEYS = frozenset({
    "train.log_interval", "train.checkpoint_every_steps", "train.tensorboard", "data.num_workers",
    "data.eval_batch_size", "train.device",
})


class ConfigError(ValueError):
    """A config key is unknown, has the wrong type, or an out-of-range value."""


def _opt(default: Any, help: str, **kwargs: Any) -> Any:
    """Dataclass field with a help text, so every key documents itself."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help}, **kwargs)
    return field(default=default, metadata={"help": help}, **kwargs)


@dataclass(frozen=True)
class ModelConfig:
    """Which network to build; passed to ``create_model(name, **kwargs)``."""

    name: str = _opt("basisnet", "Registered model name (see basisnet.models.list_models()).")
    kwargs: dict[str, Any] = _opt({}, "Keyword arguments of the model constructor (e.g. num_classes, num_bases).")


@dataclass(frozen=True)
class DataConfig:
    """Where the images come from and how batches are formed and augmented."""

    source: str = _opt("shapes", "Dataset: a directory / archive path, or 'shapes' for the built-in synthetic set.")
    val_size: Union[int, float] = _opt(
        0.1, "Held-out validation split taken from the training data: an int is a count, a float in (0, 1) "
        "a fraction (0.1 = 5000 images on CIFAR); 0 = no held-out split.")
    image_size: int = _opt(32, "Side of the square network input in pixels.")
    batch_size: int = _opt(128, "Global training batch size: with K processes (torchrun) each takes batch_size / K.")
    eval_batch_size: int = _opt(256, "Global evaluation batch size, split over the processes like batch_size.")
    crop_padding: int = _opt(4, "Zero padding (pixels) before the random crop; 0 disables cropping.")
    flip: bool = _opt(True, "Random horizontal flip during training.")
    mean: tuple[float, ...] = _opt((0.4914, 0.4822, 0.4465), "Per-channel normalisation mean (RGB, 0..1 scale).")
    std: tuple[float, ...] = _opt((0.2470, 0.2435, 0.2616), "Per-channel normalisation std (RGB, 0..1 scale).")
    skip_bad: bool = _opt(False, "Skip unreadable image files (with a warning) instead of failing.")
    num_workers: int = _opt(0, "Background workers decoding data; 0 loads in the main process.")
    loader: Literal["auto", "memory", "stream"] = _opt(
        "auto", "memory: decode the whole set once into RAM (CIFAR-size sets); stream: decode per batch in "
        "num_workers DataLoader workers (ImageNet-size sets, tar shards, random-resized crops); auto: stream when "
        "data.train_crop is 'resized' or the decoded training set would exceed data.memory_limit_gb.")
    memory_limit_gb: float = _opt(16.0, "With data.loader=auto: largest decoded training set (GB) kept in memory.")
    train_crop: Literal["pad", "resized"] = _opt(
        "pad", "pad: pad + random crop + flip on the device (CIFAR recipe); resized: RandomResizedCrop + flip per "
        "image in the workers (ImageNet recipe; needs the stream loader).")
    crop_scale: tuple[float, ...] = _opt((0.08, 1.0), "train_crop=resized: range of the crop's area fraction.")
    crop_ratio: tuple[float, ...] = _opt((0.75, 4 / 3), "train_crop=resized: range of the crop's aspect ratio.")
    augment: Literal["none", "randaugment", "trivialaugment"] = _opt(
        "none", "train_crop=resized: extra per-image policy after crop and flip.")
    augment_ops: int = _opt(2, "augment=randaugment: operations per image.")
    augment_magnitude: int = _opt(9, "augment=randaugment: magnitude bin, 0..30.")
    decoder: Literal["auto", "pillow", "simplejpeg"] = _opt(
        "auto", "Stream loader: JPEG decoder; simplejpeg (pip install 'basisnet[fast-jpeg]') measured faster "
        "than Pillow in `basisnet bench loader`; auto uses it when installed. The two differ slightly in pixels: keep one per run.")
    eval_crop: float = _opt(1.0, "Stream loader: evaluation resizes the shorter side to image_size / eval_crop and "
                            "takes the central image_size square (ImageNet: 0.875, i.e. 256 -> 224).")
    seed: int = _opt(0, "Seed of the train/val split and of the batch order.")
    subset: int = _opt(0, "Train on a seeded random sample of N images of the training split (smoke runs); 0 = all.")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, regularisation and bookkeeping of the training loop."""

    epochs: int = _opt(100, "Number of passes over the training set.")
    optimizer: Literal["sgd", "rmsprop", "adamw"] = _opt("sgd", "Optimizer: sgd, rmsprop (TF-style) or adamw.")
    lr: float = _opt(0.1, "Peak learning rate, reached at the end of the warm-up.")
    momentum: float = _opt(0.9, "Momentum of sgd / rmsprop (ignored by adamw).")
    weight_decay: float = _opt(5e-4, "Weight decay; never applied to biases, norm parameters or no_weight_decay() names.")
    nesterov: bool = _opt(True, "Nesterov momentum for sgd.")
    warmup_epochs: float = _opt(5.0, "Linear warm-up length in epochs (per step, fractions allowed).")
    min_lr: float = _opt(0.0, "Learning rate at the end of the cosine schedule.")
    schedule: Literal["cosine", "constant"] = _opt("cosine", "Learning-rate shape after warm-up.")
    label_smoothing: float = _opt(0.0, "Label smoothing of the cross-entropy, in [0, 1).")
    aux_weight: float = _opt(1.0, "Weight of every non-final exit: loss = CE(last) + aux_weight * sum CE(earlier).")
    init_from: dict[str, str] = _opt({}, "Start parts of the model from trained weights: {part: run directory, weights "
                                     "file or a torchvision/timm checkpoint as SOURCE:NAME=PATH (e.g. "
                                     "torchvision:mobilenet_v3_large=mobilenet_v3_large-8738ca79.pth; a new classifier when "
                                     "the class counts differ)}, part = 'model' (all), 'specialist' or 'lightweight'; a "
                                     "static kernel is copied into every basis (plus init_noise). Ignored on --resume.")
    init_noise: float = _opt(0.01, "Noise added to each basis copy (by init_from and at the end of the static phase), "
                             "relative to the kernel's std.")
    static_phase: float = _opt(0.5, "BasisNet only: fraction of the epochs in which the specialist trains as one static "
                               "net (bases tied, coefficients uniform) before every basis becomes its kernel plus "
                               "init_noise and the coefficient head starts learning; 0 = bases mixed from the first "
                               "step. Skipped when init_from starts the specialist (it is upcycled already).")
    self_distill: float = _opt(0.0, "Self-distillation weight w of every non-final exit: its loss is (1 - w) * CE + "
                               "w * KD from the last exit's detached prediction (every multi-exit model); 0 = off.")
    self_distill_temperature: float = _opt(4.0, "Softmax temperature of the self-distillation term.")
    gradient_equilibrium: bool = _opt(False, "Multi-exit models with a shared trunk (msdnet, ranet): every trunk block "
                                      "gets the mean, not the sum, of its exits' gradients (IMTA); forward unchanged.")
    kd_teacher: Union[str, None] = _opt(None, "Run directory or weights file of a distillation teacher; null = no KD.")
    kd_weight: float = _opt(0.5, "With a teacher: loss = (1 - kd_weight) * CE part + kd_weight * KD (final exit).")
    kd_temperature: float = _opt(4.0, "Softmax temperature of the distillation term.")
    basis_lr_scale: bool = _opt(True, "SGD only: basis kernels get lr x N and weight_decay / N, so a kernel mixed "
                                "from N bases learns at the rate of a static kernel.")
    ema_decay: float = _opt(0.0, "Decay of the weight EMA used for evaluation and 'best'; 0 disables it.")
    grad_clip: float = _opt(0.0, "Clip the global gradient norm to this value; 0 disables clipping.")
    channels_last: bool = _opt(False, "Use channels_last memory format (faster convs on CPU and recent GPUs).")
    compile: Union[bool, Literal["inductor", "aot_eager", "eager"]] = _opt(
        False, "torch.compile the training forward: true (= 'inductor', torch.compile's default) or a backend name "
        "('aot_eager' checks capture without code generation); false runs eagerly.")
    seed: int = _opt(0, "Seed of initialisation-independent randomness (augmentation, dropout).")
    device: Literal["auto", "cpu", "cuda"] = _opt("auto", "Where to train: auto = CUDA when a GPU is visible, else CPU.")
    amp: Literal["off", "bf16", "fp16"] = _opt(
        "off", "Mixed precision of forward and loss (autocast): bf16, or fp16 with a gradient scaler; off = float32.")
    tensorboard: bool = _opt(False, "Also log scalars to RUN_DIR/tensorboard (needs the tensorboard package).")
    log_interval: int = _opt(50, "Update the progress bar statistics every this many steps.")
    eval_every: int = _opt(1, "Validate every this many epochs (the last epoch is always validated).")
    checkpoint_every_steps: int = _opt(0, "Also save a resumable mid-epoch checkpoint every this many steps; 0 = only at epoch ends.")


@dataclass(frozen=True)
class RunConfig:
    """Everything needed to reproduce a run; saved as ``config.yaml`` in the run directory."""

    model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "Network to train."})
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "Dataset and augmentation."})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "Training loop."})


# ---------------------------------------------------------------- conversion


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (lists, no tuples) that YAML and ``torch.load(weights_only=True)`` accept."""
    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v
    return plain(cfg)


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(hint))
    if typing.get_origin(hint) in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "null"
    if typing.get_origin(hint) is tuple:
        return f"list of {_type_name(typing.get_args(hint)[0])}"
    return getattr(typing.get_origin(hint) or hint, "__name__", str(hint))


def _is_plain(value: Any, depth: int = 0) -> bool:
    """Finite numbers, strings, booleans, None and (shallow) lists / string-keyed dicts of them: what a
    checkpoint's ``weights_only`` state can hold. Rejects dates and self-referencing YAML anchors."""
    if depth > 8:
        return False
    if value is None or isinstance(value, (bool, int, str)):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return all(_is_plain(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_plain(v, depth + 1) for k, v in value.items())
    return False


def _coerce(value: Any, hint: Any) -> Any:
    """Return ``value`` converted to ``hint`` or raise TypeError (an int is a fine float)."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(hint):  # order matters: int before float keeps counts as counts
            try:
                return _coerce(value, arg)
            except TypeError:
                pass
        raise TypeError
    if origin is Literal:
        if value is False and "off" in typing.get_args(hint):  # YAML 1.1 reads a bare `off` as false
            return "off"
        if value in typing.get_args(hint) and not isinstance(value, bool):
            return value
        raise TypeError
    if hint is type(None):
        if value is None:
            return None
        raise TypeError
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise TypeError
    if hint is float and isinstance(value, str):
        # YAML 1.1 reads "1e-4" (no dot) as text: accept any numeric text for float keys.
        try:
            value = float(value)
        except ValueError:
            raise TypeError from None
    if hint in (int, float, str):
        ok = isinstance(value, hint) or (hint is float and isinstance(value, int))
        if ok and not isinstance(value, bool):
            if hint is float and not math.isfinite(value):
                raise TypeError  # NaN / inf: no run can use them
            return hint(value)
        raise TypeError
    if origin is tuple:
        if isinstance(value, (list, tuple)):
            return tuple(_coerce(v, typing.get_args(hint)[0]) for v in value)
        raise TypeError
    if origin is dict:
        if isinstance(value, dict) and all(isinstance(k, str) for k in value) and _is_plain(value):
            return dict(value)
        raise TypeError
    raise AssertionError(f"unsupported config type {hint}")


def config_from_dict(data: Any, cls: type = RunConfig, prefix: str = "", source: str = "config") -> Any:
    """Build ``cls`` from a nested dict, rejecting unknown keys (with a suggestion) and wrong types.

    Missing keys keep their defaults; ``source`` (a file or an override) is named in errors.
    """
    where = f"'{prefix[:-1]}'" if prefix else "the top level"
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at {where}, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    values = {}
    for key, value in data.items():
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; valid keys: {', '.join(fields)}"
            raise ConfigError(f"{source}: unknown config key '{prefix}{key}'{hint}")
        if dataclasses.is_dataclass(hints[key]):
            values[key] = config_from_dict(value, hints[key], f"{prefix}{key}.", source)
            continue
        try:
            values[key] = _coerce(value, hints[key])
        except TypeError:
            raise ConfigError(
                f"{source}: '{prefix}{key}' must be {_type_name(hints[key])}, got {value!r}") from None
    return cls(**values)


# ---------------------------------------------------------------- validation


def _check(ok: bool, key: str, rule: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"'{key}' must be {rule}, got {value!r}")


def validate_config(cfg: RunConfig) -> None:
    """Reject out-of-range values, naming the key."""
    d, t = cfg.data, cfg.train
    _check(bool(cfg.model.name), "model.name", "a non-empty string", cfg.model.name)
    _check(bool(d.source), "data.source", "a non-empty string", d.source)
    if isinstance(d.val_size, float):
        _check(0.0 < d.val_size < 1.0, "data.val_size", "a count (int >= 0) or a fraction in (0, 1)", d.val_size)
    else:
        _check(d.val_size >= 0, "data.val_size", "a count (int >= 0) or a fraction in (0, 1)", d.val_size)
    for key in ("image_size", "batch_size", "eval_batch_size"):
        _check(getattr(d, key) >= 1, f"data.{key}", ">= 1", getattr(d, key))
    for key in ("crop_padding", "num_workers", "subset"):
        _check(getattr(d, key) >= 0, f"data.{key}", ">= 0", getattr(d, key))
    _check(d.memory_limit_gb > 0, "data.memory_limit_gb", "> 0", d.memory_limit_gb)
    _check(len(d.crop_scale) == 2 and 0 < d.crop_scale[0] <= d.crop_scale[1] <= 1, "data.crop_scale",
           "[min, max] with 0 < min <= max <= 1", list(d.crop_scale))
    _check(len(d.crop_ratio) == 2 and 0 < d.crop_ratio[0] <= d.crop_ratio[1], "data.crop_ratio",
           "[min, max] with 0 < min <= max", list(d.crop_ratio))
    _check(d.augment_ops >= 1, "data.augment_ops", ">= 1", d.augment_ops)
    _check(0 <= d.augment_magnitude <= 30, "data.augment_magnitude", "in [0, 30]", d.augment_magnitude)
    _check(0 < d.eval_crop <= 1, "data.eval_crop", "in (0, 1]", d.eval_crop)
    _check(not (d.train_crop == "resized" and d.loader == "memory"), "data.train_crop",
           "'pad' with data.loader=memory (random-resized crops need the full-size files: data.loader=stream)",
           d.train_crop)
    _check(d.augment == "none" or d.train_crop == "resized", "data.augment",
           "'none' unless data.train_crop=resized (policies run per image in the stream workers)", d.augment)
    _check(len(d.mean) == 3, "data.mean", "a list of 3 floats (RGB)", list(d.mean))
    _check(len(d.std) == 3 and all(s > 0 for s in d.std), "data.std", "a list of 3 positive floats (RGB)", list(d.std))
    _check(t.epochs >= 1, "train.epochs", ">= 1", t.epochs)
    _check(t.lr > 0, "train.lr", "> 0", t.lr)
    _check(0 <= t.min_lr <= t.lr, "train.min_lr", f"in [0, train.lr={t.lr}]", t.min_lr)
    _check(0 <= t.momentum < 1, "train.momentum", "in [0, 1)", t.momentum)
    _check(not (t.nesterov and t.optimizer == "sgd" and t.momentum == 0), "train.nesterov",
           "false when train.momentum is 0 (Nesterov needs momentum)", t.nesterov)
    _check(0 <= t.warmup_epochs <= t.epochs, "train.warmup_epochs", f"in [0, train.epochs={t.epochs}]", t.warmup_epochs)
    _check(0 <= t.label_smoothing < 1, "train.label_smoothing", "in [0, 1)", t.label_smoothing)
    _check(0 <= t.static_phase < 1, "train.static_phase", "a fraction of the epochs in [0, 1)", t.static_phase)
    _check(0 <= t.ema_decay < 1, "train.ema_decay", "in [0, 1) (0 disables the EMA)", t.ema_decay)
    _check(0 <= t.kd_weight <= 1, "train.kd_weight", "in [0, 1]", t.kd_weight)
    _check(t.kd_teacher is None or bool(t.kd_teacher), "train.kd_teacher", "a path or null", t.kd_teacher)
    _check(0 <= t.self_distill <= 1, "train.self_distill", "in [0, 1]", t.self_distill)
    _check(t.self_distill_temperature > 0, "train.self_distill_temperature", "> 0", t.self_distill_temperature)
    _check(t.kd_temperature > 0, "train.kd_temperature", "> 0", t.kd_temperature)
    for key in ("weight_decay", "aux_weight", "grad_clip", "checkpoint_every_steps"):
        _check(getattr(t, key) >= 0, f"train.{key}", ">= 0", getattr(t, key))
    _check(t.amp == "off" or t.device != "cpu" or t.amp == "bf16", "train.amp",
           "off or bf16 on the CPU (fp16 autocast is a GPU feature)", t.amp)
    for key in ("log_interval", "eval_every"):
        _check(getattr(t, key) >= 1, f"train.{key}", ">= 1", getattr(t, key))


# ---------------------------------------------------------------- files and overrides


def _parse_override(text: str) -> dict[str, Any]:
    """``a.b.c=value`` -> ``{"a": {"b": {"c": yaml(value)}}}``."""
    key, sep, raw = text.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        raise ConfigError(f"override {text!r} must look like section.key=value (e.g. train.lr=0.1)")
    try:
        value: Any = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({e})") from None
    for part in reversed(parts):
        value = {part: value}
    return value


def _merge(base: dict[str, Any], update: dict[str, Any]) -> None:
    """Deep-merge ``update`` into ``base``: nested mappings (e.g. model.kwargs) are merged, not replaced."""
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> RunConfig:
    """Defaults, then the YAML file (if any), then ``section.key=value`` overrides (values parsed as YAML).

    Raises ``ConfigError`` naming the file or override and the key; nothing is started before that.
    """
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            loaded = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({e})") from None
        data = {} if loaded is None else loaded
        config_from_dict(data, source=str(path))
    for text in overrides:
        update = _parse_override(text)
        config_from_dict(update, source=f"override {text!r}")
        _merge(data, update)
    cfg = config_from_dict(data)
    validate_config(cfg)
    return cfg


def save_config(cfg: RunConfig, path: str | Path) -> None:
    """Write the resolved config (every key, defaults included) as YAML that ``load_config`` reads back."""
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def config_help(cls: type = RunConfig, prefix: str = "") -> list[tuple[str, Any, str]]:
    """``(dotted key, default, help)`` for every option, e.g. for ``--help`` output or docs."""
    rows = []
    for f in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(hint):
            rows += config_help(hint, f"{prefix}{f.name}.")
        else:
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default
            rows.append((f"{prefix}{f.name}", list(default) if isinstance(default, tuple) else default,
                         f.metadata["help"]))
    return rows


def config_diff(saved: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    """``key: old -> new`` for every setting that would make ``current`` a different run than ``saved``.

    A key the saved config lacks (written before the key existed) counts as its default.
    """
    if not prefix:
        saved = config_to_dict(config_from_dict(saved, source="the saved config"))
    diffs = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict) and name != "model.kwargs":
            diffs += config_diff(a, b, f"{name}.")
        elif a != b and name not in _RESUME_FREE_KEYS:
            diffs.append(f"{name}: {a!r} -> {b!r}")
    return diffs
