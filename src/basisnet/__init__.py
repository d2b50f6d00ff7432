"""basisnet: adaptive image classification on PyTorch (BasisNet, early exit, and its peers).

Every model is a multi-exit classifier: ``model(x)`` returns a list of exit logits, cheapest first.
"""

from .data import BatchLoader, EvalTransform, ImageTensorDataset, TrainAugment, load_dataset, make_shapes
from .deploy import EarlyExitPredictor, Predictions, Stages, TorchStages
from .evaluate import (
    ExitLogits, anytime, budgeted_batch, collect_exit_logits, count_madds, exit_madds, select_threshold,
    threshold_sweep,
)
from .layers import BasisConv2d, BasisLinear
from .models import BasisNet, MobileNet, MSDNet, RANet, create_model, list_models, register_model
from .train import RunConfig, fit, load_config
from .workflow import evaluate_run, load_run, predict_files, sweep_run, train_run

__version__ = "0.1.0"

__all__ = [
    "BasisConv2d", "BasisLinear", "BasisNet", "BatchLoader", "EarlyExitPredictor", "EvalTransform", "ExitLogits",
    "ImageTensorDataset", "MSDNet", "MobileNet", "Predictions", "RANet", "RunConfig", "Stages", "TorchStages",
    "TrainAugment", "anytime",
    "budgeted_batch", "collect_exit_logits", "count_madds", "create_model", "evaluate_run", "exit_madds", "fit",
    "list_models", "load_config", "load_dataset", "load_run", "make_shapes", "predict_files", "register_model",
    "select_threshold", "sweep_run", "threshold_sweep", "train_run",
]
