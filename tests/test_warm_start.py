"""Warm start: trained static kernels spread into every basis; clear errors when the source does not fit."""

import pytest
import torch

from basisnet import create_model
from basisnet.models.upcycle import UpcycleError, spread_into_bases
from basisnet.train import CheckpointMismatchError, save_weights, warm_start

from helpers import MOBILE, TINY

def _static(width=0.35):
    return create_model("mobilenetv3_small", **{**MOBILE, "width": width}).eval()


def test_noiseless_warm_start_reproduces_the_static_nets(tmp_path):
    specialist, light = _static(), _static()
    save_weights(specialist, tmp_path / "s.safetensors", {"epoch": "7"})
    save_weights(light, tmp_path / "l.safetensors")
    model = create_model("basisnet", **TINY["basisnet"])
    epochs = warm_start(model, {"specialist": tmp_path / "s.safetensors", "lightweight": tmp_path / "l.safetensors"},
                        noise=0.0)
    assert epochs == {"specialist": {"epochs": 7, "notes": []}, "lightweight": {"epochs": None, "notes": []}}
    model.eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        light_logits, special_logits = model(x)
        # Equal bases: any coefficients give the static kernel, so the specialist is the static net.
        torch.testing.assert_close(special_logits, specialist(x)[0], rtol=1e-4, atol=1e-4)
        small = torch.nn.functional.interpolate(x, size=model.lightweight_resolution, mode="bilinear", antialias=True,
                                                align_corners=False)
        torch.testing.assert_close(light_logits, light(small)[0], rtol=1e-4, atol=1e-4)


def test_noise_breaks_the_symmetry_by_the_asked_amount():
    source = _static()
    model = create_model("mobilenetv3_small", **MOBILE, num_bases=4)
    spread_into_bases(model, source.state_dict(), noise=0.01, generator=torch.Generator().manual_seed(0))
    src = source.state_dict()["blocks.3.expand.0.weight"]
    bases = model.state_dict()["blocks.3.expand.0.weight"]
    assert bases.shape == (4, *src.shape)
    relative = (bases - src).std() / src.std()
    assert 0.007 < relative < 0.013 and not torch.equal(bases[0], bases[1])
    torch.testing.assert_close(model.state_dict()["blocks.3.expand.1.weight"], source.state_dict()["blocks.3.expand.1.weight"])


def test_a_source_that_does_not_fit_is_rejected_and_the_model_untouched(tmp_path):
    save_weights(_static(width=0.75), tmp_path / "wide.safetensors")
    model = create_model("basisnet", **TINY["basisnet"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointMismatchError, match="shape mismatch"):
        warm_start(model, {"specialist": tmp_path / "wide.safetensors"})
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="has no part 'specailist'"):
        warm_start(model, {"specailist": tmp_path / "wide.safetensors"})


def test_a_source_with_other_classes_leaves_the_classifier_to_the_model(tmp_path):
    source = create_model("mobilenetv3_small", **{**MOBILE, "num_classes": 3})
    save_weights(source, tmp_path / "three.safetensors")
    model = create_model("basisnet", **TINY["basisnet"])
    own = model.lightweight.head[-1].fc.weight.clone()
    started = warm_start(model, {"lightweight": tmp_path / "three.safetensors"})
    assert started["lightweight"]["notes"] == ["new classifier: the source has 3 classes, the model 5"]
    assert torch.equal(model.lightweight.head[-1].fc.weight, own)
    assert torch.equal(model.lightweight.head[0].fc.weight, source.head[0].fc.weight)


def test_condconv_peer_is_registered_with_its_defaults():
    model = create_model("condconv_mobilenetv3_small", **MOBILE)
    assert model.config["routing"] and model.config["num_bases"] == 8
    assert model(torch.randn(2, 3, 32, 32))[0].shape == (2, 5)


def test_a_source_with_extra_tensors_is_rejected():
    tensors = dict(_static().state_dict())
    tensors["head.extra"] = torch.zeros(1)
    with pytest.raises(UpcycleError, match="not in the model: head.extra"):
        spread_into_bases(create_model("mobilenetv3_small", **MOBILE), tensors)


def test_init_from_override_keeps_awkward_paths_whole():
    import json

    from basisnet.train import load_config

    paths = {"specialist": "runs/a, b: c/run #1", "lightweight": "C:/x y"}
    cfg = load_config(None, ["train.init_from=" + json.dumps(paths)])
    assert cfg.train.init_from == paths
