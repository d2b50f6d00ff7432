"""MSDNet and RANet: the official CIFAR-100 configs' exits, multiply-adds and params; exits; bad configs.

Reference numbers come from building the official models (github.com/kalviny/MSDNet-PyTorch,
github.com/yangle15/RANet-pytorch) and counting them with their ``op_counter.py``:
- ``*_PUBLISHED``: their counter as is (conv + linear + one op per ReLU output, pooling window element
  and linear bias), i.e. the numbers their training scripts print;
- ``*_CONV_LINEAR``: their counter restricted to conv + linear multiply-adds, what ours counts. Our
  models reproduce these exactly, and also the official logits after copying the official weights.
"""

import pytest
import torch
import torch.nn.functional as F

from basisnet.evaluate import count_madds, count_params, exit_madds
from basisnet.models import MSDNet, RANet, create_model

# --nBlocks 10 --stepmode even --step 2 --base 4 --nChannels 16 --growthRate 6 --grFactor 1-2-4 --bnFactor 1-2-4
MSDNET_PUBLISHED = [15.14, 25.51, 37.79, 52.06, 62.18, 74.07, 87.73, 100.04, 110.12, 121.68]
MSDNET_CONV_LINEAR = [14.967, 25.259, 37.468, 51.668, 61.745, 73.591, 87.206, 99.484, 109.548, 121.087]
MSDNET_PARAMS = 4_955_644
# train_cifar.sh: --step 4 --stepmode even --scale-list 1-2-3-3 --grFactor 4-2-1-1 --bnFactor 4-2-1-1 (rest default)
RANET_PUBLISHED = [15.83, 31.31, 44.69, 50.40, 60.71, 63.72, 90.26, 95.00]
RANET_CONV_LINEAR = [15.750, 31.196, 44.497, 50.199, 60.373, 63.371, 89.603, 94.339]
RANET_PARAMS = 3_354_710
# ImageNet presets (official README / train_imagenet.sh): exit-1 conv + linear MAdds and params, same source.
IMAGENET = {"msdnet": (337.214, 23_958_440), "ranet": (167.271, 87_972_617)}

TINY = {
    "msdnet": dict(num_classes=5, num_blocks=3, base=2, step=1, stepmode="lin_grow", num_channels=8, growth_rate=4),
    "ranet": dict(num_classes=5, num_blocks=1, block_step=1, step=2, scale_list=(1, 2, 2), gr_factor=(2, 1, 1),
                  bn_factor=(2, 1, 1), num_channels=8, growth_rate=4),
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Batch-1/2 passes of these small-channel nets gain nothing from intra-op threads, and on a busy
    CPU the thread pool's waits make them ~10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference_models():
    torch.manual_seed(0)
    return {"msdnet": create_model("msdnet").eval(), "ranet": create_model("ranet", preset="cifar").eval()}


@pytest.mark.parametrize("name, published, conv_linear, params", [
    ("msdnet", MSDNET_PUBLISHED, MSDNET_CONV_LINEAR, MSDNET_PARAMS),
    ("ranet", RANET_PUBLISHED, RANET_CONV_LINEAR, RANET_PARAMS),
])
def test_official_cifar100_config_costs(reference_models, name, published, conv_linear, params):
    model = reference_models[name]
    assert model.num_exits == len(published) and model.num_classes == 100 and model.resolution == 32
    ours = [m / 1e6 for m in exit_madds(model)]
    assert ours == pytest.approx(conv_linear, rel=1e-4)
    # The published figures add the ReLU/pooling/bias ops we do not count: 0.5-1.2% above ours.
    for mine, theirs in zip(ours, published):
        assert 0.0 < (theirs - mine) / theirs < 0.012
    assert count_params(model) == params


@pytest.mark.parametrize("name", ["msdnet", "ranet"])
def test_max_exits_returns_the_first_exits_of_the_full_forward(reference_models, name):
    model = reference_models[name]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        full = model(x)
        assert len(full) == model.num_exits and all(t.shape == (2, 100) for t in full)
        for k in (1, 3, model.num_exits):
            part = model(x, max_exits=k)
            assert len(part) == k
            for a, b in zip(part, full):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    for bad in (0, model.num_exits + 1):
        with pytest.raises(ValueError, match="max_exits"):
            model(x, max_exits=bad)


@pytest.mark.parametrize("name", ["msdnet", "ranet"])
def test_imagenet_preset_builds_and_runs_its_first_exit(name):
    """Built once (RANet's preset holds 88M parameters), with 10 classes: the official 1000-class counts are
    these plus what 990 more outputs add to every exit's classifier (the option overrides the preset)."""
    torch.manual_seed(0)
    model = create_model(name, preset="imagenet", num_classes=10).eval()
    exit1_madds, params = IMAGENET[name]
    assert model.resolution == 224 and model.num_classes == 10
    fcs = [head.fc for head in model.heads]
    assert len(fcs) == model.num_exits and all(fc.out_features == 10 for fc in fcs)
    assert count_params(model) + sum((fc.in_features + 1) * 990 for fc in fcs) == params
    madds = count_madds(model, max_exits=1).madds + fcs[0].in_features * 990  # one 224x224 pass to exit 1
    assert madds / 1e6 == pytest.approx(exit1_madds, rel=1e-4)


@pytest.mark.parametrize("name", ["msdnet", "ranet"])
def test_tiny_config_trains(name):
    torch.manual_seed(0)
    model = create_model(name, **TINY[name]).train()
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([1, 3])
    logits = model(x)
    assert len(logits) == model.num_exits == 3
    loss = sum(F.cross_entropy(out, y) for out in logits)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    opt.step()
    with torch.no_grad():
        assert sum(F.cross_entropy(out, y) for out in model(x)) < loss


@pytest.mark.parametrize("name", ["msdnet", "ranet"])
def test_channels_last_survives_every_layer(name):
    """A 1-channel fusion part must not turn a concatenation NCHW: each later conv would copy its input."""
    model = create_model(name, **TINY[name]).to(memory_format=torch.channels_last)
    inputs = []
    for conv in (m for m in model.modules() if isinstance(m, torch.nn.Conv2d)):
        conv.register_forward_hook(lambda mod, args, out: inputs.append(args[0]))
    model(torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last))
    strict = [x for x in inputs if x.shape[1] > 1 and x.shape[-1] * x.shape[-2] > 1]
    assert strict and all(x.stride(1) == 1 for x in strict)


def test_concat_channels_restrides_ambiguous_parts():
    from basisnet.layers.densenet import concat_channels

    like = torch.randn(2, 4, 8, 8).contiguous(memory_format=torch.channels_last)
    one = torch.randn(2, 1, 8, 8)  # "contiguous" in both formats: torch.cat would pick NCHW
    assert torch.cat([like, one], 1).stride(1) != 1
    out = concat_channels([like, one])
    assert out.stride(1) == 1 and torch.equal(out, torch.cat([like, one], 1))
    assert concat_channels([one, like]).stride(1) == 1  # whichever part comes first
    assert concat_channels([like.contiguous(), one]).is_contiguous()  # NCHW stays NCHW


@pytest.mark.parametrize("name, options, reason", [
    ("ranet", dict(scale_list=(1, 2, 3, 4)), "leaves 1x1"),  # a 4x4 map before the heads: official code crashes
    ("ranet", dict(resolution=16), "leaves 1x1"),
    ("msdnet", dict(gr_factor=(1, 2, 4, 4), bn_factor=(1, 2, 4, 4)), "leaves 1x1"),
    ("ranet", dict(gr_factor=(4, 2, 1)), "gr_factor has 3 entries but the network has 4 scales"),
    ("ranet", dict(bn_factor=(4, 2, 1, 1, 1)), "bn_factor has 5 entries"),
    ("msdnet", dict(bn_factor=(1, 2)), "bn_factor has 2 entries but the network has 3 scales"),
    ("msdnet", dict(stepmode="lg"), "unknown stepmode"),
    ("ranet", dict(stepmode="linear"), "unknown stepmode"),
    ("msdnet", dict(prune="mid"), "unknown prune"),
    ("ranet", dict(scale_list=(1, 3, 3, 3)), "rise by 0 or 1"),
    ("ranet", dict(compress_factor=0.1), "compress_factor"),
    ("msdnet", dict(growth_rate=3, gr_factor=(1, 1, 2)), "must be even"),
    ("msdnet", dict(step=0), "every block needs a layer"),
    ("msdnet", dict(reduction=0.01), "compresses"),
    ("msdnet", dict(variant="svhn"), "unknown variant"),
])
def test_impossible_configs_say_why(name, options, reason):
    with pytest.raises(ValueError, match=reason):
        create_model(name, **options)


def test_registry_rejects_unknown_options_and_presets():
    with pytest.raises(ValueError, match="did you mean 'num_blocks'"):
        create_model("msdnet", nBlocks=5)
    with pytest.raises(ValueError, match="has no option 'depth'"):
        create_model("ranet", depth=3)
    with pytest.raises(ValueError, match="no preset 'imagenet1k'"):
        create_model("ranet", preset="imagenet1k")
    assert isinstance(create_model("msdnet", **TINY["msdnet"]), MSDNet)
    assert isinstance(create_model("ranet", **TINY["ranet"]), RANet)
