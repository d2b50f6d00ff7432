"""What ``predict`` and ``export`` serve: a run directory or a weights file, behind one small interface.

A user holds two kinds of trained model: a run directory (``basisnet train``) and a weights file
(``basisnet specialize``'s static specialist, ``basisnet convert``'s imported MobileNet, a run's own
``best.safetensors`` copied elsewhere). Serving needs the same four things of both: the network, the
preprocessing an image needs before stage 1, the class names and where its exported stages are cached.
:class:`RunModel` reads them from the run's files, :class:`WeightsModel` from the file's metadata (or,
for a run's weights file still inside its run, from that run); :func:`open_served` picks one by what the
path is. Evaluation needs a run's data as well, so it keeps taking run directories only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

from torch import nn

from .data import EvalTransform
from .models import create_model
from .train import DataConfig, RunDir, load_config, load_run_model, read_weights_metadata, resolve_weights

__all__ = ["DEFAULT_THRESHOLD", "Preprocess", "RunModel", "Served", "WeightsModel", "open_served"]

DEFAULT_THRESHOLD = 0.8  # predict's threshold where nothing calibrated one


@dataclass(frozen=True)
class Preprocess:
    """What an image needs before stage 1, as the model's evaluation did it."""

    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    eval_crop: float = 1.0

    @classmethod
    def of(cls, data: DataConfig) -> Preprocess:
        return cls(data.image_size, tuple(data.mean), tuple(data.std), data.eval_crop)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocess:
        return cls(int(d["image_size"]), tuple(d["mean"]), tuple(d["std"]), float(d.get("eval_crop", 1.0)))

    def as_dict(self) -> dict[str, Any]:
        """The form ``stages.json`` and weights metadata hold, with the input convention spelled out."""
        return {"image_size": self.image_size, "mean": list(self.mean), "std": list(self.std),
                "eval_crop": self.eval_crop,
                "input": "float32 NCHW RGB in [0, 1] (pixels / 255), then (x - mean) / std per channel"}

    def transform(self) -> EvalTransform:
        return EvalTransform(self.mean, self.std, size=self.image_size)


class Served(Protocol):
    """A trained model as ``predict`` and ``export`` take it."""

    path: Path  # as the user named it

    @property
    def weights(self) -> Path: ...  # the file the network is built from (an export older than it is redone)

    @property
    def preprocess(self) -> Preprocess: ...

    @property
    def classes(self) -> list[str]: ...

    def build(self) -> nn.Module: ...  # in eval mode

    def onnx(self, batch: int | str) -> Path: ...  # where its stages exported for ``batch`` are cached

    def threshold(self) -> tuple[float, str]: ...  # predict's default threshold and where it came from


@dataclass(frozen=True)
class RunModel:
    """A run directory: its best weights, its config's preprocessing, its classes.json."""

    path: Path

    @property
    def run(self) -> RunDir:
        return RunDir(self.path)

    @property
    def weights(self) -> Path:
        return resolve_weights(self.path)

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess.of(load_config(self.run.require_config()).data)

    @property
    def classes(self) -> list[str]:
        return json.loads(self.run.classes.read_text())

    def build(self) -> nn.Module:
        return load_run_model(self.path, create_model)

    def onnx(self, batch: int | str) -> Path:
        return self.run.onnx(batch)

    def threshold(self) -> tuple[float, str]:
        """The threshold the run's latest early-exit evaluation picked (``basisnet evaluate``), so serving
        answers as calibrated; else :data:`DEFAULT_THRESHOLD`."""
        evaluation = self.run.evaluation("early-exit")
        if evaluation.is_file():
            return float(json.loads(evaluation.read_text())["result"]["threshold"]), f"picked by evaluate: {evaluation}"
        return DEFAULT_THRESHOLD, "the default: run `basisnet evaluate` to pick one for this run"


@dataclass(frozen=True)
class WeightsModel:
    """A basisnet weights file: the network from its ``model`` metadata; preprocessing and classes from its
    ``preprocess`` / ``classes`` metadata, or from the run directory it sits in (a run's best weights)."""

    path: Path

    @property
    def weights(self) -> Path:
        return self.path

    @cached_property
    def _metadata(self) -> dict[str, str]:  # read once: reading it reads the whole file
        return read_weights_metadata(self.path)

    @property
    def _run(self) -> RunModel | None:
        beside = RunModel(self.path.parent)
        return beside if beside.run.config.is_file() and beside.run.classes.is_file() else None

    @property
    def preprocess(self) -> Preprocess:
        meta = self._metadata
        if "preprocess" in meta:
            return Preprocess.from_dict(json.loads(meta["preprocess"]))
        if self._run is not None:
            return self._run.preprocess
        raise ValueError(f"{self.path} records no preprocessing (no 'preprocess' metadata) and is not inside a run "
                         "directory: write it again with `basisnet specialize` or `basisnet convert`")

    @property
    def classes(self) -> list[str]:
        meta = self._metadata
        if "classes" in meta:
            return json.loads(meta["classes"])
        if self._run is not None:
            return self._run.classes
        return [str(k) for k in range(json.loads(meta["model"])["kwargs"]["num_classes"])]  # class indices

    def build(self) -> nn.Module:
        return load_run_model(self.path, create_model)

    def onnx(self, batch: int | str) -> Path:
        return self.path.with_name(f"{self.path.stem}_onnx_batch{batch}")

    def threshold(self) -> tuple[float, str]:
        if self._run is not None:
            return self._run.threshold()
        return DEFAULT_THRESHOLD, "the default (a weights file holds no calibration)"


def open_served(path: str | Path, purpose: str = "") -> Served:
    """A run directory or a weights file, by what ``path`` is; anything else is an error saying which it is
    not (``purpose``: how the message starts, e.g. ``"predict: "``)."""
    path = Path(path)
    if path.is_dir():
        RunDir(path).require_config(purpose)
        return RunModel(path)
    if path.is_file():
        if "model" not in read_weights_metadata(path):
            raise ValueError(f"{purpose}{path} is not a basisnet weights file (no 'model' metadata)")
        return WeightsModel(path)
    raise FileNotFoundError(f"{purpose}{path} does not exist: give a run directory or a weights file")
