"""Scale-out: ``torchrun -m basisnet train`` on 2 CPU processes (gloo) against 1 process, exact DDP resume,
and the launcher variables read by ``init_distributed_device``.

Run as a script (``python -m torch.distributed.run ... tests/test_distributed.py train ...``) this file is
the ``basisnet`` command with one extra model registered, ``nonorm_toy``: a network without BatchNorm or
dropout, so a 2-process run must match a 1-process run up to float summation order (BatchNorm would
normalise each rank's half batch with its own statistics; dropout draws from per-rank streams).
"""

from __future__ import annotations

import csv
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch
from torch import Tensor, nn

from basisnet.train import load_state
from basisnet.train.distributed import LaunchEnv, init_distributed_device, launch_env

pytestmark = pytest.mark.xdist_group("distributed")  # one worker computes the shared runs once

HERE = Path(__file__).resolve()
KILL_AT_ENV = "BASISNET_TEST_KILL_AT"  # SIGKILL rank 0 at its n-th training forward
SIGNAL_AT_ENV = "BASISNET_TEST_SIGNAL_AT"  # "RANK:N:SIG[+SIG]": that rank sends itself SIG(s) at its n-th forward

# Global batch 16 over 64 images: 4 steps per epoch at any world size; no random augmentation (its
# draws are per-rank streams too); a mid-epoch checkpoint every 3 steps.
TRAIN_ARGS = [
    "model.name=nonorm_toy", "data.source=shapes", "data.image_size=8", "data.subset=64", "data.val_size=30",
    "data.batch_size=16", "data.eval_batch_size=32", "data.crop_padding=0", "data.flip=false",
    "train.epochs=2", "train.lr=0.2", "train.warmup_epochs=0.5", "train.ema_decay=0.5",
    "train.checkpoint_every_steps=3", "train.device=cpu",
]
# float32 sums of the same numbers in another order (per-rank means averaged by DDP instead of one
# mean over 16 images) differ in the last bits; after 8 steps the weights agree to this tolerance.
ATOL, RTOL = 1e-6, 1e-5


class NoNormToy(nn.Module):
    """Two exits, no BatchNorm, no dropout: its gradient over a global batch does not depend on how the
    batch is split over processes."""

    def __init__(self, num_classes: int = 10, resolution: int = 8, width: int = 8) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.body = nn.Conv2d(width, width, 3, stride=2, padding=1)
        self.head0 = nn.Linear(width, num_classes)
        self.head1 = nn.Linear(width, num_classes)
        self.kill_at, self.calls = int(os.environ.get(KILL_AT_ENV, 0)), 0
        self.signal_at = os.environ.get(SIGNAL_AT_ENV, "::").split(":")

    def forward(self, x: Tensor) -> list[Tensor]:
        if self.training:
            self.calls += 1
            if self.calls == self.kill_at and os.environ.get("RANK") == "0":
                os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no flush: what a node failure does
            at_rank, at_call, names = self.signal_at
            if str(self.calls) == at_call and os.environ.get("RANK", "0") == at_rank:
                for name in names.split("+"):  # what a scheduler's preemption (or Ctrl-C) sends mid-step
                    os.kill(os.getpid(), signal.Signals[name])
        h = torch.relu(self.stem(x))
        return [self.head0(h.mean((2, 3))), self.head1(torch.relu(self.body(h)).mean((2, 3)))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def basisnet_train(*args: str, procs: int = 0, kill_at: int = 0, signal_at: str = "") -> subprocess.CompletedProcess:
    """``basisnet train ARGS`` (with ``nonorm_toy``) in 1 plain process, or in ``procs`` under torchrun.

    Always on the CPU with gloo: hiding GPUs keeps a machine with fewer GPUs than processes (one GPU,
    two ranks) from failing, and the exactness comparisons from depending on GPU kernels."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"):
        env.pop(var, None)
    if kill_at:
        env[KILL_AT_ENV] = str(kill_at)
    if signal_at:
        env[SIGNAL_AT_ENV] = signal_at
    launcher = [sys.executable]
    if procs:
        launcher += ["-m", "torch.distributed.run", "--nproc-per-node", str(procs), "--master-addr", "127.0.0.1",
                     "--master-port", str(free_port())]
    return subprocess.run([*launcher, str(HERE), "train", *args], env=env, capture_output=True, text=True,
                          timeout=120)


def weights(run_dir: Path) -> dict[str, dict[str, Tensor]]:
    """The trained weights (from the resumable state) and the evaluated EMA weights of a run."""
    return {"model": load_state(run_dir / "last.state.pt")["model"],
            "ema": safetensors.torch.load_file(run_dir / "last.safetensors")}


def val_top1(run_dir: Path) -> list[tuple[str, str]]:
    with open(run_dir / "summary.csv") as f:
        return [(row["val_top1_exit0"], row["val_top1_exit1"]) for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("ddp")
    out = basisnet_train("--output", str(tmp / "ddp"), *TRAIN_ARGS, procs=2)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("best val top-1") == 1  # only rank 0 reports
    assert len(load_state(tmp / "ddp" / "last.state.pt")["rng"]) == 2  # both ranks' random streams were saved
    return tmp / "ddp"


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("single") / "single"
    out = basisnet_train("--output", str(run), *TRAIN_ARGS)
    assert out.returncode == 0, out.stderr
    return run


@pytest.mark.slow
def test_two_processes_match_one_process(two_process_run: Path, one_process_run: Path) -> None:
    single, ddp = weights(one_process_run), weights(two_process_run)
    for part in ("model", "ema"):
        assert single[part].keys() == ddp[part].keys()
        for key in single[part]:
            torch.testing.assert_close(ddp[part][key], single[part][key], atol=ATOL, rtol=RTOL, msg=key)
    # the sharded validation counts every image exactly once, as one process does
    assert val_top1(two_process_run) == val_top1(one_process_run)


def assert_same_weights(expected_run: Path, run: Path) -> None:
    expected, resumed = weights(expected_run), weights(run)
    for part in ("model", "ema"):
        assert expected[part].keys() == resumed[part].keys()
        assert [k for k in expected[part] if not torch.equal(expected[part][k], resumed[part][k])] == []


# Step 5 is epoch 2, step 1: no periodic checkpoint falls there (every 3 steps), so the state after it can only
# come from the stop. Under torchrun only rank 1 is signalled: rank 0 must learn of it and stop at the same step.
# (SIGTERM to one process from outside, with a real BasisNet: test_reliability.py's test_sigterm_mid_epoch_resumes_bitwise)
@pytest.mark.parametrize("procs, signalled, code", [(0, "SIGINT", 130), (2, "SIGTERM", 143)])
def test_a_signal_stops_after_the_step_with_a_checkpoint_that_resumes_exactly(
        procs: int, signalled: str, code: int, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    run = tmp_path / "stopped"
    out = basisnet_train("--output", str(run), *TRAIN_ARGS, procs=procs, signal_at=f"{min(procs, 1)}:5:{signalled}")
    loop = load_state(run / "last.state.pt")["loop"]
    assert (loop["epoch"], loop["batch"], loop["global_step"]) == (1, 1, 5), out.stderr
    message = (f"stopped by {signalled} after epoch 2, step 1 (global step 5); checkpoint: {run / 'last.state.pt'}; "
               f"continue with: {'torchrun ... -m basisnet' if procs else 'basisnet'} train --resume {run}")
    if procs:  # torchrun fails itself, naming its workers' exit codes (once one exits it stops the other)
        assert out.returncode != 0 and f"exitcode  : {code}" in out.stderr, out.stderr
    else:
        assert out.returncode == code and out.stderr.strip().splitlines()[-1] == f"basisnet train: {message}"
    out = basisnet_train("--resume", str(run), procs=procs)
    assert out.returncode == 0, out.stderr
    assert_same_weights(request.getfixturevalue("two_process_run" if procs else "one_process_run"), run)


def test_a_second_signal_stops_at_once(tmp_path: Path) -> None:
    run = tmp_path / "stopped"
    out = basisnet_train("--output", str(run), *TRAIN_ARGS, signal_at="0:5:SIGTERM+SIGTERM")
    assert out.returncode == -signal.SIGTERM  # killed by the signal's default action, nothing more written
    assert load_state(run / "last.state.pt")["loop"]["global_step"] == 4  # the epoch-end checkpoint before step 5


def test_resume_after_a_rank_is_killed_is_exact(two_process_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "killed"
    out = basisnet_train("--output", str(run), *TRAIN_ARGS, procs=2, kill_at=7)
    assert out.returncode != 0
    loop = load_state(run / "last.state.pt")["loop"]  # the mid-epoch checkpoint after global step 6
    assert (loop["epoch"], loop["batch"], loop["global_step"]) == (1, 2, 6)
    out = basisnet_train("--resume", str(run), procs=2)
    assert out.returncode == 0, out.stderr
    assert_same_weights(two_process_run, run)


def test_global_batch_must_divide_by_world_size(tmp_path: Path) -> None:
    out = basisnet_train("--output", str(tmp_path / "r"), *TRAIN_ARGS, "data.batch_size=15", procs=2)
    assert out.returncode != 0 and "data.batch_size=15 is the global batch size" in out.stderr


@pytest.mark.parametrize("env, expected", [
    ({}, LaunchEnv("none", 0, 1, 0)),
    ({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}, LaunchEnv("torchrun", 3, 8, 1)),
    ({"SLURM_PROCID": "5", "SLURM_NTASKS": "16", "SLURM_LOCALID": "1"}, LaunchEnv("slurm", 5, 16, 1)),
    # torchrun inside a SLURM allocation: torchrun's own variables win, never a mix of both
    ({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "SLURM_PROCID": "0", "SLURM_NTASKS": "1"},
     LaunchEnv("torchrun", 1, 2, 1)),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}, LaunchEnv("slurm", 0, 1, 0)),
])
def test_launch_env(env: dict[str, str], expected: LaunchEnv) -> None:
    assert launch_env(env) == expected


@pytest.mark.parametrize("env, message", [
    ({"RANK": "0"}, "WORLD_SIZE is not set"),
    ({"RANK": "x", "WORLD_SIZE": "2"}, "RANK must be an integer, got 'x'"),
    ({"SLURM_PROCID": "4", "SLURM_NTASKS": "4"}, "inconsistent slurm environment: SLURM_PROCID=4, SLURM_NTASKS=4"),
])
def test_launch_env_errors(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        launch_env(env)


def test_init_distributed_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SLURM_LOCALID", "0")
    info = init_distributed_device("cpu")
    assert (info.rank, info.world_size, info.distributed, info.device.type) == (0, 1, False, "cpu")
    monkeypatch.setenv("SLURM_NTASKS", "4")  # srun without a rendezvous address: a clear error, no hang
    with pytest.raises(ValueError, match="slurm environment describes 4 processes but MASTER_ADDR and MASTER_PORT"):
        init_distributed_device("cpu")


if __name__ == "__main__":
    from basisnet.cli import main
    from basisnet.models import register_model

    register_model("nonorm_toy", NoNormToy)
    sys.exit(main(sys.argv[1:]))


def test_basisnet_static_phase_under_ddp(tmp_path: Path) -> None:
    """DDP wants every parameter in the graph at every step: the static phase (uniform coefficients)
    keeps the coefficient head in it, and the run crosses into the mixed phase."""
    run = tmp_path / "basisnet"
    out = basisnet_train("--config", "shapes_demo", "--output", str(run), "data.subset=64", "data.val_size=30",
                         "data.batch_size=16", "data.eval_batch_size=32", "train.epochs=2", "train.warmup_epochs=0",
                         "model.kwargs.specialist_width=0.35", "model.kwargs.num_bases=2", procs=2)
    assert out.returncode == 0, out.stderr
    kernel = load_state(run / "last.state.pt")["model"]["specialist.blocks.2.expand.0.weight"]
    assert not torch.equal(kernel[0], kernel[1])  # upcycled after the one static epoch
