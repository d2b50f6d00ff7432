"""Upcycling (static net -> basis twin) and BasisNet's in-run static phase."""

import pytest
import torch

from basisnet import create_model
from basisnet.models import ARCHS, BasisNet
from basisnet.models.upcycle import UpcycleError, collapse_bases_, upcycle

from helpers import MOBILE, TINY


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_upcycle_every_mobilenet_keeps_its_function(arch):
    static = create_model(arch, **MOBILE).eval()
    twin = upcycle(static, num_bases=4, noise=0.0)
    assert twin.num_basis_layers > 0 and not twin.training
    x = torch.randn(3, 3, 32, 32)
    coeffs = torch.softmax(torch.randn(3, twin.num_basis_layers, 4), -1)
    with torch.no_grad():  # tied bases: any coefficients give the static kernel
        torch.testing.assert_close(twin(x, coeffs)[0], static(x)[0], rtol=1e-4, atol=1e-4)
    noisy = upcycle(static, num_bases=4, noise=0.05, generator=torch.Generator().manual_seed(0))
    src = static.state_dict()["blocks.1.expand.0.weight"]
    bases = noisy.state_dict()["blocks.1.expand.0.weight"]
    assert bases.shape == (4, *src.shape) and not torch.equal(bases[0], bases[1])
    assert 0.035 < ((bases - src).std() / src.std()).item() < 0.065


def test_upcycle_refuses_a_basis_or_routed_network():
    with pytest.raises(UpcycleError, match="needs a static network"):
        upcycle(create_model("mobilenetv3_small", **MOBILE, num_bases=2), 4)
    with pytest.raises(UpcycleError, match="routing"):
        upcycle(create_model("condconv_mobilenetv3_small", **MOBILE), 4)


def test_static_phase_trains_one_static_specialist_then_upcycles():
    torch.manual_seed(0)
    model = create_model("basisnet", **TINY["basisnet"], basis_dropout=0.5).train()
    model.begin_static_phase()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 5, (8,))
    for _ in range(3):
        out = model.forward_output(x)
        assert out.coeffs.shape == (model.specialist.num_basis_layers, 3)  # one uniform set for the batch
        loss = sum(torch.nn.functional.cross_entropy(o, y) for o in out.exits())
        opt.zero_grad()
        loss.backward()
        opt.step()
    for name, tensor in model.specialist.state_dict().items():
        if tensor.dim() == 5:  # basis kernels: identical updates kept them identical
            assert all(torch.equal(tensor[0], t) for t in tensor[1:]), name
    assert torch.count_nonzero(model.coeff_head.weight) == 0  # no signal reached the head
    model.eval()
    with torch.no_grad():
        before = model(x)[1]
        model.end_static_phase(noise=0.0)
        torch.testing.assert_close(model(x)[1], before)  # upcycling with no noise changes nothing
    model.begin_static_phase()
    model.end_static_phase(noise=0.01, generator=torch.Generator().manual_seed(1))
    kernel = model.specialist.blocks[2].expand[0].weight
    assert not model.static_phase and not torch.equal(kernel[0], kernel[1])
    assert model.forward_output(x).coeffs.shape == (8, model.specialist.num_basis_layers, 3)


def test_collapse_bases_ties_every_basis_to_the_first():
    model = create_model("mobilenetv3_small", **MOBILE, num_bases=3)
    first = model.blocks[3].depthwise[0].weight[0].clone()
    collapse_bases_(model)
    assert all(torch.equal(first, w) for w in model.blocks[3].depthwise[0].weight)


@pytest.mark.slow
def test_a_run_stopped_at_the_end_of_the_static_phase_resumes_exactly(tmp_path, monkeypatch):
    from basisnet.configs import bundled_config
    from basisnet.train import load_config
    from basisnet.workflow import train_run

    tiny = ["train.epochs=2", "train.warmup_epochs=0", "data.subset=128", "data.val_size=64", "data.batch_size=32",
            "model.kwargs.specialist_width=0.35", "model.kwargs.num_bases=2", "train.static_phase=0.5",
            "train.device=cpu"]  # bitwise comparison: CPU kernels even where a GPU is visible
    cfg = lambda: load_config(bundled_config("shapes_demo"), tiny)  # noqa: E731
    train_run(cfg(), tmp_path / "reference", progress=False)
    upcycle_step = BasisNet.end_static_phase

    def stop_once(self, *args, **kwargs):  # the process dies just as epoch 2 (the first mixed one) begins
        monkeypatch.setattr(BasisNet, "end_static_phase", upcycle_step)
        raise KeyboardInterrupt("simulated kill at the phase boundary")

    monkeypatch.setattr(BasisNet, "end_static_phase", stop_once)
    with pytest.raises(KeyboardInterrupt):
        train_run(cfg(), tmp_path / "stopped", progress=False)
    train_run(cfg(), tmp_path / "stopped", resume=True, progress=False)
    import safetensors.torch

    ref = safetensors.torch.load_file(tmp_path / "reference" / "last.safetensors")
    got = safetensors.torch.load_file(tmp_path / "stopped" / "last.safetensors")
    assert [k for k in ref if not torch.equal(ref[k], got[k])] == []
    kernel = got["specialist.blocks.2.expand.0.weight"]
    assert not torch.equal(kernel[0], kernel[1])  # the resumed run did upcycle
