"""What several test files share: tiny models of every registered kind, thresholds and margins that keep an
early-exit verdict away from float rounding, toy networks, one tiny SHAPES run and one subprocess launcher.

No test module imports another: they import this module (on ``sys.path`` as pytest puts ``tests/`` there).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from torch import Tensor, nn

# ------------------------------------------------------------------ tiny registered models

MOBILE = dict(num_classes=5, resolution=32, drop_strides=2, width=0.35)


def tiny_kwargs() -> dict[str, dict]:
    """Every registered model at a size a test can afford; a new model must add itself here."""
    from basisnet.models import list_models

    return {
        "basisnet": dict(num_classes=5, resolution=32, drop_strides=2, specialist="mobilenetv3_small",
                         specialist_width=0.35, lightweight_width=0.35, num_bases=3),
        "msdnet": dict(num_classes=5, num_blocks=3, base=1, step=1, num_channels=8, growth_rate=4),
        "ranet": dict(num_classes=5, num_blocks=1, block_step=1, step=1, num_channels=8, growth_rate=4),  # 4 exits
        **{name: {**MOBILE, "num_bases": 2} for name in list_models() if name.startswith("condconv_")},
        **{name: MOBILE for name in ("mobilenetv2", "mobilenetv3_large", "mobilenetv3_small")},
    }


TINY = tiny_kwargs()


def tiny_model(name: str) -> nn.Module:
    """The tiny ``name`` in eval mode, seeded; BasisNet with non-uniform coefficients (so a mix-up of images
    between its stages would show)."""
    from basisnet.models import create_model

    torch.manual_seed(0)
    model = create_model(name, **TINY[name]).eval()
    if name == "basisnet":
        torch.nn.init.normal_(model.coeff_head.weight, std=0.5)
    return model


def spread_logits(model: nn.Module) -> nn.Module:
    """Logits that differ between images, so thresholds split a batch: BatchNorm statistics measured on one
    random batch (at initialisation activations fade to ~1e-5 through a MobileNet and every image gets the
    same, uniform answer), then the exit classifiers re-drawn wide."""
    from basisnet.models.calibration import measure_batchnorm, widen_classifiers

    measure_batchnorm(model, torch.randn(32, 3, model.resolution, model.resolution,
                                         generator=torch.Generator().manual_seed(0)))
    return widen_classifiers(model, model.num_classes)


def exit_confidences(model: nn.Module, x: Tensor) -> Tensor:
    """(exits, batch) softmax confidences of the full forward."""
    with torch.no_grad():
        return torch.stack([z.softmax(-1) for z in model(x)]).max(-1).values


def threshold_between(conf: Tensor, min_gap: float = 1e-3) -> float:
    """A threshold that splits the images and lies far from every deciding confidence.

    ``conf`` holds (exits, batch) confidences (or one exit's). A threshold at one image's own confidence (a
    median of an even count) makes that image exit or not on the last bit of float rounding, so the verdict
    of a test would be random across runtimes and machines; the midpoint of the widest gap between two
    confidences is not. Every exit but the last decides, so all of them must stay clear of the threshold.
    """
    conf = conf.detach().reshape(-1, conf.shape[-1]).double()
    deciding = conf[:-1] if len(conf) > 1 else conf
    values = deciding.flatten().sort().values
    best, best_gap = None, 0.0
    for low, high in zip(values[:-1].tolist(), values[1:].tolist()):
        t = (low + high) / 2
        leaving = int((deciding[0] >= t).sum())
        if 0 < leaving < conf.shape[-1] and high - low > best_gap:
            best, best_gap = t, high - low
    assert best is not None and best_gap >= min_gap, f"no threshold splits these images clearly: {values}"
    return best


def decisive(probs: Tensor, margin: float = 1e-4) -> Tensor:
    """Images whose top two probabilities differ by more than ``margin``: only there must two runtimes (or a
    batch of 1 and a batch of many, whose float sums run in another order) agree on the class."""
    top2 = probs.topk(2, dim=-1).values
    return top2[..., 0] - top2[..., 1] > margin


# ------------------------------------------------------------------ toy networks


class ToyNet(nn.Module):
    """Two exits on small inputs, BatchNorm and dropout (so RNG restore matters on resume).

    ``nan_at`` / ``inf_grad_at`` / ``crash_at``: the n-th training forward returns NaN / gives an
    infinite gradient / raises, to simulate divergence and a killed process.
    """

    num_exits = 2

    def __init__(self, classes: int = 3, width: int = 4, nan_at: int = 0, crash_at: int = 0,
                 inf_grad_at: int = 0) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, stride=2), nn.ReLU())
        self.head0 = nn.Linear(width, classes)
        self.head1 = nn.Sequential(nn.Dropout(0.2), nn.Linear(width, classes))
        self.nan_at, self.crash_at, self.inf_grad_at, self.calls = nan_at, crash_at, inf_grad_at, 0
        self.on_nan = lambda: None

    def forward(self, x: Tensor) -> list[Tensor]:
        if self.training:
            self.calls += 1
            if self.calls == self.crash_at:
                raise KeyboardInterrupt("simulated kill")
        h = self.stem(x)
        out = [self.head0(h.mean((2, 3))), self.head1(self.body(h).mean((2, 3)))]
        if self.training and self.calls == self.nan_at:
            self.on_nan()
            out[-1] = out[-1] * float("nan")
        if self.training and self.calls == self.inf_grad_at:  # adds 0 to the loss, inf to the gradient
            out[-1] = out[-1] + (self.head0.bias - self.head0.bias.detach()).sqrt().sum()
        return out


class PlainDataset(torch.utils.data.Dataset):
    """Not an ImageTensorDataset, so BatchLoader goes through a torch DataLoader (which draws from the global RNG)."""

    def __init__(self, data) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        return self.data[i]


# ------------------------------------------------------------------ generated image trees

JPEG_SIZES = [(500, 375), (375, 500), (64, 48), (33, 77), (120, 120)]


def jpeg_tree(root: Path, per_class: int, classes: tuple[str, ...] = ("ant", "bee", "cat"), seed: int = 0,
              sizes: list[tuple[int, int]] = JPEG_SIZES) -> Path:
    """``root/<class>/<i>.jpg`` of varied sizes; each class has its own mean colour (a learnable signal)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            w, h = sizes[(i + c) % len(sizes)]
            pixels = rng.integers(0, 96, (h, w, 3), dtype=np.uint8)
            pixels[..., c] += 128
            Image.fromarray(pixels).save(root / name / f"{i:03d}.jpg", quality=85)
    return root


# ------------------------------------------------------------------ one tiny trained SHAPES run

SHAPES_TINY = [
    "train.epochs=1", "train.warmup_epochs=0", "data.subset=64", "data.val_size=32", "data.batch_size=32",
    "model.kwargs.specialist_width=0.35", "model.kwargs.num_bases=2", "train.device=cpu",
]


def train_tiny_shapes(out: Path, *overrides: str) -> Path:
    """A BasisNet trained one epoch on 64 SHAPES images (``shapes_demo`` with ``SHAPES_TINY``): a real run
    directory for tests of what reads one (evaluate, export, predict), not of what training learns."""
    from basisnet.configs import bundled_config
    from basisnet.train import load_config
    from basisnet.workflow import train_run

    train_run(load_config(bundled_config("shapes_demo"), [*SHAPES_TINY, *overrides]), out, progress=False)
    return out


# ------------------------------------------------------------------ one subprocess launcher

LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR",
                      "MASTER_PORT", "TORCHELASTIC_RUN_ID", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")
# A child run on a loaded 2-core machine (the other pytest worker computing beside it) can take several times
# its quiet time: the limit only stops a hung child, it never decides a verdict.
CHILD_TIMEOUT_S = float(os.environ.get("BASISNET_TEST_CHILD_TIMEOUT", 900))


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a child process: one torch thread (bitwise-comparable runs, gentle on 2 cores), no
    GPU (gloo on the CPU; exactness never depends on GPU kernels), and never a launcher's rank variables."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}
    return {**env, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", **extra}


def python_command(*args: str, procs: int = 0) -> list[str]:
    """``python ARGS``, or under torchrun with ``procs`` processes on this machine. ``--standalone`` lets the
    rendezvous bind a free port itself: no port is picked, released and raced for."""
    if not procs:
        return [sys.executable, *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(procs), *args]


def run_python(*args: str, procs: int = 0, env: dict[str, str] | None = None,
               timeout: float = CHILD_TIMEOUT_S, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``python ARGS`` (or torchrun) to the end in ``child_env()`` (in ``cwd``), capturing its text output."""
    return subprocess.run(python_command(*args, procs=procs), env=env or child_env(), capture_output=True,
                          text=True, timeout=timeout, cwd=cwd)


def basisnet_cli(*args: str, procs: int = 0, env: dict[str, str] | None = None,
                 timeout: float = CHILD_TIMEOUT_S, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``basisnet ARGS`` in a child process (``python -m basisnet``)."""
    return run_python("-m", "basisnet", *args, procs=procs, env=env, timeout=timeout, cwd=cwd)


RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def committed_record_keys(stem: str) -> set[str]:
    """Every key the records of the committed ``benchmarks/results/<stem>.json`` use: a study's records keep that
    schema."""
    return set().union(*json.loads((RESULTS / f"{stem}.json").read_text()))
