"""Basis layers: every execution path agrees, in both memory layouts; gradients are right; synthesis
is exact; kernels synthesized beforehand give what the coefficients they came from give; a policy picks
the path and every policy gives the same output; path tuning returns a measured choice; the forward
compiles without graph breaks."""

import pytest
import torch
from torch import nn

from basisnet.layers import (
    BasisConv2d,
    BasisLinear,
    ExecutionPolicy,
    ForcedPath,
    Kernel,
    MixingCoefficients,
    NonFiniteCoefficientsError,
    SynthesizedKernels,
    execution_policy,
    tune_paths,
)

mix = MixingCoefficients.of_layer  # one layer's coefficients: (B, N) per image or (N,) shared

CONV_CASES = [
    # in, out, kernel, stride, padding, dilation, groups, bias
    (8, 16, 1, 1, 0, 1, 1, False),  # dense pointwise (batched matmul path)
    (6, 10, 3, 2, 1, 1, 1, True),  # dense 3x3, stride 2
    (12, 12, 5, 1, 2, 1, 12, False),  # depthwise 5x5
    (6, 6, 3, 2, 1, 1, 6, True),  # depthwise 3x3, stride 2 (its own backward)
    (4, 4, 3, (2, 1), 2, 2, 4, False),  # depthwise, dilated, uneven stride
    (8, 12, 3, 1, 2, 2, 4, True),  # grouped, dilated
    (4, 6, (3, 1), (2, 1), (1, 0), 1, 2, False),  # rectangular kernel, grouped
]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


def make_conv(case, bases: int) -> BasisConv2d:
    cin, cout, k, s, p, d, g, bias = case
    return BasisConv2d(cin, cout, k, bases, stride=s, padding=p, dilation=d, groups=g, bias=bias)


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("batch", [1, 3])
def test_conv_paths_agree(case, batch):
    torch.manual_seed(0)
    layer = make_conv(case, bases=4)
    x = torch.randn(batch, case[0], 9, 11)
    coeffs = torch.softmax(torch.randn(batch, 4), -1)
    ref = layer(x, mix(coeffs), path="loop")
    assert rel_err(layer(x, mix(coeffs), path="batched"), ref) < 1e-5
    assert rel_err(layer(x, mix(coeffs)), ref) < 1e-5  # the automatic choice
    x_cl = x.contiguous(memory_format=torch.channels_last)
    for path in {*layer.per_sample_paths(), layer.dynamic_batch_path()}:
        assert rel_err(layer(x, mix(coeffs), path=path), ref) < 1e-5
        out = layer(x_cl, mix(coeffs), path=path)
        assert rel_err(out, ref) < 1e-5
        if batch > 1 and path in ("matmul", "grouped", "grouped_aten"):  # channels_last stays channels_last
            assert out.is_contiguous(memory_format=torch.channels_last)
    shared = coeffs[0]
    ref_shared = layer(x, mix(shared), path="loop")
    assert rel_err(layer(x, mix(shared), path="synthesized"), ref_shared) < 1e-5
    assert rel_err(layer(x, mix(shared), path="batched"), ref_shared) < 1e-5


@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_paths_agree(batch, bias):
    torch.manual_seed(1)
    layer = BasisLinear(7, 5, 3, bias=bias)
    x = torch.randn(batch, 7)
    coeffs = torch.rand(batch, 3)
    ref = layer(x, mix(coeffs), path="loop")
    assert rel_err(layer(x, mix(coeffs), path="batched"), ref) < 1e-5
    assert rel_err(layer(x, mix(coeffs[0]), path="synthesized"), layer(x, mix(coeffs[0]), path="loop")) < 1e-5


def _grads(layer, x, coeffs, path):
    layer.zero_grad()
    x = x.clone().requires_grad_(True)
    coeffs = coeffs.clone().requires_grad_(True)
    out = layer(x, mix(coeffs), path=path)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out).to(out.dtype)).sum().backward()
    grads = [x.grad, coeffs.grad, layer.weight.grad] + ([layer.bias.grad] if layer.bias is not None else [])
    return [g.double() for g in grads]


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_gradients_match_float64_reference(case):
    torch.manual_seed(2)
    layer = make_conv(case, bases=3)
    x = torch.randn(4, case[0], 8, 8)
    coeffs = torch.softmax(torch.randn(4, 3), -1)
    fast = _grads(layer, x, coeffs, "batched")
    fast_cl = _grads(layer, x.contiguous(memory_format=torch.channels_last), coeffs, "batched")
    ref = _grads(layer.double(), x.double(), coeffs.double(), "loop")
    for g, g_cl, r in zip(fast, fast_cl, ref):
        assert rel_err(g, r) < 1e-5 and rel_err(g_cl, r) < 1e-5


def test_linear_gradients_match_float64_reference():
    torch.manual_seed(3)
    layer = BasisLinear(6, 4, 5)
    x, coeffs = torch.randn(3, 6), torch.rand(3, 5)
    fast = _grads(layer, x, coeffs, "batched")
    ref = _grads(layer.double(), x.double(), coeffs.double(), "loop")
    for g, r in zip(fast, ref):
        assert rel_err(g, r) < 1e-5


@pytest.mark.parametrize("case", CONV_CASES)
def test_synthesize_gives_plain_conv_with_identical_output(case):
    torch.manual_seed(4)
    layer = make_conv(case, bases=4)
    coeffs = torch.softmax(torch.randn(4), -1)
    conv = layer.synthesize(coeffs)
    assert type(conv) is nn.Conv2d
    x = torch.randn(2, case[0], 7, 9)
    torch.testing.assert_close(conv(x), layer(x, mix(coeffs)), rtol=1e-5, atol=1e-6)
    assert conv.stride == layer.stride and conv.groups == layer.groups and conv.dilation == layer.dilation


def test_synthesize_linear():
    layer = BasisLinear(5, 3, 2)
    coeffs = torch.tensor([0.3, 0.7])
    linear = layer.synthesize(coeffs)
    assert type(linear) is nn.Linear
    x = torch.randn(4, 5)
    torch.testing.assert_close(linear(x), layer(x, mix(coeffs)))


@pytest.mark.parametrize("case", CONV_CASES)
def test_each_image_gets_the_kernel_its_own_coefficients_mix(case):
    """Against plain conv2d, image by image (the paths are compared with each other above; this pins them
    all to the definition): out[i] = conv(x[i], sum_k c[i, k] W_k, sum_k c[i, k] b_k)."""
    torch.manual_seed(6)
    layer = make_conv(case, bases=3)
    x = torch.randn(3, case[0], 9, 11)
    coeffs = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.2, 0.5, 0.3]])  # one-hot, other one-hot, a mix
    expected = []
    for xi, ci in zip(x, coeffs):
        weight = torch.einsum("k,k...->...", ci, layer.weight)
        bias = ci @ layer.bias if layer.bias is not None else None
        expected.append(nn.functional.conv2d(xi[None], weight, bias, layer.stride, layer.padding, layer.dilation,
                                             layer.groups))
    expected = torch.cat(expected)
    for path in {"loop", "batched", *layer.per_sample_paths(), layer.dynamic_batch_path()}:
        torch.testing.assert_close(layer(x, mix(coeffs), path=path), expected, rtol=1e-5, atol=1e-5, msg=path)
    torch.testing.assert_close(layer(x, mix(coeffs)), expected, rtol=1e-5, atol=1e-5)


def test_bases_initialised_independently_like_a_conv():
    torch.manual_seed(5)
    layer = BasisConv2d(32, 64, 3, 4)
    conv = nn.Conv2d(32, 64, 3)
    for w in layer.weight:
        assert abs(w.std().item() / conv.weight.std().item() - 1) < 0.1
    assert not torch.allclose(layer.weight[0], layer.weight[1])


@pytest.mark.parametrize(
    "coeffs, match",
    [
        (torch.rand(3, 5), r"expected \(3, 4\)"),  # N mismatch
        (torch.rand(2, 4), r"expected \(3, 4\)"),  # batch mismatch
        (torch.rand(3, 4, 1), r"expected \(3, 4\)"),  # wrong rank
    ],
)
def test_bad_coefficients_raise_naming_the_layer(coeffs, match):
    layer = BasisConv2d(2, 2, 1, 4)
    layer.layer_name = "blocks.3.expand.0"
    with pytest.raises(ValueError, match=match) as err:
        layer(torch.randn(3, 2, 4, 4), mix(coeffs))
    assert "blocks.3.expand.0" in str(err.value)


def test_nan_coefficients_are_refused_where_they_enter_the_network():
    from basisnet.models import create_model

    model = create_model("mobilenetv3_small", num_classes=3, resolution=16, width=0.35, num_bases=2)
    coeffs = torch.rand(2, model.num_basis_layers, 2)
    coeffs[1, 3, 0] = float("nan")
    with pytest.raises(NonFiniteCoefficientsError, match="NaN"):
        model(torch.randn(2, 3, 16, 16), coeffs)


def test_tune_paths_times_every_path_and_returns_the_fastest_as_a_policy():
    from basisnet.models import create_model

    model = create_model("mobilenetv3_small", num_classes=3, resolution=16, width=0.35, num_bases=2).eval()
    x, coeffs = torch.randn(4, 3, 16, 16), torch.softmax(torch.randn(4, model.num_basis_layers, 2), -1)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        expected = model(x, coeffs)[0]
        tuned = tune_paths(model, x, coeffs, repeats=1)
        layers = [m for m in model.modules() if isinstance(m, BasisConv2d)]
        assert {name for name, _ in tuned.timings} == {m.layer_name for m in layers}
        for layer in layers:
            timings = tuned.timings[(layer.layer_name, (4, False, False))]
            # inference: a backward variant shares its forward, so it is not timed twice
            assert set(timings) == set(layer.per_sample_paths()) - {"grouped_aten"}
            assert all(t > 0 for t in timings.values())
            assert tuned.fastest(layer.layer_name, (4, False, False)) == min(timings, key=timings.get)
        with execution_policy(tuned):
            torch.testing.assert_close(model(x, coeffs)[0], expected, rtol=1e-4, atol=1e-5)
    tuned = tune_paths(model, x, coeffs, repeats=1)  # training: forward + backward, no loop path
    depthwise = [m for m in layers if m.is_depthwise]
    assert depthwise and all(set(tuned.timings[(m.layer_name, (4, False, True))]) == {"grouped", "grouped_aten"}
                             for m in depthwise)
    assert all(tuned.fastest(m.layer_name, (4, False, True)) in ("grouped", "grouped_aten") for m in depthwise)
    assert tuned.fastest(depthwise[0].layer_name, (8, False, True)) is None  # another batch: not measured
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # the model keeps nothing


@pytest.mark.parametrize("case", CONV_CASES)
def test_a_layer_given_synthesized_kernels_computes_what_their_coefficients_give(case):
    """The fused synthesis hands a layer its kernel; the layer runs it as the coefficients' mix."""
    from basisnet.layers.synthesis import PackedBases

    torch.manual_seed(7)
    layer = make_conv(case, bases=3)
    coeffs = torch.softmax(torch.randn(3), -1)
    packed = PackedBases([layer])
    kernels = packed.unpack(packed.mix(coeffs[None]))
    assert isinstance(kernels, SynthesizedKernels) and kernels.num_layers == 1
    x = torch.randn(2, case[0], 9, 11)
    torch.testing.assert_close(layer(x, kernels), layer(x, mix(coeffs)), rtol=1e-5, atol=1e-6)
    weight, bias = layer._mix_one(coeffs)
    zero = SynthesizedKernels((Kernel(torch.zeros_like(weight), None if bias is None else torch.zeros_like(bias)),))
    assert layer(x, zero).abs().max() == 0  # the kernel given is the one that runs, not the layer's bases


def test_a_layer_takes_exactly_one_row_of_typed_weights():
    layer = BasisConv2d(2, 2, 1, 4)
    layer.layer_name = "stem.0"
    x = torch.randn(3, 2, 4, 4)
    with pytest.raises(TypeError, match="stem.0.*MixingCoefficients"):
        layer(x, torch.rand(3, 4))
    with pytest.raises(ValueError, match="stem.0.*weights of 2 layers"):
        layer(x, MixingCoefficients(torch.rand(3, 2, 4)))
    kernel = Kernel(torch.randn(2, 2, 1, 1), None)
    with pytest.raises(ValueError, match="weights of 2 layers"):
        layer(x, SynthesizedKernels((kernel, kernel)))
    weights = MixingCoefficients(torch.rand(3, 5, 4))
    assert weights.rows(1, 2).num_layers == 2 and torch.equal(weights.rows(1, 2).coeffs, weights.coeffs[:, 1:3])
    assert SynthesizedKernels((kernel, kernel, kernel)).rows(2, 1).kernel() is kernel


@pytest.mark.parametrize("case, pointwise, depthwise", [
    (CONV_CASES[0], True, False), (CONV_CASES[1], False, False), (CONV_CASES[2], False, True),
    (CONV_CASES[5], False, False), ((8, 8, 1, 2, 0, 1, 1, False), False, False),  # 1x1 at stride 2: not a matmul
])
def test_pointwise_and_depthwise_are_public_properties(case, pointwise, depthwise):
    layer = make_conv(case, bases=2)
    assert layer.is_pointwise is pointwise and layer.is_depthwise is depthwise
    assert ("matmul" in layer.per_sample_paths()) is pointwise
    assert ("grouped_aten" in layer.per_sample_paths()) is depthwise
    assert BasisLinear(3, 4, 2).is_pointwise and not BasisLinear(3, 4, 2).is_depthwise


class _Answer(ExecutionPolicy):
    """A policy that answers ``answer`` for every layer and records whom it was asked about."""

    def __init__(self, answer: str) -> None:
        super().__init__()
        object.__setattr__(self, "answer", answer)
        object.__setattr__(self, "asked", [])

    def path(self, layer, x):
        self.asked.append(layer.layer_name)
        return self.answer


def test_every_policy_path_gives_the_same_network_output_and_the_policy_is_obeyed():
    from basisnet.layers import PATHS
    from basisnet.models import create_model

    torch.manual_seed(8)
    model = create_model("mobilenetv3_small", num_classes=3, resolution=16, width=0.35, num_bases=2,
                         basis_parts=("stem", "expand", "depthwise", "project", "last", "classifier")).eval()
    x = torch.randn(3, 3, 16, 16)
    coeffs = torch.softmax(torch.randn(3, model.num_basis_layers, 2), -1)
    with torch.no_grad():
        expected = model(x, coeffs)[0]  # outside any block: the default policy
        for path in set(PATHS) - {"batched", "synthesized"}:
            with execution_policy(ForcedPath(path)):
                torch.testing.assert_close(model(x, coeffs)[0], expected, rtol=1e-4, atol=1e-5, msg=path)
        asking = _Answer("loop")
        with execution_policy(asking):
            torch.testing.assert_close(model(x, coeffs)[0], expected, rtol=1e-4, atol=1e-5)
        layers = [m.layer_name for m in model.modules() if isinstance(m, (BasisConv2d, BasisLinear))]
        assert sorted(asking.asked) == sorted(layers)  # every layer asked the policy, once
        with execution_policy(_Answer("matmul")), pytest.raises(ValueError, match="does not apply"):
            model(x, coeffs)  # the answer is what runs: a depthwise conv cannot run a matmul


def test_basis_layers_compile_without_graph_breaks():
    """No host sync or data-dependent branch inside a basis layer: dynamo captures one graph."""
    from basisnet.models import create_model

    model = create_model("mobilenetv3_small", num_classes=3, resolution=16, width=0.35, num_bases=2).eval()
    coeffs = torch.softmax(torch.randn(2, model.num_basis_layers, 2), -1)
    explanation = torch._dynamo.explain(model)(torch.randn(2, 3, 16, 16), coeffs)
    assert explanation.graph_break_count == 0, explanation.break_reasons


def test_bad_construction_and_path():
    with pytest.raises(ValueError, match="num_bases"):
        BasisConv2d(2, 2, 1, 0)
    with pytest.raises(ValueError, match="divisible by groups"):
        BasisConv2d(3, 4, 1, 2, groups=2)
    layer = BasisLinear(2, 2, 2)
    with pytest.raises(ValueError, match="unknown path"):
        layer(torch.randn(1, 2), mix(torch.rand(2)), path="fast")
    with pytest.raises(ValueError, match="one coefficient vector"):
        layer(torch.randn(3, 2), mix(torch.rand(3, 2)), path="synthesized")
    with pytest.raises(ValueError, match="does not apply"):
        BasisConv2d(2, 2, 3, 2)(torch.randn(3, 2, 5, 5), mix(torch.rand(3, 2)), path="matmul")
