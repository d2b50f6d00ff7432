"""Deployment: the ``Stages`` a runtime runs, one early-exit predictor over them, stream specialization."""

from .early_exit import EarlyExitPredictor, Predictions, check_threshold
from .specialize import mean_coefficients, specialize
from .stages import Stages, TorchStages

__all__ = ["EarlyExitPredictor", "Predictions", "Stages", "TorchStages", "check_threshold", "mean_coefficients",
           "specialize"]
