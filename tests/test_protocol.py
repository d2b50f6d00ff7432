"""The multi-exit contract, checked once over every registered model (as timm tests ``list_models()``); the
``Stages`` a runtime runs them as, and early exit over those, are tests/test_stages.py's."""

import pytest
import torch

from basisnet.evaluate import exit_madds
from basisnet.models import MultiExitClassifier, list_models, select_state
from basisnet.models.protocol import flatten_state, unflatten_state
from basisnet.train import MultiExitLoss
from helpers import TINY, tiny_model as _model

def test_every_registered_model_has_a_tiny_config() -> None:
    assert set(TINY) == set(list_models())


@pytest.mark.parametrize("name", list_models())
def test_model_keeps_the_multi_exit_contract(name: str) -> None:
    model = _model(name)
    assert isinstance(model, MultiExitClassifier)
    x = torch.randn(6, 3, model.resolution, model.resolution)
    with torch.no_grad():
        full = model(x)
        assert len(full) == model.num_exits and all(z.shape == (6, model.num_classes) for z in full)
        for k in range(1, model.num_exits + 1):  # max_exits is honoured and stops there
            assert len(model(x, max_exits=k)) == k
        with pytest.raises(ValueError, match="max_exits"):
            model(x, max_exits=model.num_exits + 1)
        # Staged with images leaving after every exit: each remaining image's logits equal the full forward.
        alive, state = torch.arange(6), model.start(x)
        for k in range(model.num_exits):
            logits, state = model.step(state, k)
            torch.testing.assert_close(logits, full[k][alive], rtol=1e-4, atol=1e-5)
            keep = torch.arange(0, len(alive), 2) if k % 2 == 0 else torch.arange(len(alive))
            alive, state = alive[keep], select_state(state, keep)
            # Taken apart into tensors (an exported graph's inputs) and put back: the same state.
            tensors, skeleton = flatten_state(state)
            again, skeleton_again = flatten_state(unflatten_state(skeleton, tensors))
            assert skeleton_again == skeleton and len(again) == len(tensors)
            assert all(a is b for a, b in zip(again, tensors))
    costs = exit_madds(model)
    assert len(costs) == model.num_exits and costs == sorted(costs) and costs[0] > 0


_BUILT = {name: _model(name) for name in list_models()}  # built once for the parametrizations below


@pytest.mark.parametrize("name", [name for name, model in _BUILT.items() if model.num_exits > 1])
def test_self_distillation_teaches_every_earlier_exit_and_leaves_the_last_alone(name: str) -> None:
    """One loss module serves every multi-exit model: with ``self_distill`` each earlier exit's gradient
    changes (it now follows the last exit too), the last exit's does not (its prediction is detached)."""
    model = _model(name).train()
    x, y = torch.randn(4, 3, model.resolution, model.resolution), torch.arange(4) % model.num_classes
    grads = {}
    for weight in (0.0, 1.0):
        torch.manual_seed(0)  # the same dropout masks in both passes
        logits = model(x)
        for z in logits:
            z.retain_grad()
        MultiExitLoss(self_distill=weight)(logits, y).backward()
        grads[weight] = [z.grad for z in logits]
    torch.testing.assert_close(grads[1.0][-1], grads[0.0][-1])
    assert all(not torch.allclose(a, b) for a, b in zip(grads[1.0][:-1], grads[0.0][:-1]))


_BALANCED = [name for name, model in _BUILT.items() if hasattr(model, "gradient_equilibrium")]


def test_models_with_a_shared_trunk_offer_gradient_equilibrium() -> None:
    assert {"msdnet", "ranet"} <= set(_BALANCED)


@pytest.mark.parametrize("name", _BALANCED)
def test_gradient_equilibrium_gives_the_trunk_the_mean_of_its_exits_gradients(name: str) -> None:
    """Forward unchanged; each head keeps its own gradient; the image, which feeds every exit, gets the mean of
    the exits' gradients instead of their sum (by induction over the exits' split points: exactly 1/n)."""
    model = _model(name).train()
    x, y = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)), torch.arange(4) % model.num_classes
    runs = {}
    for on in (False, True):
        model.gradient_equilibrium = on
        model.zero_grad()
        image = x.clone().requires_grad_()
        logits = model(image)
        sum(torch.nn.functional.cross_entropy(z, y) for z in logits).backward()
        runs[on] = ([z.detach() for z in logits], image.grad, [p.grad.clone() for p in model.heads.parameters()])
    (plain, plain_x, plain_heads), (balanced, balanced_x, balanced_heads) = runs[False], runs[True]
    for a, b in zip(plain, balanced):
        torch.testing.assert_close(b, a)
    torch.testing.assert_close(balanced_x, plain_x / model.num_exits)
    for a, b in zip(plain_heads, balanced_heads):
        torch.testing.assert_close(b, a)


@pytest.mark.parametrize("name", list_models())
def test_model_compiles_as_one_graph(name: str) -> None:
    """torch.compile captures the whole forward: no host sync or data-dependent branch anywhere."""
    model = _model(name)
    explanation = torch._dynamo.explain(model)(torch.randn(2, 3, model.resolution, model.resolution))
    assert explanation.graph_break_count == 0, explanation.break_reasons
