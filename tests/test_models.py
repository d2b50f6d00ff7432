"""MobileNet tables, the builder, BasisNet, and the registry."""

import pytest
import torch

from basisnet.layers import BasisConv2d, BasisLinear
from basisnet.models import BasisNet, MobileNet, create_model, list_models

TINY = dict(num_classes=5, resolution=32, drop_strides=2, width=0.35)


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
    model = create_model("mobilenetv3_small", num_bases=3, routing=True, **TINY)
    assert model.num_basis_layers == 0
    assert all(b.router is not None for b in model.blocks)
    out = model(torch.randn(2, 3, 32, 32))[0]
    out.sum().backward()
    assert model.blocks[0].router.fc.weight.grad is not None


def tiny_basisnet(**kw) -> BasisNet:
    opts = dict(num_classes=5, resolution=32, drop_strides=2, specialist="mobilenetv3_small",
                specialist_width=0.35, lightweight_width=0.35, num_bases=3)
    opts.update(kw)
    return create_model("basisnet", **opts)


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
