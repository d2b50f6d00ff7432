"""Reliability through the real entry points: a ``basisnet train`` process SIGKILLed while it writes a
checkpoint leaves the previous one whole and resumes bitwise, SIGTERM stops after the step and a resume may
change bookkeeping keys, divergence stops with the step and the checkpoint, mismatched checkpoints are
explained and change nothing, the config parser only ever raises ConfigError/ValueError, and every bundled
config trains with its own recipe."""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
import yaml
from helpers import CHILD_TIMEOUT_S, basisnet_cli, child_env, jpeg_tree, python_command, run_python
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from basisnet.configs import bundled_config, list_configs
from basisnet.data import BatchLoader, EvalTransform, ImageTensorDataset, TrainAugment
from basisnet.models import MobileNet, create_model
from basisnet.models.pretrained import PRETRAINED, _module_map
from basisnet.train import (
    CheckpointMismatchError, ConfigError, RunConfig, RunDir, TrainData, config_help, fit, load_config, load_run_model,
    load_state, load_weights, read_weights_metadata, validate_config,
)
from basisnet.train.config import config_to_dict
from basisnet.workflow import train_run

pytestmark = pytest.mark.xdist_group("reliability")  # one worker computes the shared runs once

# A small BasisNet on 16x16 SHAPES: 256 images in batches of 16 = 16 steps per epoch, a resumable checkpoint
# every 2 steps; EMA, basis dropout, crop + flip and channels-last on, so every RNG stream must be restored.
TINY = [
    "train.epochs=2", "train.warmup_epochs=0.5", "train.ema_decay=0.9", "train.checkpoint_every_steps=2",
    "data.subset=256", "data.val_size=64", "data.batch_size=16", "data.eval_batch_size=64", "data.image_size=16",
    "model.kwargs.resolution=16", "model.kwargs.lightweight_resolution=8", "model.kwargs.specialist_width=0.35",
    "model.kwargs.num_bases=2", "model.kwargs.basis_dropout=0.1",
    "train.device=cpu",  # bitwise comparisons: CPU kernels even where a GPU is visible
]
STEPS = 2 * 256 // 16


def basisnet_train(*args: str) -> subprocess.CompletedProcess:
    return basisnet_cli("train", *args)


# ``basisnet train ARGS`` whose process SIGKILLs itself at the rename of the NTH write of the file NAME: the
# temporary file is written and fsynced (``atomic_write_bytes``), the old checkpoint not yet replaced.
KILL_IN_WRITE = """
import os, signal, sys
from basisnet.cli import main

name, nth, replace, seen = sys.argv[1], int(sys.argv[2]), os.replace, []

def replace_or_die(src, dst, *args, **kwargs):
    if os.path.basename(dst) == name:
        seen.append(dst)
        if len(seen) == nth:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no flush: what a node failure does
    return replace(src, dst, *args, **kwargs)

os.replace = replace_or_die
sys.exit(main(["train", *sys.argv[3:]]))
"""
KILLED_AT_WRITE = 3  # checkpoints after global steps 2, 4, 6: killed writing step 6's, step 4's must stay whole


def trained_tensors(run_dir: Path) -> dict[str, torch.Tensor]:
    """Weights, EMA and the evaluated weights file of a run, flattened into one dict."""
    state = load_state(run_dir / "last.state.pt")
    out = {f"model/{k}": v for k, v in state["model"].items()}
    out |= {f"ema/{k}": v for k, v in state["ema"].items()}
    out |= {f"file/{k}": v for k, v in safetensors.torch.load_file(run_dir / "last.safetensors").items()}
    return out


def val_history(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "summary.csv") as f:
        return [{k: v for k, v in row.items() if k.startswith(("epoch", "lr", "train_loss", "val_"))}
                for row in csv.DictReader(f)]


def interrupted_run(run: Path, signum: int) -> tuple[subprocess.Popen, str]:
    """``basisnet train`` sent ``signum`` once it has written its first mid-epoch checkpoint; its exit and log."""
    log_path = run.with_suffix(".log")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(python_command("-m", "basisnet", "train", "--config", "shapes_demo", "--output",
                                               str(run), *TINY), env=child_env(), stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + CHILD_TIMEOUT_S  # only stops a hung child
            while time.monotonic() < deadline and proc.poll() is None:
                state = run / "last.state.pt"
                if state.is_file() and load_state(state)["loop"]["batch"] > 0:
                    break
                time.sleep(0.01)
            assert proc.poll() is None, f"training ended before a mid-epoch checkpoint (log: {log_path})"
        finally:
            proc.send_signal(signum)  # the signal under test (also the clean-up if the wait failed)
            proc.wait(timeout=CHILD_TIMEOUT_S)
    return proc, log_path.read_text()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """An uninterrupted run, and the same run SIGKILLed in the middle of writing its third mid-epoch checkpoint
    (between the temporary file and the rename)."""
    tmp = tmp_path_factory.mktemp("kill")
    reference = tmp / "reference"
    out = basisnet_train("--config", "shapes_demo", "--output", str(reference), *TINY)
    assert out.returncode == 0, out.stderr
    killed = tmp / "killed"
    out = run_python("-c", KILL_IN_WRITE, "last.state.pt", str(KILLED_AT_WRITE), "--config", "shapes_demo",
                     "--output", str(killed), *TINY)
    assert out.returncode == -signal.SIGKILL, out.stderr
    return {"reference": reference, "killed": killed, "loop": load_state(killed / "last.state.pt")["loop"],
            "unrenamed": sorted(killed.glob(".last.state.pt.*.tmp"))}


@pytest.mark.slow
def test_killed_mid_epoch_resumes_bitwise(runs: dict, tmp_path: Path) -> None:
    loop = runs["loop"]
    assert (loop["epoch"], loop["batch"], loop["global_step"]) == (0, 4, 4)  # mid-epoch: the checkpoint before
    killed = tmp_path / "killed"  # a copy: the fixture's run stays as the kill left it
    shutil.copytree(runs["killed"], killed)
    out = basisnet_train("--resume", str(killed))
    assert out.returncode == 0, out.stderr
    expected, resumed = trained_tensors(runs["reference"]), trained_tensors(killed)
    assert expected.keys() == resumed.keys()
    assert [k for k in expected if not torch.equal(expected[k], resumed[k])] == []
    assert val_history(killed) == val_history(runs["reference"])
    assert load_state(killed / "last.state.pt")["loop"]["global_step"] == STEPS


def test_sigterm_mid_epoch_resumes_bitwise(runs: dict, tmp_path: Path) -> None:
    """What a scheduler's preemption does: the step in progress finishes, its checkpoint is written, exit 143.
    The resume changes bookkeeping keys (logging, checkpoint interval): accepted, used, and still bitwise."""
    run = tmp_path / "terminated"
    proc, log = interrupted_run(run, signal.SIGTERM)
    loop = load_state(run / "last.state.pt")["loop"]
    assert proc.returncode == 143, log
    assert log.strip().splitlines()[-1] == (
        f"basisnet train: stopped by SIGTERM in epoch {loop['epoch'] + 1} after step {loop['batch']} (global step "
        f"{loop['global_step']}); checkpoint: {run / 'last.state.pt'}; continue with: basisnet train --resume {run}")
    assert 0 < loop["global_step"] < STEPS
    out = basisnet_train("--resume", str(run), "train.log_interval=3", "train.checkpoint_every_steps=5")
    assert out.returncode == 0, out.stderr
    assert load_state(run / "last.state.pt")["config"]["train"]["log_interval"] == 3  # the new value ran
    expected, resumed = trained_tensors(runs["reference"]), trained_tensors(run)
    assert [k for k in expected if not torch.equal(expected[k], resumed[k])] == []
    assert val_history(run) == val_history(runs["reference"])


def test_checkpoint_intact_after_kill(runs: dict) -> None:
    """Killed between writing the new checkpoint's temporary file and renaming it: the previous checkpoint
    (state and weights of global step 4) is whole and loads."""
    (unrenamed,) = runs["unrenamed"]  # the kill landed after the temporary file was complete ...
    assert load_state(unrenamed)["loop"]["global_step"] == 6  # ... and before the rename: step 6's state
    assert runs["loop"]["global_step"] == 4  # the fixture loaded the previous state
    model = load_run_model(runs["killed"] / "last.safetensors", create_model)  # its weights file beside it
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert read_weights_metadata(runs["killed"] / "last.safetensors")["global_step"] == "4"  # the same checkpoint


def test_divergence_stops_naming_step_and_checkpoint(tmp_path: Path) -> None:
    run = tmp_path / "diverged"
    out = basisnet_train("--config", "cifar10_static", "--output", str(run), "data.source=shapes",
                         "model.kwargs.resolution=16", "model.kwargs.width=0.35", "train.lr=10000.0",
                         *[o for o in TINY if not o.startswith("model.")])
    assert out.returncode == 2, out.stderr
    message = out.stderr.strip().splitlines()[-1]
    found = re.match(r"basisnet train: error: non-finite (loss|gradient norm) \((nan|inf)\) at epoch \d+, "
                     r"step \d+ \(global step (\d+)\); training stopped without saving; last good checkpoint: (.*) \(",
                     message)
    assert found and found[4] == str(run / "last.safetensors"), message
    good = load_state(run / "last.state.pt")["loop"]["global_step"]
    assert 0 < good < int(found[3])  # the named checkpoint predates the divergence ...
    model = load_run_model(run / "last.safetensors", create_model)  # ... and holds finite weights
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_resume_with_another_model_lists_the_difference(runs: dict, tmp_path: Path) -> None:
    run = tmp_path / "copy"
    shutil.copytree(runs["reference"], run)
    lr = load_config(run / "config.yaml").train.lr
    out = basisnet_train("--resume", str(run), "model.kwargs.num_bases=3", f"train.lr={lr / 2}")
    assert out.returncode == 2
    assert "config differs from the run" in out.stderr
    assert "'num_bases': 2" in out.stderr and "'num_bases': 3" in out.stderr
    assert f"train.lr: {lr} -> {lr / 2}" in out.stderr


def test_checkpoint_of_another_architecture_or_class_count(runs: dict) -> None:
    """Refused with the differences listed, and the model is left untouched (not even the matching tensors
    of another class count's checkpoint are loaded)."""
    weights = runs["reference"] / "best.safetensors"
    kwargs = yaml.safe_load((runs["reference"] / "config.yaml").read_text())["model"]["kwargs"]
    differs = r"shape mismatch \(\d+\):\n.*: checkpoint \(10, \d+\) vs model \(7, \d+\)"
    other_count = create_model("basisnet", **{**kwargs, "num_classes": 7})
    other_arch = create_model("mobilenetv3_small", num_classes=10, resolution=16)
    before = {id(m): {k: v.clone() for k, v in m.state_dict().items()} for m in (other_count, other_arch)}
    with pytest.raises(CheckpointMismatchError, match=differs):
        load_weights(other_count, weights)
    with pytest.raises(CheckpointMismatchError) as err:
        load_weights(other_arch, weights)
    assert "missing in checkpoint" in str(err.value) and "unexpected in checkpoint" in str(err.value)
    for model in (other_count, other_arch):
        assert [k for k, v in model.state_dict().items() if not torch.equal(v, before[id(model)][k])] == []
    # (the checkpoint shares tensors with the class-count model: had it loaded, they would differ)
    assert set(safetensors.torch.load_file(weights)) & set(before[id(other_count)])


# ------------------------------------------------------------------ config parser fuzz

DEFAULTS = {key: default for key, default, _ in config_help()}
KEYS = list(DEFAULTS)
ODD_KEYS = ["model", "data", "train", "model.kwargs.num_bases", "train.lrr", "data..size", ".train.lr", "x.y.z"]
YAML_VALUES = [
    "", "null", "~", "true", "no", "0", "-1", "1.5", ".inf", "-.inf", ".nan", "1e-4", "1.0e-4", "0x10", "0o7",
    "2001-01-01", "[]", "[1, 2, 3]", "[0.5, 0.5]", "{}", "{a: 1}", "{1: 2}", "'quoted'", "\"x\"", "[", "{", "]",
    "&a [*a]", "*a", "!!binary aGk=", "!!python/object/apply:os.system [ls]", "a: b: c", "- x", "sgd", "adamw",
    "cosine", "shapes", "=", "\x00", "\t", "%", "@", "`",
]
values = st.one_of(st.sampled_from(YAML_VALUES), st.integers(-3, 300).map(str), st.floats(-2, 2).map(repr),
                   st.lists(st.floats(0, 1), min_size=3, max_size=3).map(repr), st.floats().map(repr),
                   st.text(max_size=12))


def plausible(key: str) -> st.SearchStrategy[str]:
    """``key=value`` with a value of the key's own type, so range validation is reached, not only parsing."""
    default = DEFAULTS[key]
    if isinstance(default, bool):
        value = st.booleans().map(str)
    elif isinstance(default, int):
        value = st.integers(-2, 2 * default + 2).map(str)
    elif isinstance(default, float):  # "%f": PyYAML reads "1e-05" as a string
        value = st.floats(-1, 2 * default + 1).map("{:f}".format)
    elif isinstance(default, list):
        value = st.lists(st.floats(-1, 1).map("{:f}".format), min_size=2, max_size=4).map(", ".join).map("[{}]".format)
    else:
        value = st.sampled_from(["sgd", "rmsprop", "cosine", "shapes", "basisnet", "null", "''", "x"])
    return value.map(f"{key}={{}}".format)


well_formed = st.one_of(st.sampled_from(KEYS).flatmap(plausible),
                        st.builds("{}={}".format, st.sampled_from(KEYS + ODD_KEYS), values))
overrides = st.one_of(st.lists(well_formed, max_size=3),
                      st.lists(st.one_of(well_formed, st.text(max_size=24)), max_size=3))
scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 300), st.floats(), st.text(max_size=12),
                    st.sampled_from(YAML_VALUES), st.lists(st.floats(0, 1), min_size=3, max_size=3))
field_names = st.sampled_from(sorted({k.split(".")[1] for k in KEYS}) + ["kwargs", "lrr", "num_bases"])
sections = st.dictionaries(field_names, st.one_of(scalars, st.dictionaries(st.text(max_size=8), scalars, max_size=3)),
                           max_size=6)
documents = st.one_of(
    st.dictionaries(st.sampled_from(["model", "data", "train", "trian", "extra"]), st.one_of(sections, scalars),
                    max_size=4).map(lambda d: yaml.safe_dump(d, allow_unicode=True)),
    st.text(max_size=64),
)


def check_parse(parse: object) -> None:
    """``parse()`` returns a valid RunConfig or raises ConfigError / ValueError with a message."""
    try:
        cfg = parse()  # type: ignore[operator]
    except ValueError as err:  # ConfigError is a ValueError
        assert str(err)
        return
    assert isinstance(cfg, RunConfig)
    validate_config(cfg)


@settings(max_examples=300)
@given(overrides)
def test_config_overrides_fuzz(texts: list[str]) -> None:
    check_parse(lambda: load_config(None, texts))


@settings(max_examples=200)
@given(documents, overrides)
def test_config_file_fuzz(text: str, texts: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        check_parse(lambda: load_config(path, texts))


@pytest.mark.parametrize("override", [
    "train.lr=.inf", "data.mean=[.nan, 0, 0]",  # non-finite floats pass validation
    "model.kwargs.x=&a [*a]",  # a self-referencing value: config_to_dict (every checkpoint) recurses forever
    "model.kwargs.day=2001-01-01",  # not loadable by torch.load(weights_only=True): resume would fail
])
def test_config_rejects_values_a_run_cannot_use(override: str) -> None:
    try:
        load_config(None, [override])
    except ConfigError:
        return
    raise AssertionError(f"{override} accepted")


# ------------------------------------------------------------------ bundled configs

# What makes each bundled config small enough for a test: sizes only (classes, resolution, width, depth, bases).
# The recipe (optimizer, schedule, EMA, smoothing, loader, crops, augmentation, normalisation, static phase,
# pretrained starts) stays the config's own.
SMALL_MODELS = {
    "cifar10_basisnet": ["model.kwargs.specialist_width=0.35", "model.kwargs.num_bases=2"],
    "cifar10_condconv": ["model.kwargs.width=0.35", "model.kwargs.num_bases=2"],
    "cifar10_msdnet": ["model.kwargs.num_blocks=2"],
    "cifar10_ranet": [],
    "cifar10_static": ["model.kwargs.width=0.35"],
    "imagenet_basisnet": ["model.kwargs.specialist_width=0.35", "model.kwargs.lightweight_width=0.35",
                          "model.kwargs.num_bases=2", "model.kwargs.lightweight_resolution=16"],
    # torchvision's checkpoints are width 1.0: the widths stay, the bases and the resolution shrink
    "imagenet_basisnet_upcycled": ["model.kwargs.num_bases=2", "model.kwargs.lightweight_resolution=16"],
    "imagenet_mobilenetv3_large": ["model.kwargs.width=0.35"],
    # 4 scales (the stem's /4, then /2 per scale) need >= 160 px: the coarsest map must survive the exit heads
    "imagenet_msdnet": ["data.image_size=160", "model.kwargs.resolution=160", "model.kwargs.num_blocks=2",
                        "model.kwargs.base=1", "model.kwargs.step=1", "model.kwargs.num_channels=8",
                        "model.kwargs.growth_rate=4"],
    "imagenet_ranet": ["data.image_size=160", "model.kwargs.resolution=160", "model.kwargs.step=1",
                       "model.kwargs.num_channels=8", "model.kwargs.growth_rate=4"],
    "shapes_demo": ["model.kwargs.specialist_width=0.35", "model.kwargs.num_bases=2"],
}
SIZE_KEYS = ("data.source", "data.subset", "data.val_size", "data.image_size", "data.batch_size",
             "data.eval_batch_size", "data.num_workers", "train.epochs", "train.warmup_epochs", "train.device",
             "train.init_from", "model.kwargs.")
OPTIMIZER_STATE = {"sgd": "momentum_buffer", "rmsprop": "square_avg", "adamw": "exp_avg"}


def torchvision_checkpoint(name: str, path: Path) -> str:
    """A random ``torchvision:NAME`` checkpoint under torchvision's tensor names (no torchvision needed)."""
    state, prefixes = MobileNet(**PRETRAINED[name].model_kwargs()).state_dict(), _module_map(name)
    theirs = {}
    for key, tensor in state.items():
        mine = next(m for m in prefixes if key.startswith(m + "."))
        theirs[prefixes[mine] + key[len(mine):]] = tensor
    torch.save(theirs, path)
    return f"{name}={path}"


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("jpegs")
    jpeg_tree(root / "train", per_class=4, sizes=[(48, 40), (40, 56), (64, 48), (36, 36)])
    return root


@pytest.mark.parametrize("name", list_configs())
def test_every_bundled_config_trains_with_its_own_recipe(name: str, jpegs: Path, tmp_path: Path) -> None:
    """``train_run`` builds data, model, optimizer and schedule from the config (as ``basisnet train`` does) and
    trains two epochs of one step each (so BasisNet's static phase ends and the mixed one starts)."""
    bundled = load_config(bundled_config(name))
    small = [f"data.source={jpegs}", "model.kwargs.num_classes=3", "data.val_size=3", "data.batch_size=8",
             "data.eval_batch_size=8", "data.num_workers=0", "data.image_size=32", "model.kwargs.resolution=32"]
    if bundled.data.source == "shapes":  # its own synthetic data
        small = ["data.subset=8", "data.val_size=8", "data.batch_size=8", "data.eval_batch_size=8"]
    if name == "imagenet_basisnet_upcycled":  # num_classes from the data; pretrained starts are the recipe
        small.remove("model.kwargs.num_classes=3")
        sources = {part: torchvision_checkpoint(f"torchvision:mobilenet_v3_{size}", tmp_path / f"{size}.pth")
                   for part, size in (("specialist", "large"), ("lightweight", "small"))}
        small.append(f"train.init_from={json.dumps(sources)}")
    overrides = [*small, *SMALL_MODELS[name], "train.epochs=2", "train.warmup_epochs=0", "train.device=cpu"]
    assert all(o.split("=")[0].startswith(SIZE_KEYS) for o in overrides)  # sizes only, never the recipe
    cfg = load_config(bundled_config(name), overrides)
    result = train_run(cfg, tmp_path / "run", progress=False)
    assert result["global_step"] == 2 and all(math.isfinite(row["train_loss"]) for row in result["history"])
    run = RunDir(tmp_path / "run")
    state = load_state(run.state)
    recipe = {k: v for k, v in config_to_dict(bundled)["train"].items() if k not in ("epochs", "warmup_epochs",
                                                                                      "device", "init_from")}
    assert {k: state["config"]["train"][k] for k in recipe} == recipe  # the recipe ran
    data = ("loader", "train_crop", "augment", "eval_crop", "crop_padding", "flip", "mean", "std")
    assert {k: state["config"]["data"][k] for k in data} == {k: config_to_dict(bundled)["data"][k] for k in data}
    assert state["loader"] == ("StreamLoader" if bundled.data.loader == "stream" else "BatchLoader")
    assert all(OPTIMIZER_STATE[bundled.train.optimizer] in s for s in state["optimizer"]["state"].values())
    assert (state["ema"] is not None) == (bundled.train.ema_decay > 0)
    if bundled.train.init_from:
        assert set(json.loads(run.init.read_text())) == set(bundled.train.init_from) == {"specialist", "lightweight"}
    assert load_run_model(run.path, create_model).num_classes == len(json.loads(run.classes.read_text()))


@pytest.mark.parametrize("name, params_m", [("imagenet_basisnet", 16.49), ("imagenet_mobilenetv3_large", 5.48)])
def test_imagenet_config_builds_the_published_architecture(name: str, params_m: float) -> None:
    cfg = load_config(bundled_config(name))
    assert cfg.model.kwargs["num_classes"] == 1000
    model = create_model(cfg.model.name, **cfg.model.kwargs)  # parameters do not depend on the resolution
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 2) == params_m


def test_nan_coefficients_inside_basisnet_stop_with_step_and_checkpoint(tmp_path: Path) -> None:
    """A coefficient head that diverges at step 3 makes a basis layer refuse NaN coefficients; fit turns that
    into the same stop as a NaN loss: it names step 3 and the checkpoint of step 2, which holds finite weights,
    and nothing is saved after it."""
    from basisnet.train import NonFiniteLossError

    model = create_model("basisnet", num_classes=2, resolution=16, drop_strides=2, specialist="mobilenetv3_small",
                         specialist_width=0.35, lightweight_width=0.35, num_bases=2)
    calls = []

    def diverge(head: torch.nn.Module, args: tuple) -> None:
        calls.append(head.training)
        if calls.count(True) == 3:
            torch.nn.init.constant_(head.bias, float("nan"))

    model.coeff_head.register_forward_pre_hook(diverge)
    data = ImageTensorDataset(torch.randint(0, 255, (16, 3, 16, 16), dtype=torch.uint8), torch.arange(16) % 2,
                              ["a", "b"])
    cfg = load_config(None, ["train.epochs=1", "train.warmup_epochs=0", "data.image_size=16", "data.batch_size=4",
                             "train.checkpoint_every_steps=1"])
    with pytest.raises(NonFiniteLossError, match=r"coefficients .*epoch 1, step 3 \(global step 3\)") as err:
        fit(model, TrainData(BatchLoader(data, 4, shuffle=True), BatchLoader(data, 4, shuffle=False),
                             TrainAugment(16, 0), EvalTransform()), cfg, tmp_path, progress=False)
    assert f"last good checkpoint: {tmp_path / 'last.safetensors'}" in str(err.value)
    assert load_state(tmp_path / "last.state.pt")["loop"]["global_step"] == 2
    saved = create_model("basisnet", num_classes=2, resolution=16, drop_strides=2, specialist="mobilenetv3_small",
                         specialist_width=0.35, lightweight_width=0.35, num_bases=2)
    assert load_weights(saved, tmp_path / "last.safetensors")["global_step"] == "2"
    assert all(torch.isfinite(p).all() for p in saved.parameters())
