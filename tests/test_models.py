"""MobileNet tables, the builder, BasisNet, and the registry."""

import pytest
import torch

from basisnet.layers import BasisConv2d, BasisLinear, MixingCoefficients
from basisnet.models import BasisNet, MobileNet, create_model, list_models
from basisnet.models.calibration import measure_batchnorm

import helpers

TINY = helpers.MOBILE


def test_registry_lists_models_and_rejects_unknowns():
    assert {"mobilenetv2", "mobilenetv3_large", "mobilenetv3_small", "basisnet"} <= set(list_models())
    with pytest.raises(ValueError, match="did you mean 'mobilenetv3_small'"):
        create_model("mobilenetv3_smal")
    with pytest.raises(ValueError, match="did you mean 'num_bases'"):
        create_model("mobilenetv3_small", num_base=3)


@pytest.mark.parametrize("name", ["mobilenetv2", "mobilenetv3_large", "mobilenetv3_small"])
def test_static_forward_is_one_exit(name):
    model = create_model(name, **TINY).eval()
    out = model(torch.randn(2, 3, 32, 32))
    assert isinstance(out, list) and len(out) == 1 and out[0].shape == (2, 5)
    assert model.num_exits == 1


def test_drop_strides_keeps_resolution_for_small_images():
    model = create_model("mobilenetv3_small", **TINY)
    x = torch.randn(1, 3, 32, 32)
    for m in [model.stem, *model.blocks, model.last_conv]:
        x = m(x)
    assert x.shape[-1] == 4  # 32 / 8: stem and first stride-2 block run at stride 1
    with pytest.raises(ValueError, match="exceeds"):
        create_model("mobilenetv3_small", drop_strides=9)


def test_basis_parts_choose_which_layers_are_basis_layers():
    m = create_model("mobilenetv3_small", num_bases=3, basis_parts=["depthwise"], **TINY)
    assert m.num_basis_layers == len(m.blocks)
    everything = create_model("mobilenetv3_small", num_bases=3,
                              basis_parts=["stem", "expand", "depthwise", "project", "last", "classifier"], **TINY)
    assert isinstance(everything.stem[0], BasisConv2d) and isinstance(everything.head[-1].fc, BasisLinear)
    with pytest.raises(ValueError, match="unknown basis_parts"):
        create_model("mobilenetv3_small", num_bases=3, basis_parts=["se"])


def test_all_coefficients_on_one_basis_equal_static_model_with_those_weights():
    torch.manual_seed(0)
    parts = ["stem", "expand", "depthwise", "project", "last", "classifier"]
    basis = create_model("mobilenetv3_small", num_bases=3, basis_parts=parts, **TINY).eval()
    static = create_model("mobilenetv3_small", **TINY).eval()
    k = 2
    # Build the static net's weights by hand: basis k of every basis layer, everything else shared.
    state = {}
    for key, value in basis.state_dict().items():
        module = basis.get_submodule(key.rsplit(".", 1)[0])
        state[key] = value[k] if isinstance(module, (BasisConv2d, BasisLinear)) else value
    static.load_state_dict(state)
    x = torch.randn(3, 3, 32, 32)
    one_hot = torch.zeros(3, basis.num_basis_layers, 3)
    one_hot[..., k] = 1.0
    torch.testing.assert_close(basis(x, one_hot)[0], static(x)[0], rtol=1e-5, atol=1e-5)


def test_model_synthesize_equals_shared_coefficient_forward():
    torch.manual_seed(1)
    basis = create_model("mobilenetv3_small", num_bases=4, **TINY).eval()
    coeffs = torch.softmax(torch.randn(basis.num_basis_layers, 4), -1)
    static = basis.synthesize(coeffs)
    assert isinstance(static, MobileNet) and static.num_basis_layers == 0
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(static(x)[0], basis(x, coeffs)[0], rtol=1e-5, atol=1e-5)
    per_sample = coeffs.expand(2, -1, -1)
    torch.testing.assert_close(static(x)[0], basis(x, per_sample)[0], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="synthesize needs"):
        basis.synthesize(coeffs[:3])


def test_model_rejects_bad_coefficients():
    basis = create_model("mobilenetv3_small", num_bases=4, **TINY)
    with pytest.raises(ValueError, match=r"expected \(2, \d+, 4\)"):
        basis(torch.randn(2, 3, 32, 32), torch.rand(2, 3, 4))
    with pytest.raises(ValueError, match="coeffs=None"):
        create_model("mobilenetv3_small", **TINY)(torch.randn(1, 3, 32, 32), torch.rand(1, 1, 1))


def test_condconv_routing_blocks_route_themselves():
    """Each routed block mixes its kernel from its own input, per image: two images get different routing
    weights, an image's output does not depend on the batch it is in, and it differs from the output with
    the other image's (a shared) kernel. The router is trained by the loss."""
    torch.manual_seed(0)
    model = create_model("mobilenetv3_small", num_bases=3, routing=True, **TINY).eval()
    assert model.num_basis_layers == 0
    routed = [b for b in model.blocks if b.router is not None]
    assert routed == list(model.blocks)
    for block in routed:  # wide routing weights, so the images' kernels differ clearly
        torch.nn.init.normal_(block.router.fc.weight, std=1.0)
    measure_batchnorm(model, torch.randn(16, 3, 32, 32))  # activations of a real scale (at init they fade)
    inputs, weights = {}, {}
    for i, block in enumerate(routed):
        block.register_forward_pre_hook(lambda mod, args, i=i: inputs.update({i: args[0]}))  # the latest call's
        block.router.register_forward_hook(lambda mod, args, out, i=i: weights.update({i: out}))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        alone = torch.cat([model(x[k:k + 1])[0] for k in range(2)])
        out = model(x)[0]
        for i in weights:  # two images, two sets of routing weights in every block
            assert (weights[i][0] - weights[i][1]).abs().max() > 1e-2, i
        torch.testing.assert_close(out, alone, rtol=1e-4, atol=1e-5)
        block, h, r = routed[0], inputs[0], weights[0]
        rows = sum(m.num_basis_layers for m in (block.expand, block.depthwise, block.project) if m is not None)
        router, block.router = block.router, None
        own = block(h, MixingCoefficients(r[:, None].expand(-1, rows, -1)))
        shared = block(h, MixingCoefficients(r[:1, None].expand(2, rows, -1)))  # image 0's kernel for both images
        block.router = router
        torch.testing.assert_close(block(h), own)  # the router's weights are what the block mixes with
        assert (shared[1] - own[1]).abs().max() > 1e-3
    model.train()
    model(torch.randn(2, 3, 32, 32))[0].sum().backward()
    assert all(b.router.fc.weight.grad.abs().sum() > 0 for b in routed)


def tiny_basisnet(**kw) -> BasisNet:
    return create_model("basisnet", **{**helpers.TINY["basisnet"], **kw})


def test_basisnet_two_exits_and_coefficients():
    model = tiny_basisnet().eval()
    x = torch.randn(4, 3, 32, 32)
    out = model.forward_output(x)
    assert out.lightweight.shape == out.specialist.shape == (4, 5)
    assert out.coeffs.shape == (4, model.specialist.num_basis_layers, 3)
    torch.testing.assert_close(out.coeffs.sum(-1), torch.ones(4, model.specialist.num_basis_layers))
    assert len(model(x)) == 2 and len(model(x, max_exits=1)) == 1
    # zero-initialised head: every basis starts with the same weight
    torch.testing.assert_close(out.coeffs, torch.full_like(out.coeffs, 1 / 3))


@pytest.mark.parametrize("sharing", ["layer", "block", "network"])
def test_basisnet_coefficient_sharing(sharing):
    model = tiny_basisnet(coeff_sharing=sharing)
    torch.nn.init.normal_(model.coeff_head.weight)
    coeffs = model.forward_output(torch.randn(2, 3, 32, 32)).coeffs
    distinct = coeffs[0].unique(dim=0).shape[0]
    expected = {"layer": model.specialist.num_basis_layers,
                "block": len(model.specialist.basis_layers_per_block()), "network": 1}[sharing]
    assert distinct == expected


def test_basis_dropout_drops_and_renormalises_in_training_only():
    torch.manual_seed(0)
    model = tiny_basisnet(basis_dropout=0.5, num_bases=6)
    emb = torch.randn(8, model.lightweight.num_features)
    coeffs = model.train().coefficients(emb)
    assert (coeffs == 0).any()
    torch.testing.assert_close(coeffs.sum(-1), torch.ones(coeffs.shape[:2]))
    assert not (model.eval().coefficients(emb) == 0).any()


def test_basisnet_rejects_bad_options():
    with pytest.raises(ValueError, match="coeff_sharing"):
        tiny_basisnet(coeff_sharing="stage")
    with pytest.raises(ValueError, match="temperature"):
        tiny_basisnet(temperature=0)
    with pytest.raises(ValueError, match="basis_dropout"):
        tiny_basisnet(basis_dropout=1.0)
