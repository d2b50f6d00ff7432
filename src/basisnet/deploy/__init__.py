"""Deployment: early-exit inference over trained multi-exit models."""

from .early_exit import EarlyExitPredictor, Predictions, check_threshold

__all__ = ["EarlyExitPredictor", "Predictions", "check_threshold"]
