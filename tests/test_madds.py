"""Multiply-add accounting: closed forms per layer type and the published MobileNet figures."""

import json

import pytest
import torch
from torch import nn

from basisnet.cli import main
from basisnet.evaluate import count_madds, exit_madds
from basisnet.layers import BasisConv2d, BasisLinear, MixingCoefficients
from basisnet.models import create_model


class Wrap(nn.Module):
    """A one-layer model taking (x) so count_madds can run any layer."""

    def __init__(self, layer, coeffs=None, resolution=10):
        super().__init__()
        self.layer, self.coeffs, self.resolution = layer, coeffs, resolution

    def forward(self, x):
        if isinstance(self.layer, (nn.Linear, BasisLinear)):
            x = x.flatten(1)[:, : self.layer.in_features]
        return self.layer(x) if self.coeffs is None else self.layer(x, MixingCoefficients.of_layer(self.coeffs))


@pytest.mark.parametrize("k, stride, groups", [(1, 1, 1), (3, 2, 1), (5, 1, 8), (3, 1, 2)])
def test_conv_madds_closed_form(k, stride, groups):
    cin, cout, side = 8, 16, 10
    out_side = (side + 2 * (k // 2) - k) // stride + 1
    closed = out_side * out_side * cout * (cin // groups) * k * k
    conv = nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False)
    assert count_madds(Wrap(nn.Sequential(nn.Conv2d(3, cin, 1, bias=False), conv))).madds == closed + side * side * cin * 3
    n = 4
    basis = BasisConv2d(cin, cout, k, n, stride, k // 2, groups=groups)
    stem = nn.Conv2d(3, cin, 1, bias=False)

    class Net(nn.Module):
        resolution = side

        def __init__(self):
            super().__init__()
            self.stem, self.basis = stem, basis

        def forward(self, x):
            return self.basis(self.stem(x), MixingCoefficients.of_layer(torch.full((1, n), 1 / n)))

    report = count_madds(Net())
    synthesis = n * cout * (cin // groups) * k * k
    assert report.synthesis == synthesis
    assert report.madds == closed + synthesis + side * side * cin * 3


def test_linear_madds_closed_form():
    report = count_madds(Wrap(nn.Linear(300, 7), resolution=10))
    assert report.madds == 300 * 7
    basis = count_madds(Wrap(BasisLinear(300, 7, 5), torch.full((5,), 0.2), resolution=10))
    assert basis.synthesis == 5 * (300 * 7 + 7)  # weights and biases are mixed
    assert basis.madds == 300 * 7 + basis.synthesis


# Published: MobileNetV3 paper (Large 219M / 5.4M, Small 56M / 2.5M); MobileNetV2 paper 300M, params of the
# standard implementation 3.50M.
PUBLISHED = {"mobilenetv3_large": (219e6, 5.4e6), "mobilenetv3_small": (56e6, 2.5e6), "mobilenetv2": (300e6, 3.50e6)}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_madds_and_params_within_3_percent(name):
    report = count_madds(create_model(name, num_classes=1000, resolution=224))
    madds, params = PUBLISHED[name]
    assert abs(report.madds / madds - 1) < 0.03, report.madds
    assert abs(report.params / params - 1) < 0.03, report.params


def test_cli_madds_json_matches_library(capsys):
    """In process (``python -m basisnet`` is the same ``main``; a child would spend seconds importing torch)."""
    assert main(["madds", "--model", "mobilenetv3_small", "--width", "1.0", "--resolution", "224",
                 "--num-classes", "1000", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    library = count_madds(create_model("mobilenetv3_small"))
    assert record["madds"] == library.madds and record["params"] == library.params
    assert isinstance(record["madds"], int)


def test_basisnet_exit_madds_are_cumulative_and_include_synthesis():
    model = create_model("basisnet", num_classes=10, resolution=32, drop_strides=2, specialist="mobilenetv3_small",
                         specialist_width=0.5, lightweight_width=0.35, num_bases=4)
    first, both = exit_madds(model)
    light = count_madds(model.lightweight, resolution=16).madds
    assert first == light
    report = count_madds(model)
    assert both == report.madds
    assert report.synthesis > 0
    assert report.madds == light + report.per_module["coeff_head"] + report.per_module["specialist"]
