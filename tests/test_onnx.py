"""ONNX export per stage: every exported model equals PyTorch in ONNX Runtime at any batch size, and the
ONNX runtime's early exit answers as the PyTorch predictor does."""

import contextlib
import io
import json

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from basisnet.deploy import EarlyExitPredictor  # noqa: E402
from basisnet.deploy.onnx_export import OnnxStages, check_export_batch, export_stages  # noqa: E402

from test_protocol import _model, spread_logits, threshold_between  # noqa: E402


@pytest.mark.slow
@pytest.mark.parametrize("name", ["basisnet", "msdnet", "ranet", "mobilenetv3_small", "condconv_mobilenetv3_small"])
def test_exported_stages_equal_pytorch_at_any_batch(name, tmp_path):
    model = spread_logits(_model(name))
    stages = export_stages(model, tmp_path)
    assert len(stages) == model.num_exits and stages[0].inputs == ["images"]
    runtime = OnnxStages(tmp_path)
    for batch in (1, 7):
        x = torch.randn(batch, 3, model.resolution, model.resolution)
        with torch.no_grad():
            expected = model(x)
        got = runtime.exits(x.numpy())
        for ours, theirs in zip(got, expected):  # 1e-4, relative to the logits' scale (float32 sums, another order)
            assert np.abs(ours - theirs.numpy()).max() < 1e-4 * (1 + np.abs(theirs.numpy()).max())
    x = torch.randn(8, 3, model.resolution, model.resolution, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        conf = torch.stack([z.softmax(-1) for z in model(x)]).max(-1).values
    threshold = threshold_between(conf)  # never at an image's own confidence: no tie decided by rounding
    classes, confidence, stage = OnnxStages(tmp_path, threshold).predict(x.numpy())
    reference = EarlyExitPredictor(model, threshold).predict(x)
    assert np.array_equal(stage, reference.stage.numpy())
    with torch.no_grad():  # classes must agree wherever the top two probabilities are not a numerical tie
        probs = torch.stack([z.softmax(-1) for z in model(x)])[reference.stage, torch.arange(8)]
    top2 = probs.topk(2, dim=-1).values
    decisive = (top2[:, 0] - top2[:, 1] > 1e-4).numpy()
    assert np.array_equal(classes[decisive], reference.classes.numpy()[decisive])
    assert np.abs(confidence - reference.confidence.numpy()).max() < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("batch", [1, 3])
def test_basisnet_fixed_batch_forms_equal_pytorch(batch, tmp_path):
    """Batch 1 (fused synthesis, a plain Conv per layer) and a bulk batch (per-image kernels): equal to
    PyTorch, fed any number of images (slices of the graph's batch, the last one padded)."""
    model = spread_logits(_model("basisnet"))
    export_stages(model, tmp_path, batch=batch)
    assert json.loads((tmp_path / "stages.json").read_text())["batch"] == batch
    if batch == 1:  # the specialist synthesized once: one MatMul mixes every kernel, none per layer
        import onnx

        ops = [node.op_type for node in onnx.load(str(tmp_path / "stage1.onnx")).graph.node]
        assert ops.count("MatMul") == 1 and "Split" in ops
    runtime = OnnxStages(tmp_path)
    x = torch.randn(7, 3, model.resolution, model.resolution, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = model(x)
    for ours, theirs in zip(runtime.exits(x.numpy()), expected):
        assert ours.shape == theirs.shape
        assert np.abs(ours - theirs.numpy()).max() < 1e-4 * (1 + np.abs(theirs.numpy()).max())


def test_export_batch_must_be_a_positive_integer_or_dynamic():
    assert check_export_batch("dynamic") is None and check_export_batch("8") == 8 and check_export_batch(1) == 1
    for bad in (0, -2, "many", 2.5):
        with pytest.raises(ValueError, match="positive integer or 'dynamic'"):
            check_export_batch(bad)


@pytest.fixture(scope="module")
def shapes_run(tmp_path_factory):
    from basisnet.configs import bundled_config
    from basisnet.train import load_config
    from basisnet.workflow import train_run

    run = tmp_path_factory.mktemp("runs") / "shapes"
    train_run(load_config(bundled_config("shapes_demo"), [
        "train.epochs=1", "train.warmup_epochs=0", "data.subset=64", "data.val_size=32", "data.batch_size=32",
        "model.kwargs.specialist_width=0.35", "model.kwargs.num_bases=2"]), run, progress=False)
    return run


@pytest.fixture(scope="module")
def cli_export(shapes_run, tmp_path_factory):
    """`basisnet export` of the run (exporting is the slow part: the tests below share it)."""
    from basisnet.cli import main

    out = tmp_path_factory.mktemp("onnx") / "onnx"
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        assert main(["export", str(shapes_run), "--output", str(out)]) == 0
    return out, printed.getvalue()


@pytest.mark.slow
@pytest.mark.xdist_group("onnx_run")
def test_cli_export_of_a_run(cli_export):
    """`basisnet export` writes a run's stages and class names; ONNX Runtime loads them."""
    out, printed = cli_export
    assert "stage 1:" in printed and "stage 2:" in printed
    assert (out / "classes.json").is_file()
    assert len(OnnxStages(out).sessions) == 2


@pytest.mark.xdist_group("onnx_run")
def test_deploy_benchmark_tables(shapes_run, cli_export, tmp_path):
    """bench deploy: a latency row per stage and batch; per camera, the three models scored on its stream."""
    import json

    from PIL import Image

    from basisnet.bench.deploy import camera_specialization, format_deploy_tables, onnx_latency
    from basisnet.workflow import load_run

    classes = json.loads((shapes_run / "classes.json").read_text())
    rng = np.random.default_rng(0)
    for name in classes[:2]:
        folder = tmp_path / "data" / "test" / name
        folder.mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    model, _ = load_run(shapes_run)
    latency = onnx_latency(model, cli_export[0], batches=(1, 3), repeats=1, export=False)
    assert [(r["stage"], r["batch"]) for r in latency] == [(1, 1), (2, 1), (1, 3), (2, 3)]
    assert all(r["pytorch_ms"] > 0 and r["onnxruntime_ms"] > 0 for r in latency)
    cameras = camera_specialization(shapes_run, tmp_path / "data", static_run=None, cameras={"cam": tuple(classes[:2])})
    assert cameras[0]["seen"] == 4 and cameras[0]["scored"] == 4
    assert cameras[0]["specialized_madds"] < cameras[0]["basisnet_madds"]
    assert "cam" in format_deploy_tables({"onnx": latency, "cameras": cameras})


@pytest.mark.slow
def test_stream_in_onnx_runtime_answers_as_pytorch(tmp_path):
    """The stream on stages exported at batch 1 (stage processes, in order) answers as the PyTorch predictor."""
    from basisnet.deploy.stream import StreamPredictor

    model = spread_logits(_model("basisnet"))
    export_stages(model, tmp_path, batch=1)
    frames = list(torch.randn(12, 3, model.resolution, model.resolution, generator=torch.Generator().manual_seed(5)))
    with torch.no_grad():
        conf = torch.stack([z.softmax(-1) for z in model(torch.stack(frames))]).max(-1).values
    threshold = threshold_between(conf)
    got = list(StreamPredictor(OnnxStages(tmp_path), threshold, queue_size=2).predict(frames))
    reference = EarlyExitPredictor(model, threshold).predict(torch.stack(frames))
    assert [r.index for r in got] == list(range(12))
    assert [r.stage for r in got] == reference.stage.tolist() and 0 < reference.stage.sum() < 12
    assert np.abs(np.array([r.confidence for r in got]) - reference.confidence.numpy()).max() < 1e-5


@pytest.mark.xdist_group("onnx_run")
def test_latency_target_in_onnx_runtime(shapes_run):
    """--target-ms in ONNX Runtime: exits measured on the stages exported at batch 1 (once per weights), the
    picked threshold timed on test images."""
    from basisnet.workflow import evaluate_run

    report = evaluate_run(shapes_run, target_ms=1e6, runtime="onnx", latency_images=8)
    assert report["runtime"] == "onnx" and len(report["exit_ms"]) == 2 and report["measured_ms_test"] > 0
    manifest = shapes_run / "onnx_batch1" / "stages.json"
    assert json.loads(manifest.read_text())["batch"] == 1
    exported_at = manifest.stat().st_mtime
    evaluate_run(shapes_run, target_ms=1e6, runtime="onnx", latency_images=8)
    assert manifest.stat().st_mtime == exported_at  # exported once per weights
