"""Shared test settings: every test starts from the same random state and the same torch thread count.

A draw that is not seeded inside a test would otherwise depend on which tests ran before it (or in which
worker), so a verdict could change with the selection or the order of the tests.

``make test`` runs the suite in two pytest-xdist workers (``-n 2 --dist loadgroup``): each worker computes
with one torch thread (two workers with two threads each would fight over two cores; OpenMP's
spin-waiting makes that 5-10x slower), and child processes inherit ``OMP_NUM_THREADS=1``. Tests that share
an expensive module fixture carry ``pytest.mark.xdist_group`` so it is computed once. Shared helpers (tiny
models, thresholds, toy networks, the subprocess launcher) live in ``helpers.py``; shared runs here.
"""

import os
import random

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings

# Hypothesis draws the same examples on every run (derandomize: a seed from each test's source), with no example
# database carried between runs and no deadline (a loaded 2-core machine is slow, never wrong): a property test
# passes or fails on the code alone.
settings.register_profile("basisnet", derandomize=True, database=None, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("basisnet")

WORKER_THREADS = 1


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(WORKER_THREADS)
        os.environ["OMP_NUM_THREADS"] = str(WORKER_THREADS)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Files holding a test marked ``slow`` first (longest processing time first): a long test dealt out
    last would leave one worker computing alone at the end. Whole files move, in their own order, so a
    module fixture is built once also in a single process (``make test-all``)."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)


@pytest.fixture(autouse=True)
def _seeded_and_threads_restored() -> None:
    """Seeds before the test; the thread count after it (a benchmark under test may set its own)."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def shapes_run(tmp_path_factory: pytest.TempPathFactory):
    """One tiny trained BasisNet run directory (``helpers.train_tiny_shapes``), shared by every test that reads a
    run (evaluate, export, predict, stream) and changes nothing in it."""
    from helpers import train_tiny_shapes

    return train_tiny_shapes(tmp_path_factory.mktemp("shared") / "shapes")


@pytest.fixture(scope="session")
def shapes_run_onnx(shapes_run, tmp_path_factory: pytest.TempPathFactory):
    """A copy of ``shapes_run`` with its stages exported at batch 1 by ``basisnet export --batch 1`` (a child
    process, as a user runs it) into the folder where ``evaluate --target-ms`` and ``predict --stream`` look
    for them: an ONNX export is the slowest step of the suite, so one serves every test of a run's ONNX path.
    Returns the run and what the export printed (stdout, stderr); copy the run before writing into it
    (``shutil.copytree`` keeps the export newer than the weights)."""
    import shutil

    from basisnet.train.run_dir import RunDir
    from helpers import basisnet_cli

    run = shutil.copytree(shapes_run, tmp_path_factory.mktemp("shared_onnx") / "shapes")
    out = basisnet_cli("export", str(run), "--output", str(RunDir(run).onnx(1)), "--batch", "1")
    assert out.returncode == 0, out.stderr
    return run, out.stdout, out.stderr
