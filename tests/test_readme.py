"""The newcomer's journey: every command of README.md's and docs/quickstart.md's command blocks runs as written.

Each ``bash`` block line is a ``basisnet`` command run in a child process as a user types it (in a fresh
folder), or one of the set-up lines named in ``SET_UP`` (what ``make demo`` / ``make test`` do, which CI runs
itself). A new kind of line fails here until it is named. What a user's machine holds is stood in for by
tiny things: ``../shared/data/cifar10`` (beside the folder the commands run in, as beside the repository) by
a 10-class JPEG tree of a few images, ``cat.jpg`` / ``dog.png`` by
two images, and a run started with ``--output`` gets sizing overrides (1 epoch, a small validation split), so
the commands that follow read a real run.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import basisnet_cli

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("readme")]

ROOT = Path(__file__).resolve().parents[1]
PAGES = ("README.md", "docs/quickstart.md")
SET_UP = ("make ", "source .venv/bin/activate", "pip install ")  # set-up: CI runs make demo and make test itself
SIZING = ("train.epochs=1", "train.warmup_epochs=0", "data.val_size=20", "data.batch_size=16",
          "data.eval_batch_size=32")
CLASSES = 10


def commands(page: str) -> list[str]:
    """The command lines of ``page``'s bash blocks, comments and blank lines left out."""
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / page).read_text(), flags=re.S)
    lines = [re.sub(r"\s+#.*$", "", line).strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def test_every_line_of_the_command_blocks_is_a_basisnet_command_or_named_set_up() -> None:
    for page in PAGES:
        found = commands(page)
        assert any(line.startswith("basisnet ") for line in found), page
        unknown = [line for line in found if not line.startswith(("basisnet ", *SET_UP))]
        assert not unknown, f"{page}: lines this test does not know how to run: {unknown}"


def _cifar_like(root: Path) -> Path:
    """``root/{train,test}/<class>/*.jpg``: 10 classes, each its own colour, 32x32 as CIFAR-10."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("test", 3)):
        for c in range(CLASSES):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 64, (32, 32, 3), dtype=np.uint8)
                pixels[..., c % 3] += np.uint8(20 * c)
                Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=90)
    return root


def _as_run_here(line: str) -> list[str]:
    """The arguments of a command line, a run it starts sized down."""
    args = shlex.split(line)[1:]
    if args[0] == "train" and "--output" in args:
        args += SIZING
    return args


@pytest.mark.parametrize("page", PAGES)
def test_the_command_blocks_run_as_written(page: str, tmp_path: Path) -> None:
    pytest.importorskip("onnxscript")  # the blocks export and time ONNX stages (the onnx extra make test installs)
    _cifar_like(tmp_path / "shared" / "data" / "cifar10")
    work = tmp_path / "work"
    work.mkdir()
    for name in ("cat.jpg", "dog.png"):
        Image.fromarray(np.full((40, 48, 3), 120, dtype=np.uint8)).save(work / name)
    for line in commands(page):
        if line.startswith(SET_UP):
            continue
        out = basisnet_cli(*_as_run_here(line), cwd=work)
        assert out.returncode == 0, f"{page}: `{line}` failed:\n{out.stderr[-3000:]}"
        assert "Traceback" not in out.stderr and "Warning" not in out.stderr, f"{page}: `{line}`:\n{out.stderr}"
