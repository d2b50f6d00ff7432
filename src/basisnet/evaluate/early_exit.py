"""BasisNet-style single-threshold early exit, generalised to E exits.

A sample stops at the first exit i < E-1 whose max softmax probability is >= the threshold,
otherwise at the last exit. Everything is computed from cached logits, so a sweep costs no
forward passes.

Threshold convention: thresholds live in [0, 1] and are compared with ``>=``. Threshold 0
sends every sample to exit 0. Threshold 1 lets only samples whose confidence is exactly 1.0
(softmax saturation) exit early; confidences are computed in float64 so this needs a logit
margin of ~37, i.e. 1.0 is "practically never exit early". Thresholds above 1 would mean
"never", which is exactly running the last exit, so they are rejected rather than special-cased.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .exits import ExitLogits, confidences, evaluate_routing, exit_accuracy, first_confident_exit

__all__ = ["DEFAULT_THRESHOLDS", "apply_threshold", "select_threshold", "threshold_sweep"]

# Steps of 0.01, densified near 1 where the confidences of a trained network concentrate.
DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(
    sorted({round(i / 100, 2) for i in range(101)} | {0.995, 0.999, 0.9995, 0.9999})
)

# Relative slack for the MAdds budget so that a budget equal to an achievable cost is not lost
# to floating-point rounding of the weighted sum.
_BUDGET_RTOL = 1e-9


def _check_threshold(threshold: float) -> None:
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")


def _rows(exit_logits: ExitLogits, exit_madds: Sequence[float], thresholds: Sequence[float]) -> list[dict]:
    for t in thresholds:
        _check_threshold(t)
    conf, _ = confidences(exit_logits, dtype=torch.float64)
    rows = []
    for t in thresholds:
        per_exit = torch.full((exit_logits.num_exits,), float(t), dtype=torch.float64)
        stats = evaluate_routing(exit_logits, first_confident_exit(conf, per_exit), exit_madds)
        rows.append(
            {
                "threshold": float(t),
                "top1": stats["top1"],
                "madds": stats["madds"],
                "exit_fraction": 1.0 - stats["fractions"][-1],
                "fractions": stats["fractions"],
            }
        )
    return rows


def threshold_sweep(
    exit_logits: ExitLogits,
    exit_madds: Sequence[float],
    thresholds: Sequence[float] | None = None,
) -> list[dict]:
    """Accuracy/cost trade-off over thresholds (default :data:`DEFAULT_THRESHOLDS`).

    Each row: ``threshold``, ``top1`` (%), ``madds`` (average per image, unit of ``exit_madds``),
    ``exit_fraction`` (answered before the last exit) and ``fractions`` (per exit).
    """
    return _rows(exit_logits, exit_madds, DEFAULT_THRESHOLDS if thresholds is None else thresholds)


def apply_threshold(exit_logits: ExitLogits, exit_madds: Sequence[float], threshold: float) -> dict:
    """One operating point (same row format as :func:`threshold_sweep`), e.g. on the test split."""
    return _rows(exit_logits, exit_madds, [threshold])[0]


def select_threshold(
    val_exit_logits: ExitLogits,
    exit_madds: Sequence[float],
    target_madds: float | None = None,
    max_drop: float | None = None,
    thresholds: Sequence[float] | None = None,
) -> float:
    """Pick a threshold on validation, so that the test split is only used to report it.

    Exactly one criterion: ``target_madds`` -> the most accurate threshold whose average MAdds
    fit the budget (ties: the cheaper); ``max_drop`` (percentage points below always running the
    last exit) -> the cheapest threshold within that drop (ties: the more accurate).
    """
    if (target_madds is None) == (max_drop is None):
        raise ValueError("give exactly one of target_madds or max_drop")
    rows = threshold_sweep(val_exit_logits, exit_madds, thresholds)
    if target_madds is not None:
        feasible = [r for r in rows if r["madds"] <= target_madds * (1 + _BUDGET_RTOL)]
        if not feasible:
            cheapest = min(r["madds"] for r in rows)
            raise ValueError(
                f"--target-madds {target_madds} is below the minimum achievable average MAdds {cheapest}"
            )
        best = max(feasible, key=lambda r: (r["top1"], -r["madds"]))
    else:
        assert max_drop is not None
        if max_drop < 0:
            raise ValueError(f"--max-drop must be >= 0 percentage points, got {max_drop}")
        floor = exit_accuracy(val_exit_logits)[-1] - max_drop
        feasible = [r for r in rows if r["top1"] >= floor]
        if not feasible:
            best_top1 = max(r["top1"] for r in rows)
            raise ValueError(
                f"--max-drop {max_drop}: no threshold reaches {floor:.3f}% (best swept accuracy {best_top1:.3f}%)"
            )
        best = min(feasible, key=lambda r: (r["madds"], -r["top1"]))
    return best["threshold"]
