"""The ``Stages`` contract, checked once over the PyTorch stages of every registered model and the ONNX Runtime
stages of the exported ones: the model's logits with images leaving between exits, and the one early-exit
predictor answering as the full forward says, each later exit computing only for the undecided images."""

import pytest
import torch

from basisnet.deploy import EarlyExitPredictor, Stages, TorchStages
from basisnet.evaluate import exit_madds
from basisnet.models import list_models
from helpers import decisive, exit_confidences, spread_logits, threshold_between, tiny_model

EXPORTED = ["basisnet", "msdnet", "ranet", "mobilenetv3_small", "condconv_mobilenetv3_small"]
CASES = [("torch", name) for name in list_models()] + [
    pytest.param("onnx", name, marks=pytest.mark.slow, id=f"onnx-{name}") for name in EXPORTED]


def _stages(runtime: str, model: torch.nn.Module, folder) -> Stages:
    if runtime == "torch":
        return TorchStages(model)
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from basisnet.deploy.onnx_export import export_stages
    from basisnet.deploy.onnx_runtime import OnnxStages

    export_stages(model, folder)
    return OnnxStages(folder)


def _close(ours: torch.Tensor, theirs: torch.Tensor) -> bool:
    """Within 1e-4 of the logits' scale (float32 sums in another order, another runtime)."""
    return ours.shape == theirs.shape and float((ours - theirs).abs().max()) < 1e-4 * (1 + float(theirs.abs().max()))


@pytest.mark.parametrize("runtime, name", CASES)
def test_stages_keep_the_contract(runtime, name, tmp_path, monkeypatch):
    model = spread_logits(tiny_model(name))
    stages = _stages(runtime, model, tmp_path)
    assert isinstance(stages, Stages)
    assert (stages.num_exits, stages.resolution) == (model.num_exits, model.resolution)
    assert stages.exit_costs is None or list(stages.exit_costs) == exit_madds(model)
    side = model.resolution
    for batch in (1, 7):  # every other image goes on after each exit: the rest keep their own logits
        x = torch.randn(batch, 3, side, side, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            full = model(x)
            alive, state = torch.arange(batch), stages.start(x)
            for k in range(stages.num_exits):
                logits, state = stages.step(state, k)
                assert _close(logits, full[k][alive]), (k, alive)
                keep = torch.arange(0, len(alive), 2)
                alive, state = alive[keep], stages.select(state, keep)

    x = torch.randn(8, 3, side, side, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        probs = torch.stack([z.softmax(-1) for z in model(x)])
    conf = probs.max(-1).values
    threshold = threshold_between(conf)  # never at an image's own confidence: no tie decided by rounding
    expected = torch.full((8,), model.num_exits - 1)
    for k in reversed(range(model.num_exits - 1)):
        expected[conf[k] >= threshold] = k
    seen, step = [], stages.step

    def counting_step(state, k):
        logits, state = step(state, k)
        seen.append((k, len(logits)))
        return logits, state

    monkeypatch.setattr(stages, "step", counting_step)
    pred = EarlyExitPredictor(stages, threshold).predict(x)
    assert torch.equal(pred.exit, expected + 1)  # exits counted from 1
    # exits in order, each computing only for the images still undecided, none after the last answer
    assert seen == [(k, int((expected >= k).sum())) for k in range(int(expected.max()) + 1)]
    picked = probs[expected, torch.arange(8)]
    clear = decisive(picked)  # classes must agree wherever the top two probabilities are not a numerical tie
    assert clear.sum() >= 6 and torch.equal(pred.classes[clear], picked.argmax(-1)[clear])
    torch.testing.assert_close(pred.confidence, picked.max(-1).values, rtol=1e-4, atol=1e-5)
    costs = stages.exit_costs
    assert pred.madds.tolist() == [float(costs[s]) for s in expected] if costs else pred.madds.isnan().all()


def test_compiled_stages_answer_as_eager() -> None:
    """Both stages run compiled: a threshold in the widest gap of spread confidences sends some images on to
    the specialist, so its compiled stage is exercised and must answer as eager does."""
    from torch._dynamo.utils import counters

    model = spread_logits(tiny_model("basisnet"))
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    threshold = threshold_between(exit_confidences(model, x))
    eager = EarlyExitPredictor(TorchStages(model), threshold).predict(x)
    assert len(x) < int(eager.exit.sum()) < 2 * len(x)  # some images answered by each stage
    torch._dynamo.reset()
    counters.clear()
    compiled = EarlyExitPredictor(TorchStages(model, compile="eager"), threshold).predict(x)
    assert counters["stats"]["unique_graphs"] >= 2  # the lightweight and the specialist stage went through dynamo
    assert torch.equal(compiled.exit, eager.exit) and torch.equal(compiled.classes, eager.classes)
    torch.testing.assert_close(compiled.confidence, eager.confidence)


def test_a_channels_last_model_gets_its_images_in_that_layout() -> None:
    from basisnet.layers import to_channels_last

    model = to_channels_last(tiny_model("mobilenetv3_small"))
    seen = []
    model.start = lambda x: (seen.append(x.is_contiguous(memory_format=torch.channels_last)), x)[1]
    TorchStages(model).start(torch.randn(2, 3, 32, 32))
    assert seen == [True]
