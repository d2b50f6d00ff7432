"""Reliability through the real entry points: a ``basisnet train`` process killed with SIGKILL mid-epoch
resumes bitwise, divergence stops with the step and the checkpoint, mismatched checkpoints are explained,
the config parser only ever raises ConfigError/ValueError, and every ImageNet config trains a step."""

from __future__ import annotations

import csv
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import safetensors.torch
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from basisnet.configs import bundled_config
from basisnet.data import BatchLoader, EvalTransform, ImageTensorDataset, TrainAugment
from basisnet.models import create_model
from basisnet.train import (
    CheckpointMismatchError, ConfigError, RunConfig, config_help, fit, load_config, load_run_model, load_state,
    load_weights, validate_config,
)

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


def basisnet_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "basisnet", "train", *args]


def child_env() -> dict[str, str]:
    """One thread (bitwise-comparable runs, and gentle on CI); never inherit a launcher's rank variables."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS")}
    return {**env, "OMP_NUM_THREADS": "1"}


def basisnet_train(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(basisnet_command(*args), env=child_env(), capture_output=True, text=True, timeout=300)


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
        proc = subprocess.Popen(basisnet_command("--config", "shapes_demo", "--output", str(run), *TINY),
                                env=child_env(), stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and proc.poll() is None:
                state = run / "last.state.pt"
                if state.is_file() and load_state(state)["loop"]["batch"] > 0:
                    break
                time.sleep(0.01)
            assert proc.poll() is None, f"training ended before a mid-epoch checkpoint (log: {log_path})"
        finally:
            proc.send_signal(signum)  # the signal under test (also the clean-up if the wait failed)
            proc.wait(timeout=120)
    return proc, log_path.read_text()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """An uninterrupted run, and the same run SIGKILLed after its first mid-epoch checkpoint."""
    tmp = tmp_path_factory.mktemp("kill")
    reference = tmp / "reference"
    out = basisnet_train("--config", "shapes_demo", "--output", str(reference), *TINY)
    assert out.returncode == 0, out.stderr
    proc, _ = interrupted_run(tmp / "killed", signal.SIGKILL)  # no cleanup, no flush: what a node failure does
    assert proc.returncode == -signal.SIGKILL
    return {"reference": reference, "killed": tmp / "killed", "loop": load_state(tmp / "killed" / "last.state.pt")["loop"]}


@pytest.mark.slow
def test_killed_mid_epoch_resumes_bitwise(runs: dict) -> None:
    loop = runs["loop"]
    assert loop["batch"] > 0 and loop["global_step"] < STEPS  # the kill landed in the middle of an epoch
    out = basisnet_train("--resume", str(runs["killed"]))
    assert out.returncode == 0, out.stderr
    expected, resumed = trained_tensors(runs["reference"]), trained_tensors(runs["killed"])
    assert expected.keys() == resumed.keys()
    assert [k for k in expected if not torch.equal(expected[k], resumed[k])] == []
    assert val_history(runs["killed"]) == val_history(runs["reference"])
    assert load_state(runs["killed"] / "last.state.pt")["loop"]["global_step"] == STEPS


def test_sigterm_mid_epoch_resumes_bitwise(runs: dict, tmp_path: Path) -> None:
    """What a scheduler's preemption does: the step in progress finishes, its checkpoint is written, exit 143."""
    run = tmp_path / "terminated"
    proc, log = interrupted_run(run, signal.SIGTERM)
    loop = load_state(run / "last.state.pt")["loop"]
    assert proc.returncode == 143, log
    assert log.strip().splitlines()[-1] == (
        f"basisnet train: stopped by SIGTERM after epoch {loop['epoch'] + 1}, step {loop['batch']} (global step "
        f"{loop['global_step']}); checkpoint: {run / 'last.state.pt'}; continue with: basisnet train --resume {run}")
    assert 0 < loop["global_step"] < STEPS
    out = basisnet_train("--resume", str(run))
    assert out.returncode == 0, out.stderr
    expected, resumed = trained_tensors(runs["reference"]), trained_tensors(run)
    assert [k for k in expected if not torch.equal(expected[k], resumed[k])] == []
    assert val_history(run) == val_history(runs["reference"])


def test_checkpoint_intact_after_kill(runs: dict) -> None:
    # the fixture read the state; the weights file beside it must load into the recorded architecture too
    model = load_run_model(runs["killed"] / "last.safetensors", create_model)
    assert all(torch.isfinite(p).all() for p in model.parameters())


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
    weights = runs["reference"] / "best.safetensors"
    kwargs = yaml.safe_load((runs["reference"] / "config.yaml").read_text())["model"]["kwargs"]
    differs = r"shape mismatch \(\d+\):\n.*: checkpoint \(10, \d+\) vs model \(7, \d+\)"
    with pytest.raises(CheckpointMismatchError, match=differs):
        load_weights(create_model("basisnet", **{**kwargs, "num_classes": 7}), weights)
    with pytest.raises(CheckpointMismatchError) as err:
        load_weights(create_model("mobilenetv3_small", num_classes=10, resolution=16), weights)
    assert "missing in checkpoint" in str(err.value) and "unexpected in checkpoint" in str(err.value)


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


@settings(max_examples=300, deadline=None)
@given(overrides)
def test_config_overrides_fuzz(texts: list[str]) -> None:
    check_parse(lambda: load_config(None, texts))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
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


# ------------------------------------------------------------------ ImageNet configs


@pytest.mark.parametrize("name, size, params_m, extra", [
    ("imagenet_basisnet", 64, 16.49, ["model.kwargs.lightweight_resolution=32"]),
    ("imagenet_mobilenetv3_large", 64, 5.48, []),
    # MSDNet needs >= 160 px: its coarsest scale must survive the exit heads' two stride-2 convs
    ("imagenet_msdnet", 160, None, []),
])
def test_imagenet_config_trains_one_step(name: str, size: int, params_m: float | None, extra: list[str],
                                         tmp_path: Path) -> None:
    """The recipe as written (optimizer, EMA, smoothing, channels-last, ...) for one step on 2 small images."""
    cfg = load_config(bundled_config(name), [f"data.image_size={size}", f"model.kwargs.resolution={size}",
                                             "data.batch_size=2", "data.eval_batch_size=2", "train.epochs=1",
                                             "train.warmup_epochs=0", *extra])
    assert cfg.model.kwargs["num_classes"] == 1000
    torch.manual_seed(0)
    model = create_model(cfg.model.name, **cfg.model.kwargs)
    if params_m is not None:  # the published architecture (parameters do not depend on the resolution)
        assert round(sum(p.numel() for p in model.parameters()) / 1e6, 2) == params_m
    images = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8)
    data = ImageTensorDataset(images, torch.tensor([3, 997]), [str(i) for i in range(1000)])
    d = cfg.data
    result = fit(model, BatchLoader(data, 2, shuffle=True, drop_last=True), BatchLoader(data, 2, shuffle=False), cfg,
                 tmp_path, TrainAugment(size, d.crop_padding, d.flip, d.mean, d.std), EvalTransform(d.mean, d.std),
                 progress=False)
    assert result["global_step"] == 1 and math.isfinite(result["history"][0]["train_loss"])


def test_imagenet_ranet_builds_and_runs() -> None:
    """RANet's preset (88M parameters) is built and run once at 224 px: a training step would write ~1.7 GB of
    checkpoints, too slow for CI; the loop itself is the same as above."""
    cfg = load_config(bundled_config("imagenet_ranet"))
    model = create_model(cfg.model.name, **cfg.model.kwargs).eval()
    with torch.no_grad():
        exits = model(torch.randn(1, 3, 224, 224))
    assert len(exits) == 8 and all(z.shape == (1, 1000) and torch.isfinite(z).all() for z in exits)


def test_nan_coefficients_inside_basisnet_stop_with_step_and_checkpoint(tmp_path) -> None:
    """A diverged coefficient head makes a basis layer refuse NaN coefficients; fit turns that into the
    same stop as a NaN loss, naming the step."""
    import torch

    from basisnet.data import BatchLoader, EvalTransform, ImageTensorDataset, TrainAugment
    from basisnet.models import create_model
    from basisnet.train import NonFiniteLossError, fit

    model = create_model("basisnet", num_classes=2, resolution=16, drop_strides=2, specialist="mobilenetv3_small",
                         specialist_width=0.35, lightweight_width=0.35, num_bases=2)
    torch.nn.init.constant_(model.coeff_head.bias, float("nan"))
    data = ImageTensorDataset(torch.randint(0, 255, (8, 3, 16, 16), dtype=torch.uint8), torch.arange(8) % 2, ["a", "b"])
    cfg = load_config(None, ["train.epochs=1", "train.warmup_epochs=0", "data.image_size=16", "data.batch_size=4"])
    with pytest.raises(NonFiniteLossError, match="coefficients .*epoch 1, step 1"):
        fit(model, BatchLoader(data, 4, shuffle=True), BatchLoader(data, 4, shuffle=False), cfg, tmp_path,
            TrainAugment(16, 0), EvalTransform(), progress=False)
