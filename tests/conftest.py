"""Shared test set-up."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _restore_denormals():
    """Training turns on flush-to-zero for speed (process-wide); hypothesis refuses to generate floats
    under it, so every test starts and ends with IEEE denormals."""
    torch.set_flush_denormal(False)
    yield
    torch.set_flush_denormal(False)
