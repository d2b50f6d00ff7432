"""ONNX export per stage: the batch forms equal PyTorch in ONNX Runtime fed any number of images, a run exports
from the CLI, and the stream and a latency target run the exported stages (the ``Stages`` contract over
exported models, logits and early exit, is tests/test_stages.py's)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from basisnet.deploy import EarlyExitPredictor, TorchStages  # noqa: E402
from basisnet.deploy.onnx_export import ExportPaths, check_export_batch, export_stages  # noqa: E402
from basisnet.deploy.onnx_runtime import OnnxStages  # noqa: E402
from basisnet.models import run_exits  # noqa: E402

from helpers import spread_logits, threshold_between, tiny_model as _model  # noqa: E402


@pytest.fixture(scope="module")
def basisnet_at_batch1(tmp_path_factory):
    """The tiny BasisNet (spread logits) and its stages exported at batch 1: the stream's form."""
    model = spread_logits(_model("basisnet"))
    out = tmp_path_factory.mktemp("batch1")
    export_stages(model, out, batch=1)
    return model, out


@pytest.mark.slow
@pytest.mark.xdist_group("onnx_batch1")
@pytest.mark.parametrize("batch", [1, 3])
def test_basisnet_fixed_batch_forms_equal_pytorch(batch, basisnet_at_batch1, tmp_path):
    """Batch 1 (fused synthesis, a plain Conv per layer) and a bulk batch (per-image kernels): equal to
    PyTorch, fed any number of images (slices of the graph's batch, the last one padded)."""
    model, folder = basisnet_at_batch1
    if batch != 1:
        folder = tmp_path
        export_stages(model, folder, batch=batch)
    assert json.loads((folder / "stages.json").read_text())["batch"] == batch
    if batch == 1:  # the specialist synthesized once: one MatMul mixes every kernel, none per layer
        import onnx

        ops = [node.op_type for node in onnx.load(str(folder / "stage2.onnx")).graph.node]
        assert ops.count("MatMul") == 1 and "Split" in ops
    runtime = OnnxStages(folder)
    x = torch.randn(7, 3, model.resolution, model.resolution, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = model(x)
    for ours, theirs in zip(run_exits(runtime, x), expected):
        assert ours.shape == theirs.shape
        assert (ours - theirs).abs().max() < 1e-4 * (1 + theirs.abs().max())


def test_export_forms_are_a_policy_by_layer_kind():
    """A fixed batch: 1x1 convs and linear layers a batched MatMul, other convs one grouped Conv (depthwise:
    autograd's own conv, no custom Function in the graph); any batch: the forms that keep the batch dynamic."""
    from basisnet.layers import BasisConv2d, BasisLinear

    layers = {"pointwise": BasisConv2d(4, 8, 1, 2), "depthwise": BasisConv2d(4, 4, 3, 2, padding=1, groups=4),
              "dense": BasisConv2d(4, 8, 3, 2, padding=1), "linear": BasisLinear(4, 3, 2)}
    x = torch.randn(8, 4, 5, 5)
    fixed = {kind: ExportPaths(8).path(layer, x) for kind, layer in layers.items()}
    assert fixed == {"pointwise": "matmul", "depthwise": "grouped_aten", "dense": "grouped", "linear": "matmul"}
    dynamic = {kind: ExportPaths(None).path(layer, x) for kind, layer in layers.items()}
    assert dynamic == {"pointwise": "matmul", "depthwise": "mix_outputs", "dense": "mix_outputs", "linear": "matmul"}
    assert ExportPaths(1).fuse  # batch 1: the one coefficient set is fused before any layer mixes


def test_export_batch_must_be_a_positive_integer_or_dynamic():
    assert check_export_batch("dynamic") is None and check_export_batch("8") == 8 and check_export_batch(1) == 1
    for bad in (0, -2, "many", 2.5):
        with pytest.raises(ValueError, match="positive integer or 'dynamic'"):
            check_export_batch(bad)


@pytest.mark.slow
def test_a_first_onnx_stream_says_it_exports_and_prints_no_warning(shapes_run, tmp_path):
    """``predict --stream`` on a run without exported stages, as a user runs it (a child process): stderr holds
    the threshold used and one line saying the stages are exported (once, before the clock starts), and
    nothing else (no warning of the exporter, ONNX Runtime or the stream)."""
    import shutil

    from PIL import Image

    from helpers import basisnet_cli

    run = shutil.copytree(shapes_run, tmp_path / "run")
    frames = tmp_path / "frames"
    frames.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(frames / f"f{i}.png")
    out = basisnet_cli("predict", str(run), "--stream", str(frames), "--runtime", "onnx", "--summary")
    assert out.returncode == 0, out.stderr
    threshold, exporting = out.stderr.splitlines()
    assert threshold.startswith("threshold ") and exporting.startswith(f"exporting the stages of {run} for batch 1")
    assert out.stdout.startswith("6 frames in ") and (run / "onnx_batch1" / "stages.json").is_file()
    again = basisnet_cli("predict", str(run), "--stream", str(frames), "--runtime", "onnx", "--summary")
    assert again.returncode == 0 and len(again.stderr.splitlines()) == 1  # exported once: only the threshold


@pytest.mark.slow
@pytest.mark.xdist_group("onnx_run")
def test_cli_export_of_a_run(shapes_run_onnx):
    """`basisnet export --batch 1` writes a run's stages at that batch and its class names; ONNX Runtime loads
    them and answers as the run's PyTorch model."""
    from basisnet.workflow import load_run

    run, printed, complaints = shapes_run_onnx
    out = run / "onnx_batch1"
    assert "stage 1:" in printed and "stage 2:" in printed
    assert complaints == ""  # no warning or log line alarms whoever exports: the outputs are right
    assert json.loads((out / "classes.json").read_text()) == json.loads((run / "classes.json").read_text())
    manifest = json.loads((out / "stages.json").read_text())
    model, cfg = load_run(run)
    assert manifest["batch"] == 1
    # what a deployer needs to preprocess an image, as the run evaluated it
    assert (manifest["preprocess"]["mean"], manifest["preprocess"]["std"]) == (list(cfg.data.mean), list(cfg.data.std))
    assert manifest["preprocess"]["image_size"] == cfg.data.image_size == manifest["resolution"]
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        expected = model(x)
    for ours, theirs in zip(run_exits(OnnxStages(out), x), expected):
        assert (ours - theirs).abs().max() < 1e-4 * (1 + theirs.abs().max())


@pytest.mark.xdist_group("onnx_run")
def test_deploy_benchmark_tables(shapes_run_onnx, tmp_path):
    """bench deploy: a latency row per stage and batch; per camera, the three models scored on its stream."""
    import json

    from PIL import Image

    from basisnet.bench.deploy import camera_specialization, format_deploy_tables, onnx_latency
    from basisnet.workflow import load_run

    shapes_run = shapes_run_onnx[0]
    classes = json.loads((shapes_run / "classes.json").read_text())
    rng = np.random.default_rng(0)
    for name in classes[:2]:
        folder = tmp_path / "data" / "test" / name
        folder.mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    model, _ = load_run(shapes_run)
    latency = onnx_latency(model, shapes_run / "onnx_batch1", batches=(1, 3), repeats=1, export=False)
    assert [(r["stage"], r["batch"]) for r in latency] == [(1, 1), (2, 1), (1, 3), (2, 3)]
    assert all(r["pytorch_ms"] > 0 and r["onnxruntime_ms"] > 0 for r in latency)
    cameras = camera_specialization(shapes_run, tmp_path / "data", static_run=None, cameras={"cam": tuple(classes[:2])})
    assert cameras[0]["seen"] == 4 and cameras[0]["scored"] == 4
    assert cameras[0]["specialized_madds"] < cameras[0]["basisnet_madds"]
    assert "cam" in format_deploy_tables({"onnx": latency, "cameras": cameras})


@pytest.mark.slow
@pytest.mark.xdist_group("onnx_batch1")
def test_stream_in_onnx_runtime_answers_as_pytorch(basisnet_at_batch1):
    """The stream on stages exported at batch 1 (stage threads, in order) answers as the PyTorch predictor."""
    from basisnet.deploy.stream import StreamPredictor

    model, folder = basisnet_at_batch1
    frames = list(torch.randn(12, 3, model.resolution, model.resolution, generator=torch.Generator().manual_seed(5)))
    with torch.no_grad():
        conf = torch.stack([z.softmax(-1) for z in model(torch.stack(frames))]).max(-1).values
    threshold = threshold_between(conf)
    stream = StreamPredictor(OnnxStages(folder), threshold, queue_size=2)
    assert stream.workers == "thread"  # auto: ONNX Runtime runs a graph without the GIL
    got = list(stream.predict(frames))
    reference = EarlyExitPredictor(TorchStages(model), threshold).predict(torch.stack(frames))
    assert [r.index for r in got] == list(range(12))
    assert [r.exit for r in got] == reference.exit.tolist() and 12 < reference.exit.sum() < 24
    assert np.abs(np.array([r.confidence for r in got]) - reference.confidence.numpy()).max() < 1e-5


@pytest.mark.xdist_group("onnx_run")
def test_latency_target_in_onnx_runtime(shapes_run_onnx, tmp_path, monkeypatch):
    """--target-ms in ONNX Runtime: exits measured on the stages exported at batch 1 (exported once per
    weights, again when the weights are newer), the picked threshold timed on test images one by one."""
    import os
    import shutil

    import basisnet.workflow
    from basisnet.workflow import evaluate_run, exported_stages

    run = shutil.copytree(shapes_run_onnx[0], tmp_path / "run")  # evaluations are written into the run
    answered, exported = [], []
    original_predict = EarlyExitPredictor.predict

    def spy(self, images, last=None):
        if last is None:  # an early-exit answer (the exits' latencies are timed with last=k)
            answered.append((type(self.stages), self.threshold, len(images)))
        return original_predict(self, images, last)

    def export_spy(run_dir, output, batch="dynamic"):
        """Records the export; the stages already there stand for its result (a real export of the same
        weights would write the same graphs, at the suite's slowest step)."""
        exported.append(batch)
        (Path(output) / "stages.json").touch()

    monkeypatch.setattr(EarlyExitPredictor, "predict", spy)
    monkeypatch.setattr(basisnet.workflow, "export_run", export_spy)
    report = evaluate_run(run, target_ms=1e6, runtime="onnx", latency_images=8)
    assert report["runtime"] == "onnx" and len(report["exit_ms"]) == 2 and report["measured_ms_test"] > 0
    threshold = report["result"]["threshold"]
    assert answered == [(OnnxStages, threshold, 1)] * (3 + 8)  # 3 warm-up answers, then 8 test images, one at a time
    assert exported == []  # the stages `basisnet export --batch 1` wrote are the ones it runs
    manifest = run / "onnx_batch1" / "stages.json"
    weights = next(p for p in (run / "best.safetensors", run / "last.safetensors") if p.is_file())
    stale = weights.stat().st_mtime - 10
    os.utime(manifest, (stale, stale))  # an export older than the weights
    assert exported_stages(run, 1) == run / "onnx_batch1"
    assert exported == [1] and manifest.stat().st_mtime > weights.stat().st_mtime  # exported again, at batch 1
    exported_stages(run, 1)
    assert exported == [1]  # and only once per weights
