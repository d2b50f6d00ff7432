"""The streaming predictor: every frame once and in order, the same answers as one stage after the other,
and a failing stage or frame source stops every thread and reaches the caller."""

import threading

import pytest
import torch

from basisnet.deploy import EarlyExitPredictor
from basisnet.deploy.stream import StreamPredictor

from test_protocol import _model, spread_logits, threshold_between


def _frames(n: int, side: int = 32) -> list[torch.Tensor]:
    return list(torch.randn(n, 3, side, side, generator=torch.Generator().manual_seed(0)))


@pytest.mark.parametrize("name", ["basisnet", "msdnet"])
def test_stream_returns_every_frame_once_in_order(name):
    model = spread_logits(_model(name))
    frames = _frames(23)
    conf = torch.stack([z.softmax(-1) for z in model(torch.stack(frames))]).max(-1).values.detach()
    threshold = threshold_between(conf)
    parallel = list(StreamPredictor(model, threshold, queue_size=2).predict(frames))
    sequential = list(StreamPredictor(model, threshold, parallel=False).predict(frames))
    assert [r.index for r in parallel] == list(range(23)) == [r.index for r in sequential]
    batch = EarlyExitPredictor(model, threshold).predict(torch.stack(frames))
    assert [r.stage for r in parallel] == batch.stage.tolist() == [r.stage for r in sequential]
    assert [r.cls for r in parallel] == batch.classes.tolist()
    assert all(r.latency_s > 0 for r in parallel)
    assert 0 in batch.stage and (batch.stage > 0).any()  # both early and late answers were exercised


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
    before = threading.active_count()
    with pytest.raises(RuntimeError, match="specialist failed"):
        list(StreamPredictor(model, threshold=1.0, workers="thread").predict(_frames(20)))
    assert threading.active_count() == before  # no stage thread left behind


def test_a_failing_stage_process_stops_the_stream_cleanly():
    """In a stage process: the error crosses back to the caller and no process is left running."""
    import multiprocessing

    from basisnet.layers import NonFiniteCoefficientsError

    model = _model("basisnet")
    torch.nn.init.constant_(model.coeff_head.bias, float("nan"))  # the specialist refuses NaN coefficients
    with pytest.raises(NonFiniteCoefficientsError, match="NaN"):
        list(StreamPredictor(model, threshold=1.0).predict(_frames(5)))
    assert not multiprocessing.active_children()


def test_a_failing_frame_source_stops_the_stream_cleanly():
    def frames():
        yield from _frames(3)
        raise OSError("camera unplugged")

    import multiprocessing

    with pytest.raises(OSError, match="camera unplugged"):
        list(StreamPredictor(_model("basisnet"), threshold=0.5).predict(frames()))
    assert not [t for t in threading.enumerate() if t.name.startswith("stream")]
    assert not multiprocessing.active_children()


def test_bad_options():
    model = _model("basisnet")
    with pytest.raises(ValueError, match="stage_threads"):
        StreamPredictor(model, 0.5, stage_threads=[1])
    with pytest.raises(ValueError, match="queue_size"):
        StreamPredictor(model, 0.5, queue_size=0)


def test_cli_predict_stream(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from basisnet.cli import main
    from basisnet.configs import bundled_config
    from basisnet.train import load_config
    from basisnet.workflow import train_run

    run = tmp_path / "run"
    train_run(load_config(bundled_config("shapes_demo"), [
        "train.epochs=1", "train.warmup_epochs=0", "data.subset=64", "data.val_size=32", "data.batch_size=32",
        "model.kwargs.specialist_width=0.35", "model.kwargs.num_bases=2"]), run, progress=False)
    frames = tmp_path / "frames"
    frames.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(frames / f"{i:03d}.png")
    assert main(["predict", str(run), "--stream", str(frames), "--threshold", "0.5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines[:-1]] == [str(frames / f"{i:03d}.png") for i in range(6)]
    assert "6 frames" in lines[-1] and "in parallel, thread workers, ONNX Runtime" in lines[-1]
    assert main(["predict", str(run), "--stream", str(frames), "--sequential", "--summary", "--runtime", "torch"]) == 0
    assert "one after the other, PyTorch eager" in capsys.readouterr().out
    assert main(["predict", str(run)]) == 2
