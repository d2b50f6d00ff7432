"""The two evaluation protocols of MSDNet (Huang et al., 2018) and RANet (Yang et al., 2020).

* Anytime prediction: every sample runs to exit k; accuracy and cost per exit.
* Budgeted batch classification: a family of exit priors p_k ∝ q^k; for each, confidence
  thresholds are calibrated on validation so that a fraction p_k of samples leaves at exit k,
  then applied to test. This follows ``Tester.dynamic_eval_find_threshold`` /
  ``dynamic_eval_with_threshold`` of kalviny/MSDNet-PyTorch ``adaptive_inference.py``
  (float32 softmax confidences, ``floor(n * p_k)``, last threshold -1e8), vectorised.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .exits import ExitLogits, check_exit_madds, confidences, evaluate_routing, exit_accuracy, first_confident_exit

__all__ = ["DEFAULT_QS", "anytime", "best_within", "budgeted_batch", "compare_curves", "exit_prior", "fit_temperatures"]

# MSDNet's family: q = p / 20 for p = 1..39.
DEFAULT_QS: tuple[float, ...] = tuple(p / 20 for p in range(1, 40))

# MSDNet's "unreachable" and "accept everyone" thresholds.
_NEVER, _ALWAYS = 1e8, -1e8


def anytime(exit_logits: ExitLogits, exit_madds: Sequence[float]) -> list[dict]:
    """Rows ``{exit, top1 (%), madds}``: the accuracy if the budget is cut right after exit k (counted from 1)."""
    check_exit_madds(exit_logits, exit_madds)
    return [
        {"exit": k, "top1": top1, "madds": float(m)}
        for k, (top1, m) in enumerate(zip(exit_accuracy(exit_logits), exit_madds, strict=True), start=1)
    ]


def exit_prior(q: float, num_exits: int) -> Tensor:
    """p_k ∝ q^k for k = 1..E, computed in float32 exactly as MSDNet does (``exp(log q * k)``)."""
    if q <= 0:
        raise ValueError(f"q must be > 0, got {q}")
    k = torch.arange(1, num_exits + 1, dtype=torch.float32)
    probs = torch.exp(torch.log(torch.tensor(q, dtype=torch.float32)) * k)
    return probs / probs.sum()


def _find_thresholds(conf: Tensor, prior: Tensor) -> Tensor:
    """MSDNet's greedy calibration: T_k is the confidence of the floor(n*p_k)-th most confident
    sample among those not yet exited; samples with conf >= T_k are then marked exited (ties may
    take more than floor(n*p_k)). If that rank does not exist (0, or fewer samples remain),
    T_k stays 1e8 and nobody exits at k. The last exit takes everyone left."""
    num_exits, num = conf.shape
    thresholds = torch.full((num_exits,), _NEVER, dtype=torch.float32)
    exited = torch.zeros(num, dtype=torch.bool)
    for k in range(num_exits - 1):
        out_n = math.floor(float(num * prior[k]))  # float32 product, as in MSDNet
        remaining = conf[k][~exited].sort(descending=True).values
        if 1 <= out_n <= remaining.numel():
            thresholds[k] = remaining[out_n - 1]
        exited |= conf[k] >= thresholds[k]
    thresholds[-1] = _ALWAYS
    return thresholds


def fit_temperatures(val: ExitLogits, max_iter: int = 100) -> Tensor:
    """One temperature per exit minimising validation NLL (LBFGS on log T), shape [E].

    The exits are independent terms of one summed loss, so a single optimisation fits all.
    Optimising log T keeps T positive without constraints.
    """
    logits = val.logits.double()
    targets = val.targets.expand(val.num_exits, -1)
    log_t = torch.zeros(val.num_exits, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        scaled = logits / log_t.exp().view(-1, 1, 1)
        loss = torch.nn.functional.cross_entropy(scaled.transpose(1, 2), targets, reduction="none")
        total = loss.mean(dim=1).sum()
        total.backward()
        return total

    with torch.enable_grad():
        optimizer.step(closure)
    return log_t.detach().exp().float()


def budgeted_batch(
    val: ExitLogits,
    test: ExitLogits,
    exit_madds: Sequence[float],
    qs: Sequence[float] | None = None,
    temperature: bool = False,
) -> list[dict]:
    """Budgeted batch classification curve, one row per q (default :data:`DEFAULT_QS`).

    Rows: ``q``, ``top1`` (% on test), ``madds`` (expected per image from the TEST exit
    fractions, as MSDNet reports), ``exit_fractions`` (test, per exit) and ``thresholds``
    (calibrated on validation). ``temperature=True`` first calibrates each exit's softmax with
    :func:`fit_temperatures` on validation (applied to both splits).
    """
    if val.num_exits != test.num_exits:
        raise ValueError(f"val has {val.num_exits} exits but test has {test.num_exits}")
    check_exit_madds(test, exit_madds)
    temps = fit_temperatures(val) if temperature else None
    val_conf, _ = confidences(val, temps)
    test_conf, _ = confidences(test, temps)
    rows = []
    for q in DEFAULT_QS if qs is None else qs:
        thresholds = _find_thresholds(val_conf, exit_prior(q, val.num_exits))
        stats = evaluate_routing(test, first_confident_exit(test_conf, thresholds), exit_madds)
        rows.append(
            {
                "q": float(q),
                "top1": stats["top1"],
                "madds": stats["madds"],
                "exit_fractions": stats["fractions"],
                "thresholds": thresholds.tolist(),
            }
        )
    return rows


def best_within(points: Sequence[tuple[float, float]], budget: float) -> float | None:
    """The best top-1 among operating points ``(madds, top1)`` costing at most ``budget`` (None if none do).

    This is what "accuracy at a budget" means for a user who picks an operating point: a curve that
    dips is never worse than its best affordable point.
    """
    affordable = [top1 for madds, top1 in points if madds <= budget]
    return max(affordable) if affordable else None


def compare_curves(a: Sequence[tuple[float, float]], b: Sequence[tuple[float, float]]) -> dict:
    """Compare two accuracy-vs-MAdds curves at every budget where both have an affordable operating point.

    The budgets are every point's cost from ``max(min a, min b)`` up (above a curve's dearest point its
    best point still counts, so a single-point model compares too); the margin at a budget is
    ``best_within(a) - best_within(b)``. Returns ``budgets`` (how many), ``a_wins`` (margin > 0),
    ``ties``, ``min_margin`` / ``max_margin`` (points) and the ``range`` of budgets compared.
    """
    if not a or not b:
        raise ValueError("compare_curves needs at least one point on each curve")
    low = max(min(m for m, _ in a), min(m for m, _ in b))
    budgets = sorted({m for m, _ in [*a, *b] if m >= low})
    margins = [best_within(a, x) - best_within(b, x) for x in budgets]
    return {
        "range": [budgets[0], budgets[-1]],
        "budgets": len(budgets),
        "a_wins": sum(m > 0 for m in margins),
        "ties": sum(m == 0 for m in margins),
        "min_margin": min(margins),
        "max_margin": max(margins),
    }
