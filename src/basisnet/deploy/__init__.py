"""Deployment: early-exit inference over trained multi-exit models; stream specialization."""

from .early_exit import EarlyExitPredictor, Predictions, check_threshold
from .specialize import mean_coefficients, specialize

__all__ = ["EarlyExitPredictor", "Predictions", "check_threshold", "mean_coefficients", "specialize"]
