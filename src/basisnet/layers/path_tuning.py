"""Pick each basis layer's per-sample execution path by measurement on the shapes it really sees.

Which path is fastest depends on the layer (dense 1x1 or depthwise, channels, map size), the batch,
the memory layout and the machine; a fixed rule guesses wrong somewhere. ``tune_paths`` runs the
model once to capture every basis layer's input, times each path the layer supports on it, and
returns the timings as a ``TunedPaths`` policy: the caller runs the model under it
(``with execution_policy(tuned): ...``); the layers keep nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from .basis import BASIS_LAYERS, BACKWARD_VARIANTS
from .execution import PathKey, TunedPaths, path_key
from .weights import MixingCoefficients


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2] * 1e3


def basis_layer_inputs(model: nn.Module, *args, **kwargs) -> dict[nn.Module, tuple[Tensor, MixingCoefficients]]:
    """Each basis layer's (input, coefficients) at its first call with per-sample coefficients in
    ``model(*args, **kwargs)`` (layers given shared coefficients or kernels synthesize: nothing to choose)."""
    captured: dict[nn.Module, tuple[Tensor, MixingCoefficients]] = {}

    def capture(module: nn.Module, inputs: tuple) -> None:
        x, weights = inputs[0], inputs[1]
        if isinstance(weights, MixingCoefficients) and not weights.shared:
            captured.setdefault(module, (x.detach(), weights))

    hooks = [m.register_forward_pre_hook(capture) for m in model.modules() if isinstance(m, BASIS_LAYERS)]
    try:
        with torch.no_grad():
            model(*args, **kwargs)
    finally:
        for hook in hooks:
            hook.remove()
    return captured


def tune_paths(model: nn.Module, *args, repeats: int = 5, **kwargs) -> TunedPaths:
    """Time every per-sample path of every basis layer on the inputs of ``model(*args, **kwargs)``.

    Returns the policy that runs each layer that saw per-sample coefficients on its fastest path for
    this batch, layout and grad mode (``timings``: ``{(layer name, path key): {path: ms}}``). Timing
    follows the current grad mode: call it under ``no_grad``/``inference_mode`` for inference, plainly
    for training.
    """
    captured = basis_layer_inputs(model, *args, **kwargs)
    measured: dict[tuple[str, PathKey], dict[str, float]] = {}
    grad = torch.is_grad_enabled()
    for layer, (x, weights) in captured.items():
        # In training the inputs carry gradients too: a path's backward to them is part of its cost.
        x = x.requires_grad_(grad)
        weights = MixingCoefficients(weights.coeffs.detach().requires_grad_(grad), weights.policy)
        timings = {}
        # In training the loop path is no candidate: each sample's slice sends a full-batch zero
        # gradient back, which costs O(batch^2) across the network, more than a lone layer shows.
        # In inference a backward variant is its forward's twin: not timed twice.
        skip = {"loop"} if grad else set(BACKWARD_VARIANTS)
        for path in [p for p in layer.per_sample_paths() if p not in skip]:
            def run(path: str = path) -> None:
                out = layer(x, weights, path=path)
                if grad:
                    out.sum().backward()
            timings[path] = _median_ms(run, repeats)
        measured[(layer.layer_name, path_key(x))] = timings
    if torch.is_grad_enabled():
        model.zero_grad(set_to_none=True)
    return TunedPaths(measured)
