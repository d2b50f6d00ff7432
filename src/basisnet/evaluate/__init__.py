"""Evaluation that speaks only the multi-exit interface: MAdds, cached exit logits, protocols, plots."""

from .early_exit import DEFAULT_THRESHOLDS, apply_threshold, select_threshold, threshold_sweep
from .exits import ExitLogits, collect_exit_logits, confidences, evaluate_routing, exit_accuracy, first_confident_exit
from .madds import MaddsReport, count_madds, count_params, exit_madds
from .plots import plot_bars, plot_models, plot_tradeoff
from .shortcut import ShortcutReport, shortcut_report
from .protocols import DEFAULT_QS, anytime, best_within, budgeted_batch, compare_curves, exit_prior, fit_temperatures

__all__ = [
    "DEFAULT_QS", "DEFAULT_THRESHOLDS", "ExitLogits", "MaddsReport", "anytime", "apply_threshold", "best_within",
    "budgeted_batch", "compare_curves",
    "collect_exit_logits", "confidences", "count_madds", "count_params", "evaluate_routing", "exit_accuracy",
    "exit_madds", "exit_prior", "ShortcutReport", "shortcut_report", "first_confident_exit", "fit_temperatures", "plot_bars", "plot_models", "plot_tradeoff", "select_threshold",
    "threshold_sweep",
]
