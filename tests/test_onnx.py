"""ONNX export per stage: every exported model equals PyTorch in ONNX Runtime at any batch size, and the
ONNX runtime's early exit answers as the PyTorch predictor does."""

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from basisnet.deploy import EarlyExitPredictor  # noqa: E402
from basisnet.deploy.onnx_export import OnnxStages, export_stages  # noqa: E402

from test_protocol import _model  # noqa: E402


@pytest.mark.parametrize("name", ["basisnet", "msdnet", "ranet", "mobilenetv3_small"])
def test_exported_stages_equal_pytorch_at_any_batch(name, tmp_path):
    model = _model(name)
    for m in model.modules():  # logits that differ between images and classes: no argmax ties
        if isinstance(m, torch.nn.Linear) and m.out_features == model.num_classes:
            torch.nn.init.normal_(m.weight, std=4.0 / m.in_features**0.5)
    stages = export_stages(model, tmp_path)
    assert len(stages) == model.num_exits and stages[0].inputs == ["images"]
    runtime = OnnxStages(tmp_path)
    for batch in (1, 7):
        x = torch.randn(batch, 3, model.resolution, model.resolution)
        with torch.no_grad():
            expected = model(x)
        got = runtime.exits(x.numpy())
        for ours, theirs in zip(got, expected):
            assert np.abs(ours - theirs.numpy()).max() < 1e-4
    x = torch.randn(8, 3, model.resolution, model.resolution)
    with torch.no_grad():
        conf = torch.stack([z.softmax(-1) for z in model(x)]).max(-1).values
    threshold = float(conf[0].median())
    classes, confidence, stage = OnnxStages(tmp_path, threshold).predict(x.numpy())
    reference = EarlyExitPredictor(model, threshold).predict(x)
    assert np.array_equal(stage, reference.stage.numpy()) and np.array_equal(classes, reference.classes.numpy())
    assert np.abs(confidence - reference.confidence.numpy()).max() < 1e-5
