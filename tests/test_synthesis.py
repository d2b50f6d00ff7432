"""The fused kernel synthesis (one matmul over the packed bases) gives the per-layer mixing's kernels, is
what a network runs for a shared coefficient set at inference unless its policy says not to fuse, and
follows its bases when they change."""

import pytest
import torch

from basisnet.deploy.fold import fold_basis_batchnorm
from basisnet.layers import (
    BASIS_LAYERS,
    ConvNormAct,
    ExecutionPolicy,
    MixingCoefficients,
    SynthesizedKernels,
    execution_policy,
)
from basisnet.layers.synthesis import PackedBases
from basisnet.models import BasisNet, MobileNet

from helpers import spread_logits, tiny_model as _model


def _specialist(**kwargs) -> MobileNet:
    torch.manual_seed(0)
    return MobileNet("mobilenetv3_small", 0.35, num_classes=5, resolution=32, drop_strides=2, num_bases=3,
                     basis_parts=("stem", "expand", "depthwise", "project", "last", "classifier"), **kwargs).eval()


def _coeffs(net: MobileNet, batch: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.softmax(torch.randn(batch, net.num_basis_layers, net.config["num_bases"], generator=g), -1)


@pytest.mark.parametrize("chunk", [None, 16, 100])
def test_packed_mix_equals_each_layers_own_mix(chunk):
    net = _specialist()
    layers = [m for m in net.modules() if isinstance(m, BASIS_LAYERS)]
    packed = PackedBases(layers, chunk=chunk)
    coeffs = _coeffs(net)[0]
    kernels = packed.unpack(packed.mix(coeffs))
    assert isinstance(kernels, SynthesizedKernels) and kernels.num_layers == len(layers)
    assert any(layer.bias is not None for layer in layers)  # biases go through the same matmul
    for i, layer in enumerate(layers):
        weight, bias = layer._mix_one(coeffs[i])
        got = kernels.rows(i, 1).kernel()
        torch.testing.assert_close(got.weight, weight, rtol=1e-5, atol=1e-6)
        assert (got.bias is None) == (bias is None)
        if bias is not None:
            torch.testing.assert_close(got.bias, bias, rtol=1e-5, atol=1e-6)


def test_network_runs_the_fused_synthesis_for_a_shared_set_without_gradients():
    net = _specialist()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    coeffs = _coeffs(net)
    expected = net(x, coeffs[0])[0]  # gradients on: per-layer synthesis
    assert net._packed is None
    with torch.no_grad():
        with execution_policy(ExecutionPolicy(fuse=False)):
            assert isinstance(net.layer_weights(x, coeffs), MixingCoefficients)
            unfused = net(x, coeffs)[0]
        assert net._packed is None  # the caller said not to fuse
        assert isinstance(net.layer_weights(x, coeffs), SynthesizedKernels)
        assert isinstance(net.layer_weights(x, _coeffs(net, 3)), MixingCoefficients)  # a set per image
        got = net(x, coeffs)[0]  # (1, L, N): one set for the batch
    assert net._packed is not None
    assert isinstance(net.layer_weights(x, coeffs), MixingCoefficients)  # gradients flow: never fused
    torch.testing.assert_close(got, expected.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(unfused, expected.detach(), rtol=1e-5, atol=1e-6)


def test_fused_synthesis_follows_changed_bases():
    """An optimizer step or a load changes the bases in place: the packed copy must be rebuilt."""
    net = _specialist()
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    coeffs = _coeffs(net)
    with torch.no_grad():
        before = net(x, coeffs)[0]
        for layer in net.modules():
            if isinstance(layer, BASIS_LAYERS):
                layer.weight.mul_(1.5)
        after = net(x, coeffs)[0]
    expected = net(x, coeffs)[0].detach()  # per-layer path on the changed bases
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, expected, rtol=1e-5, atol=1e-6)


def test_fused_synthesis_is_counted_as_synthesis():
    from basisnet.evaluate import count_madds

    net = _specialist()
    report = count_madds(net, coeffs=_coeffs(net))
    bases = sum(p.numel() for m in net.modules() if isinstance(m, BASIS_LAYERS) for p in (m.weight, m.bias)
                if p is not None)
    assert report.per_module["mixer"] == report.synthesis  # the network's one mixer, no per-layer mixing
    assert bases <= report.synthesis <= 1.25 * bases  # every basis value once, plus the chunks' padding


def test_folded_batchnorm_gives_the_same_logits():
    model = spread_logits(_model("basisnet"))
    folded = fold_basis_batchnorm(model)
    x = torch.randn(4, 3, model.resolution, model.resolution, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        for ours, theirs in zip(folded(x), model(x)):
            torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    folded_layers = [m for m in folded.specialist.modules() if isinstance(m, ConvNormAct) and isinstance(m[0], BASIS_LAYERS)]
    assert folded_layers and all(isinstance(m[1], torch.nn.Identity) for m in folded_layers)

def test_fold_refuses_models_whose_coefficients_need_not_sum_to_one():
    with pytest.raises(TypeError, match="BasisNet"):
        fold_basis_batchnorm(_model("condconv_mobilenetv3_small"))
    assert isinstance(fold_basis_batchnorm(_model("basisnet")), BasisNet)
