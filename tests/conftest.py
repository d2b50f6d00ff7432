"""Shared test set-up."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _restore_denormals():
    """Training flushes denormals for speed (restored on the calling thread when it ends); hypothesis
    refuses to generate floats under flush-to-zero, so every test starts and ends with IEEE denormals
    whatever a failing test left behind."""
    torch.set_flush_denormal(False)
    yield
    torch.set_flush_denormal(False)
