"""A config is resolved once (``basisnet.resolve``) and nothing downstream rewrites it."""

from __future__ import annotations

import copy
import dataclasses
import sys
from pathlib import Path

import pytest
import torch

import basisnet.workflow
from basisnet.resolve import resolve_run, same_run
from basisnet.train import ConfigError, load_config
from helpers import jpeg_tree

SHAPES_SMALL = ["data.source=shapes", "train.device=cpu", "data.val_size=100", "data.subset=64", "data.batch_size=32", "train.warmup_epochs=0",
                "model.kwargs={specialist_width: 0.35, num_bases: 2}"]


def test_resolution_fills_what_the_data_decides_and_leaves_the_config_alone(tmp_path: Path) -> None:
    tree = jpeg_tree(tmp_path / "tree" / "train", per_class=4)
    cfg = load_config(None, [f"data.source={tree.parent}", "data.loader=stream", "data.image_size=24",
                             "data.val_size=3"])
    before = copy.deepcopy(cfg)
    run = resolve_run(cfg, training=False)
    assert cfg == before  # a new config, the given one untouched
    assert (run.source_kind, run.loader, run.classes) == ("folder", "stream", ("ant", "bee", "cat"))
    assert run.model_kwargs["num_classes"] == 3 and run.model_kwargs["resolution"] == 24
    assert run.config.data.decoder in ("pillow", "simplejpeg")  # the stream records the decoder it reads with
    assert run.train_index is not None and len(run.train_index) == 12  # scanned once, handed to the stream
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.config.train.epochs = 3  # type: ignore[misc]


def test_resolution_checks_what_depends_on_the_machine_and_the_data(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="model.kwargs.num_classes is 7 but shapes has 10 classes"):
        resolve_run(load_config(None, ["model.kwargs.num_classes=7"]), training=False)
    if not torch.cuda.is_available():  # train.device=auto lands on the CPU here
        with pytest.raises(ConfigError, match="train.amp=fp16 needs a CUDA device"):
            resolve_run(load_config(None, ["train.amp=fp16"]))
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ConfigError, match="data.batch_size=128 is the global batch size and must be divisible by the 3"):
        resolve_run(load_config(None, ["train.device=cpu"]))
    resolve_run(load_config(None, ["train.device=cpu"]), training=False)  # evaluation is one process


def test_same_run_compares_resolved_runs() -> None:
    given = load_config(None, SHAPES_SMALL)
    named = load_config(None, [*SHAPES_SMALL, "model.kwargs.num_classes=10", "model.kwargs.resolution=32"])
    assert same_run(given, named) == []
    assert same_run(given, load_config(None, [*SHAPES_SMALL, "train.epochs=3"])) == ["train.epochs: 100 -> 3"]


def test_train_run_resolves_once_and_fit_gets_the_resolved_config(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """From ``train_run`` to ``fit``: the given config is not rewritten, ``fit`` trains the resolved one, and
    ``basisnet/inputs.py`` is entered from ``train_run`` only (``open_inputs`` once, then the object's
    accessors), never again from below it."""
    cfg = load_config(None, SHAPES_SMALL)
    before = copy.deepcopy(cfg)
    got = []
    monkeypatch.setattr(basisnet.workflow, "fit", lambda model, data, config, *a, **k: got.append(config) or {})
    inputs_py = str(Path(basisnet.workflow.__file__).with_name("inputs.py"))
    entries: list[tuple[str, str]] = []

    def profile(frame, event, arg):  # every call into inputs.py, with the file it came from
        if event == "call" and frame.f_code.co_filename == inputs_py and frame.f_back is not None:
            caller = frame.f_back.f_code.co_filename
            if caller != inputs_py:
                entries.append((Path(caller).name, frame.f_code.co_name))

    sys.setprofile(profile)
    try:
        basisnet.workflow.train_run(cfg, tmp_path / "run", progress=False)
    finally:
        sys.setprofile(None)
    assert cfg == before
    assert got == [resolve_run(cfg).config] and got[0].model.kwargs["num_classes"] == 10
    assert [name for name, _ in entries] == ["workflow.py"] * len(entries)
    assert [fn for _, fn in entries].count("open_inputs") == 1


def test_a_resume_with_another_setting_is_refused_before_the_data_is_read(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from basisnet.train import RunDir, save_config

    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    save_config(resolve_run(load_config(None, SHAPES_SMALL)).config, run.config)
    opened = []
    monkeypatch.setattr(basisnet.workflow, "open_inputs", lambda *a, **k: opened.append(1))
    with pytest.raises(ConfigError, match=r"resuming would not continue it:\n  train.lr: 0.1 -> 0.2"):
        basisnet.workflow.train_run(load_config(run.config, ["train.lr=0.2"]), run.path, resume=True)
    assert opened == []
