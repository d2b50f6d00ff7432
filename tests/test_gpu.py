"""The GPU training path, where a CUDA device is visible (skipped elsewhere): mixed precision through
``basisnet train``, pinned streaming batches. (The deferred non-finite check is tested on the CPU in
``test_streaming_data.py``.)"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from basisnet.configs import bundled_config
from basisnet.data import CenterCrop, FileIndex, StreamDataset, StreamLoader
from basisnet.train import load_config
from basisnet.workflow import train_run

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
TINY = ["train.epochs=2", "train.warmup_epochs=0", "data.subset=128", "data.val_size=64", "data.batch_size=32",
        "model.kwargs.specialist_width=0.35", "model.kwargs.num_bases=2", "train.device=cuda", "train.log_interval=3"]


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": torch.float32}


@pytest.mark.parametrize("amp", sorted(AMP_DTYPES))
def test_basisnet_trains_on_the_gpu(tmp_path: Path, amp: str) -> None:
    """``train.amp`` reaches the GPU forward: every linear layer (the exits' classifiers among them) computes
    in the asked dtype, in training and validation alike. Fails when the setting is ignored."""
    seen = set()

    def record(module: torch.nn.Module, args: object, out: object) -> None:
        if isinstance(module, torch.nn.Linear) and isinstance(out, torch.Tensor) and out.is_cuda:
            seen.add((module.training, out.dtype))

    handle = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        result = train_run(load_config(bundled_config("shapes_demo"), [*TINY, f"train.amp={amp}"]), tmp_path / amp,
                           progress=False)
    finally:
        handle.remove()
    assert result["global_step"] == 2 * 128 // 32
    assert all(math.isfinite(row["train_loss"]) for row in result["history"])
    assert seen == {(True, AMP_DTYPES[amp]), (False, AMP_DTYPES[amp])}, seen


def test_streaming_batches_come_pinned(tmp_path: Path) -> None:
    from PIL import Image

    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(4):
            Image.new("RGB", (40, 30), (60 * i, 0, 0)).save(tmp_path / c / f"{i}.jpg")
    loader = StreamLoader(StreamDataset(FileIndex.from_folder(tmp_path), CenterCrop(16)), 4, shuffle=False,
                          num_workers=1, pin_memory=True)
    images, labels = next(iter(loader))
    assert images.is_pinned() and images.to("cuda", non_blocking=True).shape == (4, 3, 16, 16)


class _Overflowing(torch.nn.Module):
    """A finite loss whose gradient is not (sqrt's slope at 0): the fp16 scaler skips every step."""

    num_exits = 1

    def __init__(self) -> None:
        super().__init__()
        self.head = torch.nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = x.mean((2, 3))
        return [self.head(h) + torch.sqrt(self.head.bias * 0).sum()]


def test_fp16_uses_the_fused_optimizer_and_stops_when_the_scale_collapses(tmp_path: Path) -> None:
    from basisnet.data import BatchLoader, ImageTensorDataset, Normalize
    from basisnet.train import NonFiniteLossError, TrainData, build_parts, fit

    cfg = load_config(None, ["train.epochs=1", "train.warmup_epochs=0", "train.amp=fp16", "data.batch_size=4",
                             "train.log_interval=4", "train.device=cuda"])
    parts = build_parts(_Overflowing().cuda(), cfg.train, steps_per_epoch=1)
    assert parts.optimizer.defaults.get("fused") is True  # skipping an overflowed step needs no host read
    images = torch.randint(0, 256, (4 * 80, 3, 8, 8), dtype=torch.uint8)
    data = ImageTensorDataset(images, torch.arange(len(images)) % 3, ["a", "b", "c"])
    norm = Normalize((0.5,) * 3, (0.25,) * 3)
    loaders = TrainData(BatchLoader(data, 4, shuffle=True, drop_last=True), BatchLoader(data, 64, shuffle=False),
                        norm, norm)
    # the scale halves at every skipped step: 2^16 falls below the 2^-14 floor after 31 steps of 80
    with pytest.raises(NonFiniteLossError, match="fp16 scale fell"):
        fit(_Overflowing().cuda(), loaders, cfg, tmp_path, progress=False)
    assert not (tmp_path / "last.state.pt").exists()
