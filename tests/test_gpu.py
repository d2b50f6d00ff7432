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


@pytest.mark.parametrize("amp", ["bf16", "fp16", "off"])
def test_basisnet_trains_on_the_gpu(tmp_path: Path, amp: str) -> None:
    result = train_run(load_config(bundled_config("shapes_demo"), [*TINY, f"train.amp={amp}"]), tmp_path / amp,
                       progress=False)
    assert result["global_step"] == 2 * 128 // 32
    assert all(math.isfinite(row["train_loss"]) for row in result["history"])


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
