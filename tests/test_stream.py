"""The streaming predictor: every frame once and in order, the same answers as one stage after the other,
and a failing stage or frame source stops every thread and reaches the caller."""

import threading

import pytest
import torch

from basisnet.deploy import EarlyExitPredictor, TorchStages
from basisnet.deploy.stream import StreamPredictor

from helpers import decisive, spread_logits, threshold_between, tiny_model as _model


def _frames(n: int, side: int = 32) -> list[torch.Tensor]:
    return list(torch.randn(n, 3, side, side, generator=torch.Generator().manual_seed(0)))


@pytest.mark.parametrize("name", ["basisnet", "msdnet"])
def test_stream_returns_every_frame_once_in_order(name):
    model = spread_logits(_model(name))
    frames = _frames(23)
    conf = torch.stack([z.softmax(-1) for z in model(torch.stack(frames))]).max(-1).values.detach()
    threshold = threshold_between(conf)
    stages = TorchStages(model)
    parallel = list(StreamPredictor(stages, threshold, queue_size=2).predict(frames))
    sequential = list(StreamPredictor(stages, threshold, parallel=False).predict(frames))
    assert [r.index for r in parallel] == list(range(23)) == [r.index for r in sequential]
    batch = EarlyExitPredictor(stages, threshold).predict(torch.stack(frames))
    assert [r.exit for r in parallel] == batch.exit.tolist() == [r.exit for r in sequential]
    # A frame alone sums in another order than in a batch: its class must agree wherever the top two
    # probabilities of the answering exit are not a numerical tie.
    with torch.no_grad():
        probs = torch.stack([z.softmax(-1) for z in model(torch.stack(frames))])[batch.exit - 1, torch.arange(23)]
    clear = decisive(probs).tolist()
    assert sum(clear) >= 20
    assert [r.cls for r, c in zip(parallel, clear) if c] == [int(k) for k, c in zip(batch.classes, clear) if c]
    assert [r.cls for r in parallel] == [r.cls for r in sequential]  # the same per-frame computation
    assert all(r.latency_s > 0 for r in parallel)
    assert 1 in batch.exit and (batch.exit > 1).any()  # both early and late answers were exercised


def _stream_threads() -> list[threading.Thread]:
    """The threads a stream starts (its stage workers and its feeder are named ``stream-...``)."""
    return [t for t in threading.enumerate() if t.name.startswith("stream")]


def test_a_failing_stage_stops_the_stream_cleanly():
    model = _model("basisnet")
    original, calls = model.step, []

    def failing_step(state, k):
        if k == 1:
            calls.append(1)
            if len(calls) == 3:
                raise RuntimeError("specialist failed")
        return original(state, k)

    model.step = failing_step
    assert not _stream_threads()
    with pytest.raises(RuntimeError, match="specialist failed"):
        list(StreamPredictor(TorchStages(model), threshold=1.0, workers="thread").predict(_frames(20)))
    assert len(calls) == 3  # the specialist ran until it failed, on frames the threshold sent it
    assert not _stream_threads()  # no stage or feeder thread left behind


def test_a_failing_stage_process_stops_the_stream_cleanly():
    """In a stage process: the error crosses back to the caller and no process is left running."""
    import multiprocessing

    from basisnet.layers import NonFiniteCoefficientsError

    model = _model("basisnet")
    torch.nn.init.constant_(model.coeff_head.bias, float("nan"))  # the specialist refuses NaN coefficients
    with pytest.raises(NonFiniteCoefficientsError, match="NaN"):
        list(StreamPredictor(TorchStages(model), threshold=1.0).predict(_frames(5)))
    assert not multiprocessing.active_children()


def test_a_failing_frame_source_stops_the_stream_cleanly():
    def frames():
        yield from _frames(3)
        raise OSError("camera unplugged")

    import multiprocessing

    with pytest.raises(OSError, match="camera unplugged"):
        list(StreamPredictor(TorchStages(_model("basisnet")), threshold=0.5).predict(frames()))
    assert not _stream_threads()
    assert not multiprocessing.active_children()


def test_bad_options_and_the_workers_auto_picks():
    stages = TorchStages(_model("basisnet"))
    with pytest.raises(ValueError, match="stage_threads"):
        StreamPredictor(stages, 0.5, stage_threads=[1])
    with pytest.raises(ValueError, match="queue_size"):
        StreamPredictor(stages, 0.5, queue_size=0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        StreamPredictor(stages, 1.5)
    # auto: processes for PyTorch eager, whose threads would share the GIL (ONNX Runtime: test_onnx.py)
    assert StreamPredictor(stages, 0.5).workers == "process"
    assert StreamPredictor(stages, 0.5, workers="thread").how == "stages in parallel, thread workers, PyTorch eager"
    assert StreamPredictor(stages, 0.5, parallel=False).how == "stages one after the other, PyTorch eager"


@pytest.mark.xdist_group("onnx_run")
def test_cli_predict_stream(shapes_run_onnx, tmp_path, capsys):
    """`predict --stream`: one line per frame in file order, each answered as the batch predictor answers that
    file, and a summary naming how it ran (parallel ONNX Runtime by default, or sequential PyTorch)."""
    import shutil

    import numpy as np
    from PIL import Image

    from basisnet.cli import main
    from basisnet.workflow import predict_files

    run = shutil.copytree(shapes_run_onnx[0], tmp_path / "run")  # holds its stages exported at batch 1
    frames = tmp_path / "frames"
    frames.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(frames / f"{i:03d}.png")
    files = [frames / f"{i:03d}.png" for i in range(6)]
    expected = predict_files(run, files, threshold=0.5)
    for extra, how in (([], "in parallel, thread workers, ONNX Runtime"),  # the default runtime and workers
                       (["--runtime", "torch", "--workers", "thread"], "in parallel, thread workers, PyTorch eager")):
        assert main(["predict", str(run), "--stream", str(frames), "--threshold", "0.5", *extra]) == 0
        lines = capsys.readouterr().out.splitlines()
        rows = [line.split("\t") for line in lines[:-1]]
        assert [row[0] for row in rows] == [str(f) for f in files]
        assert [row[3] for row in rows] == [f"exit {e['exit']}" for e in expected]  # the exit that answered
        assert "6 frames" in lines[-1] and how in lines[-1], lines[-1]
    assert main(["predict", str(run), "--stream", str(frames), "--sequential", "--summary", "--runtime", "torch"]) == 0
    summary = capsys.readouterr().out.splitlines()
    assert len(summary) == 1 and "6 frames" in summary[0] and "one after the other, PyTorch eager" in summary[0]
    assert main(["predict", str(run)]) == 2
    assert "give image files to classify" in capsys.readouterr().err
