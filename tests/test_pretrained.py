"""torchvision and timm MobileNets imported into basisnet: the same logits, upcycled starts, clear refusals.

Compared against the real torchvision / timm modules (tests/reference_models.py); the core package never
imports either. Random weights with BatchNorm statistics measured on one batch, so the logits have a
real scale (at init torchvision's MobileNetV3 gives logits of ~1e-9, where any comparison passes) and
a wrong BatchNorm epsilon moves them by more than 10x the tolerance.
"""
import json

import pytest
import torch
from safetensors.torch import save_file

from basisnet.cli import main
from basisnet.configs import bundled_config
from basisnet.models import BasisNet, MobileNet
from basisnet.models.calibration import measure_batchnorm
from basisnet.models.pretrained import (PRETRAINED, PretrainedError, _module_map, convert_state_dict, load_into,
                                       load_pretrained, parse_source, read_checkpoint)
from basisnet.train import CheckpointMismatchError, RunDir, load_config, load_run_model, warm_start
from basisnet.workflow import train_run
from reference_models import reference_modules

TOLERANCE = 1e-4  # max abs logit difference after import (the bound)
# Every network here ends in adaptive pooling, so a name map or epsilon that is wrong shows at any input size:
# 64 px, not the 224 px of ImageNet (12x fewer multiply-adds).
SIZE = 64


def reference(name: str, **kwargs) -> torch.nn.Module:
    """The named torchvision / timm network, random weights, BatchNorm calibrated on one batch, eval mode."""
    tv2, tv3, timm = reference_modules()
    builders = {"torchvision:mobilenet_v2": tv2.mobilenet_v2, "torchvision:mobilenet_v3_large": tv3.mobilenet_v3_large,
                "torchvision:mobilenet_v3_small": tv3.mobilenet_v3_small}
    source, model_name = name.split(":")
    model = builders[name](**kwargs) if source == "torchvision" else timm.create_model(model_name, **kwargs)
    return measure_batchnorm(model, torch.randn(8, 3, SIZE, SIZE))


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@pytest.mark.parametrize("name", sorted(PRETRAINED))
def test_imported_network_gives_the_source_logits(name):
    source = reference(name)
    ours = load_pretrained(name, source)
    x = torch.randn(4, 3, SIZE, SIZE)
    with torch.no_grad():
        expected, got = source(x), ours(x)[0]
    assert expected.std() > 1e-3, "calibration failed: logits without scale compare trivially"
    assert max_diff(got, expected) <= TOLERANCE
    # The epsilon is part of the match: the same tensors with another epsilon miss by far more.
    wrong = MobileNet(**{**PRETRAINED[name].model_kwargs(), "norm_eps": PRETRAINED[name].norm_eps * 10}).eval()
    wrong.load_state_dict(convert_state_dict(name, source))
    with torch.no_grad():
        assert max_diff(wrong(x)[0], expected) > 10 * TOLERANCE


def test_checkpoint_files_convert_from_the_command_line(tmp_path):
    source = reference("timm:mobilenetv3_small_100")
    save_file(source.state_dict(), tmp_path / "model.safetensors")  # the hub's file format
    tv = reference("torchvision:mobilenet_v3_small")
    torch.save({"state_dict": {f"module.{k}": v for k, v in tv.state_dict().items()}}, tmp_path / "tv.pth")
    x = torch.randn(2, 3, SIZE, SIZE)
    for spec, module in ((f"timm:mobilenetv3_small_100={tmp_path / 'model.safetensors'}", source),
                         (f"torchvision:mobilenet_v3_small={tmp_path / 'tv.pth'}", tv)):
        out = tmp_path / "converted.safetensors"
        assert main(["convert", spec, "--output", str(out)]) == 0
        rebuilt = load_run_model(out, lambda name, **kw: MobileNet(name, **kw))
        with torch.no_grad():
            assert max_diff(rebuilt(x)[0], module(x)) <= TOLERANCE
    seven = tmp_path / "seven.safetensors"
    assert main(["convert", f"torchvision:mobilenet_v3_small={tmp_path / 'tv.pth'}", "--output", str(seven),
                 "--num-classes", "7"]) == 0
    assert load_run_model(seven, lambda name, **kw: MobileNet(name, **kw)).num_classes == 7
    assert main(["convert", "--output", str(seven)]) == 2  # no source: a clear error, exit 2


def test_a_converted_file_predicts_on_the_command_line_with_imagenet_preprocessing(tmp_path, capsys):
    """``basisnet predict converted.safetensors image``: the torchvision network's own answer, its inputs
    prepared as torchvision evaluates ImageNet (the statistics and side recorded in the file), the class
    named by its index (the file has no class names)."""
    from PIL import Image

    from basisnet.data import EvalTransform, load_image_files
    from basisnet.served import open_served

    tv = reference("torchvision:mobilenet_v3_small")
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    out = tmp_path / "converted.safetensors"
    assert main(["convert", f"torchvision:mobilenet_v3_small={tmp_path / 'tv.pth'}", "--output", str(out)]) == 0
    served = open_served(out)
    assert (served.preprocess.image_size, served.preprocess.mean) == (224, (0.485, 0.456, 0.406))
    assert served.classes == [str(k) for k in range(1000)]
    image = tmp_path / "photo.png"
    Image.fromarray(torch.randint(0, 255, (240, 260, 3), generator=torch.Generator().manual_seed(0),
                                  dtype=torch.uint8).numpy()).save(image)
    capsys.readouterr()
    assert main(["predict", str(out), str(image), "--threshold", "0.5"]) == 0
    file, cls, confidence, answered, _ = capsys.readouterr().out.strip().split("\t")
    x = EvalTransform((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), size=224)(load_image_files([image], 224))
    with torch.no_grad():
        probs = tv(x).softmax(-1)[0]
    assert (file, answered) == (str(image), "exit 1") and cls == str(int(probs.argmax()))
    assert float(confidence) == pytest.approx(float(probs.max()), abs=2e-3)


def test_unsupported_checkpoints_name_what_does_not_match_and_leave_the_model_untouched():
    target = MobileNet("mobilenetv3_large", norm_eps=1e-3)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    # Another architecture under a supported name: its layers are not where the name map looks.
    with pytest.raises(PretrainedError, match=r"not torchvision:mobilenet_v3_large(.|\n)*not used: classifier\.1\.weight"):
        convert_state_dict("torchvision:mobilenet_v3_large", reference("torchvision:mobilenet_v2"))
    # A width that does not match: the mis-shaped tensors are listed.
    narrow = convert_state_dict("torchvision:mobilenet_v3_large",
                                reference("torchvision:mobilenet_v3_large", width_mult=0.75))
    with pytest.raises(PretrainedError, match=r"shape mismatch: blocks\.1\.expand\.0\.weight: source \(48, 16, 1, 1\)"):
        load_into(target, "torchvision:mobilenet_v3_large", narrow)
    # timm's other widths round channels differently: refused by name, and by shape when forced.
    with pytest.raises(PretrainedError, match="unsupported pretrained model 'timm:mobilenetv3_large_075'"):
        load_pretrained("timm:mobilenetv3_large_075", {})
    timm_075 = convert_state_dict("timm:mobilenetv3_large_100", reference("timm:mobilenetv3_large_075"))
    with pytest.raises(PretrainedError, match=r"shape mismatch: blocks\.\d+\.\w+\.0\.weight: source \("):
        load_into(MobileNet("mobilenetv3_large"), "timm:mobilenetv3_large_100", timm_075)
    with pytest.raises(PretrainedError, match="is mobilenetv3_small at width 1.0; the model is mobilenetv3_large"):
        load_into(target, "timm:mobilenetv3_small_100", {})
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())


def test_pretrained_specialist_is_upcycled_with_a_new_classifier(tmp_path):
    """A 1000-class torchvision checkpoint starts a 5-class BasisNet specialist: every basis a copy of
    the source kernel (noise 0: the specialist's features are the source's for any coefficients)."""
    source = reference("torchvision:mobilenet_v3_small")
    torch.save(source.state_dict(), tmp_path / "tv.pth")
    model = BasisNet(num_classes=5, resolution=64, specialist="mobilenetv3_small", lightweight_width=0.35,
                     num_bases=3, norm_eps=1e-3, lightweight_norm_eps=1e-5).eval()
    light_before = {k: v.clone() for k, v in model.lightweight.state_dict().items()}
    started = warm_start(model, {"specialist": f"torchvision:mobilenet_v3_small={tmp_path / 'tv.pth'}"}, noise=0.0)
    assert started["specialist"]["notes"] == ["new classifier: the source has 1000 classes, the model 5"]
    x = torch.randn(2, 3, 64, 64)
    coeffs = torch.softmax(torch.randn(2, model.specialist.num_basis_layers, 3), -1)
    with torch.no_grad():
        features = model.specialist.forward_features(x, coeffs)
        expected = source.avgpool(source.features(x)).flatten(1)
    assert max_diff(features, expected) <= TOLERANCE * max(1.0, expected.abs().max().item())
    bases = model.specialist.blocks[3].expand[0].weight
    assert bases.shape[0] == 3 and torch.equal(bases[0], bases[2])  # a block conv: three copies of the source's
    assert torch.equal(model.specialist.head[0].fc.weight, source.classifier[0].weight)  # the hidden head layer kept
    assert all(torch.equal(light_before[k], v) for k, v in model.lightweight.state_dict().items())
    with pytest.raises(CheckpointMismatchError, match="starts a MobileNet, and model is a BasisNet"):
        warm_start(model, {"model": f"torchvision:mobilenet_v3_small={tmp_path / 'tv.pth'}"})


def test_train_init_from_a_pretrained_checkpoint_records_it(tmp_path):
    source = reference("torchvision:mobilenet_v3_small")
    torch.save(source.state_dict(), tmp_path / "tv.pth")
    spec = f"torchvision:mobilenet_v3_small={tmp_path / 'tv.pth'}"
    cfg = load_config(bundled_config("shapes_demo"), [
        "train.epochs=1", "train.warmup_epochs=0", "data.subset=64", "data.val_size=32", "data.batch_size=32",
        "model.kwargs.specialist_width=1.0", "model.kwargs.num_bases=2", "model.kwargs.norm_eps=0.001",
        f"train.init_from={json.dumps({'specialist': spec})}"])
    train_run(cfg, tmp_path / "run", progress=False)
    init = json.loads(RunDir(tmp_path / "run").init.read_text())
    assert init == {"specialist": {"source": spec, "epochs": None,
                                   "notes": ["new classifier: the source has 1000 classes, the model 10"]}}


def test_bundled_upcycled_config_starts_both_stages_from_torchvision(tmp_path):
    """The README's recipe: imagenet_basisnet_upcycled + two torchvision checkpoints. Every basis starts as
    the pretrained kernel, so with noise 0 both stages compute what the torchvision networks compute."""
    large, small = reference("torchvision:mobilenet_v3_large"), reference("torchvision:mobilenet_v3_small")
    torch.save(large.state_dict(), tmp_path / "large.pth")
    torch.save(small.state_dict(), tmp_path / "small.pth")
    override = (f"train.init_from={{specialist: torchvision:mobilenet_v3_large={tmp_path / 'large.pth'}, "
                f"lightweight: torchvision:mobilenet_v3_small={tmp_path / 'small.pth'}}}")  # the README's spelling
    cfg = load_config(bundled_config("imagenet_basisnet_upcycled"), [override])
    assert cfg.train.init_from["lightweight"] == f"torchvision:mobilenet_v3_small={tmp_path / 'small.pth'}"
    model = BasisNet(**cfg.model.kwargs).eval()
    started = warm_start(model, cfg.train.init_from, noise=0.0)
    assert started == {"specialist": {"epochs": None, "notes": []}, "lightweight": {"epochs": None, "notes": []}}
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        light, specialist = model(x)
        small_x = torch.nn.functional.interpolate(x, size=128, mode="bilinear", antialias=True, align_corners=False)
        assert max_diff(light, small(small_x)) <= TOLERANCE
        assert max_diff(specialist, large(x)) <= TOLERANCE


@pytest.mark.parametrize("name", sorted(PRETRAINED))
def test_name_map_round_trip_without_the_reference_libraries(name):
    """basisnet's own tensors, renamed the source's way through the name map, convert back unchanged."""
    model = MobileNet(**PRETRAINED[name].model_kwargs())
    renamed = {}
    for key, tensor in model.state_dict().items():
        theirs = _rename(key, name)
        wide = ".conv_head." in f".{theirs}" and tensor.dim() == 2  # timm's head: a 1x1 conv
        renamed[theirs] = tensor[:, :, None, None] if wide else tensor
    assert len(renamed) == len(model.state_dict())
    back = convert_state_dict(name, renamed)
    assert back.keys() == model.state_dict().keys()
    assert all(torch.equal(back[k], v) for k, v in model.state_dict().items())


def test_source_names_files_and_notes(tmp_path, capsys):
    assert parse_source("runs/c10_w0.5") is None  # a run directory, not a pretrained name
    assert parse_source("timm:mobilenetv3_small_100=a=b.pth") == ("timm:mobilenetv3_small_100", "a=b.pth")
    with pytest.raises(PretrainedError, match="unsupported pretrained model 'torchvision:resnet50'"):
        parse_source("torchvision:resnet50=r.pth")
    with pytest.raises(PretrainedError, match="name the checkpoint file as torchvision:mobilenet_v2=PATH"):
        parse_source("torchvision:mobilenet_v2")
    with pytest.raises(PretrainedError, match="checkpoint not found"):
        read_checkpoint(tmp_path / "nope.pth")
    torch.save({"epoch": 3}, tmp_path / "bad.pth")
    with pytest.raises(PretrainedError, match="holds no state dict of tensors"):
        read_checkpoint(tmp_path / "bad.pth")
    # A training checkpoint with its argparse options and without BatchNorm step counters still loads.
    import argparse
    state = {k: v for k, v in MobileNet("mobilenetv3_small", norm_eps=1e-3).state_dict().items()
             if not k.endswith("num_batches_tracked")}
    renamed = {_rename(k, "torchvision:mobilenet_v3_small"): v for k, v in state.items()}
    torch.save({"model": renamed, "args": argparse.Namespace(lr=0.1)}, tmp_path / "ckpt.pth")
    model = load_pretrained("torchvision:mobilenet_v3_small", tmp_path / "ckpt.pth", num_classes=7)
    assert model.num_classes == 7
    other_eps = MobileNet("mobilenetv3_small")
    notes = load_into(other_eps, "torchvision:mobilenet_v3_small", convert_state_dict("torchvision:mobilenet_v3_small",
                                                                                      renamed))
    assert notes == ["BatchNorm eps 1e-05 vs 0.001 in torchvision:mobilenet_v3_small: set norm_eps=0.001 for the "
                     "source's exact outputs"]
    capsys.readouterr()
    assert main(["convert", "--list"]) == 0
    assert capsys.readouterr().out.splitlines() == sorted(PRETRAINED)  # every supported name, one a line


def _rename(key: str, name: str) -> str:
    for mine, theirs in _module_map(name).items():
        if key.startswith(mine + "."):
            return theirs + key[len(mine):]
    raise KeyError(key)
