"""Scale-out: ``torchrun -m basisnet train`` on 2 CPU processes (gloo) against 1 process, exact DDP resume,
and the launcher variables read by ``init_distributed_device``.

Run as a script (``python -m torch.distributed.run ... tests/test_distributed.py train ...``) this file is
the ``basisnet`` command with one extra model registered, ``nonorm_toy``: a network without BatchNorm or
dropout, so a 2-process run must match a 1-process run up to float summation order (BatchNorm would
normalise each rank's half batch with its own statistics; dropout draws from per-rank streams). Two more
test hooks of the script: every process logs the files it writes (``WRITE_LOG_ENV``), and every training
state written is also kept as a numbered copy (``SNAPSHOT_ENV``), both outside the run directory.
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch
from helpers import child_env, run_python
from torch import Tensor, nn

from basisnet.train import load_state
from basisnet.train.distributed import LaunchEnv, init_distributed_device, launch_env

pytestmark = pytest.mark.xdist_group("distributed")  # one worker computes the shared runs once

HERE = Path(__file__).resolve()
KILL_AT_ENV = "BASISNET_TEST_KILL_AT"  # SIGKILL rank 0 at its n-th training forward
SIGNAL_AT_ENV = "BASISNET_TEST_SIGNAL_AT"  # "RANK:N:SIG[+SIG]": that rank sends itself SIG(s) at its n-th forward
WRITE_LOG_ENV = "BASISNET_TEST_WRITE_LOG"  # a folder: each process logs what it writes into rank<RANK>.log
SNAPSHOT_ENV = "BASISNET_TEST_SNAPSHOTS"  # a folder: a numbered copy of every training state written

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


def basisnet_train(*args: str, procs: int = 0, kill_at: int = 0, signal_at: str = "", write_log: Path | None = None,
                   snapshots: Path | None = None) -> subprocess.CompletedProcess:
    """``basisnet train ARGS`` (with ``nonorm_toy``) in 1 plain process, or in ``procs`` under torchrun.

    Always on the CPU with gloo (``helpers.child_env`` hides GPUs): a machine with fewer GPUs than processes
    (one GPU, two ranks) must not fail, and the exactness comparisons must not depend on GPU kernels."""
    extra = {KILL_AT_ENV: str(kill_at) if kill_at else "", SIGNAL_AT_ENV: signal_at,
             WRITE_LOG_ENV: str(write_log or ""), SNAPSHOT_ENV: str(snapshots or "")}
    return run_python(str(HERE), "train", *args, procs=procs, env=child_env(**{k: v for k, v in extra.items() if v}))


def written(log: Path) -> list[tuple[str, str]]:
    """(event, path) of every file a process of ``basisnet_train(write_log=...)`` created, opened for writing,
    renamed onto or made as a folder."""
    return [tuple(line.split("\t", 1)) for line in log.read_text().splitlines()]


def weights(run_dir: Path) -> dict[str, dict[str, Tensor]]:
    """The trained weights (from the resumable state) and the evaluated EMA weights of a run."""
    return {"model": load_state(run_dir / "last.state.pt")["model"],
            "ema": safetensors.torch.load_file(run_dir / "last.safetensors")}


def val_top1(run_dir: Path) -> list[tuple[str, str]]:
    with open(run_dir / "summary.csv") as f:
        return [(row["val_top1_exit1"], row["val_top1_exit2"]) for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("ddp")
    (tmp / "writes").mkdir()  # beside the run: what each rank wrote (test_only_rank_0_writes)
    out = basisnet_train("--output", str(tmp / "ddp"), *TRAIN_ARGS, procs=2, write_log=tmp / "writes")
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


def test_only_rank_0_writes(two_process_run: Path) -> None:
    """In a real 2-process run, every file of the run directory comes from rank 0; rank 1 writes nothing there."""
    logs = two_process_run.parent / "writes"
    assert sorted(p.name for p in logs.iterdir()) == ["rank0.log", "rank1.log"]  # both processes were watched
    inside = {rank: [(event, path) for event, path in written(logs / f"rank{rank}.log")
                     if Path(path).is_relative_to(two_process_run)] for rank in (0, 1)}
    assert inside[1] == []
    renamed = {Path(path).name for event, path in inside[0] if event == "rename"}
    assert {"last.state.pt", "last.safetensors", "best.safetensors"} <= renamed  # atomic writes: temp file, rename
    names = {Path(path).name for _, path in inside[0]}
    # every file in the run directory is one that rank 0 wrote
    assert {p.name for p in two_process_run.iterdir()} == {"config.yaml", "classes.json", "summary.csv",
                                                            "last.state.pt", "last.safetensors", "best.safetensors"}
    assert {p.name for p in two_process_run.iterdir()} <= names


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
    message = (f"stopped by {signalled} in epoch 2 after step 1 (global step 5); checkpoint: {run / 'last.state.pt'}; "
               f"continue with: {'torchrun ... -m basisnet' if procs else 'basisnet'} train --resume {run}")
    if procs:  # torchrun fails itself, naming its workers' exit codes (once one exits it stops the other)
        assert out.returncode != 0 and f"exitcode  : {code}" in out.stderr, out.stderr
        # torchrun passes its workers' stderr through: rank 0 (not the signalled rank) prints the stop, once
        assert out.stderr.splitlines().count(f"basisnet train: {message}") == 1, out.stderr
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


def test_basisnet_static_phase_under_ddp(tmp_path: Path) -> None:
    """DDP wants every parameter in the graph at every step: the static phase (uniform coefficients)
    keeps the coefficient head in it, and the run crosses into the mixed phase. The state saved at the end of
    the one static epoch holds tied bases and a coefficient head still at zero; the last one, upcycled bases
    that differ and a head that has learned."""
    run, snapshots = tmp_path / "basisnet", tmp_path / "states"
    snapshots.mkdir()
    out = basisnet_train("--config", "shapes_demo", "--output", str(run), "data.subset=64", "data.val_size=30",
                         "data.batch_size=16", "data.eval_batch_size=32", "data.image_size=16",
                         "model.kwargs.resolution=16", "model.kwargs.lightweight_resolution=8", "train.epochs=2",
                         "train.warmup_epochs=0", "model.kwargs.specialist_width=0.35", "model.kwargs.num_bases=2",
                         "train.static_phase=0.5", procs=2, snapshots=snapshots)
    assert out.returncode == 0, out.stderr
    # DDP's gradient buckets follow the parameters' channels_last layout, across the upcycling too: no
    # stride-mismatch warning (on a GPU, a copy of every gradient at every step)
    assert "Grad strides do not match bucket view strides" not in out.stderr
    states = [load_state(p) for p in sorted(snapshots.iterdir())]
    assert [(s["loop"]["epoch"], s["loop"]["batch"]) for s in states] == [(1, 0), (2, 0)]  # the two epoch ends
    for state, static in zip(states, (True, False)):
        model = state["model"]
        bases = [v for k, v in model.items() if k.startswith("specialist.") and k.endswith((".expand.0.weight",
                                                                                           ".project.0.weight"))]
        assert bases and all(b.shape[0] == 2 for b in bases)
        assert all(torch.equal(b[0], b[1]) for b in bases) == static  # tied in the static phase, upcycled after
        assert bool(model["coeff_head.weight"].abs().sum() == 0) == static  # zero until the mixed phase


def _log_writes(folder: Path) -> None:
    """Log (event, path) of every file this process creates, opens for writing, renames onto or makes as a
    folder: an audit hook sees them all, whatever module or function does the writing."""
    log = open(folder / f"rank{os.environ.get('RANK', '0')}.log", "w", buffering=1)  # before the hook: not logged
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            if (any(c in mode for c in "wax+") if isinstance(mode, str) else bool((flags or 0) & write_flags)):
                log.write(f"open\t{os.path.abspath(os.fsdecode(path))}\n" if isinstance(path, (str, bytes, os.PathLike))
                          else f"open\tfd {path}\n")
        elif event in ("os.rename", "os.mkdir", "os.symlink", "os.link"):
            target = args[1] if event in ("os.rename", "os.link", "os.symlink") else args[0]
            log.write(f"{event[3:]}\t{os.path.abspath(os.fsdecode(target))}\n")

    sys.addaudithook(hook)


def _keep_states(folder: Path) -> None:
    """A numbered copy of every training state written (rank 0 writes them), outside the run directory."""
    import basisnet.train.resume as resume

    save_state = resume.save_state

    def keeping(state: dict, path: Path) -> None:
        save_state(state, path)
        shutil.copyfile(path, folder / f"{len(list(folder.iterdir())):03d}.state.pt")

    resume.save_state = keeping


if __name__ == "__main__":
    from basisnet.cli import main
    from basisnet.models import register_model

    register_model("nonorm_toy", NoNormToy)
    if os.environ.get(WRITE_LOG_ENV):
        _log_writes(Path(os.environ[WRITE_LOG_ENV]))
    if os.environ.get(SNAPSHOT_ENV):
        _keep_states(Path(os.environ[SNAPSHOT_ENV]))
    sys.exit(main(sys.argv[1:]))
