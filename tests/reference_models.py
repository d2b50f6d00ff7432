"""torchvision's and timm's MobileNet definitions for the import tests, without torchvision's ``__init__``.

The torchvision wheel for this torch is built for CUDA: ``import torchvision`` fails with the CPU torch
(``operator torchvision::nms does not exist``) while its model files are plain Python. ``make install``
puts torchvision and timm with ``--no-deps`` into ``.venv/reference-models`` (outside site-packages, so
nothing else imports them by accident); here a stub ``torchvision`` package points at that folder (it stays
in ``sys.modules`` for the test session: nothing in the suite imports the real one).
"""
from __future__ import annotations

import importlib
import os
import sys
import types
from pathlib import Path

import pytest

FOLDER = Path(os.environ.get("BASISNET_REFERENCE_MODELS", Path(__file__).parents[1] / ".venv" / "reference-models"))


def reference_modules() -> tuple[types.ModuleType, types.ModuleType, types.ModuleType]:
    """(torchvision.models.mobilenetv2, torchvision.models.mobilenetv3, timm); skips when not installed."""
    if not (FOLDER / "torchvision").is_dir() or not (FOLDER / "timm").is_dir():
        missing = f"torchvision/timm model code not installed in {FOLDER} (make install puts it there)"
        if os.environ.get("BASISNET_REQUIRE_REFERENCE"):  # make test: a missing install fails, never skips
            pytest.fail(missing)
        pytest.skip(missing)
    if str(FOLDER) not in sys.path:
        sys.path.insert(0, str(FOLDER))  # the pinned copies before any installed elsewhere
    if "torchvision" not in sys.modules:
        stub = types.ModuleType("torchvision")
        stub.__path__ = [str(FOLDER / "torchvision")]
        stub.__version__ = "stub"
        sys.modules["torchvision"] = stub
    return (importlib.import_module("torchvision.models.mobilenetv2"),
            importlib.import_module("torchvision.models.mobilenetv3"), importlib.import_module("timm"))
