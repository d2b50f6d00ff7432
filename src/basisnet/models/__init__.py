"""Models: the registry and every multi-exit classifier."""

from . import basisnet, mobilenet  # noqa: F401  (registers the models)
from .basisnet import BasisNet, BasisNetOutput
from .mobilenet import ARCHS, NETWORK_PARTS, ArchSpec, MobileNet
from .msdnet import MSDNET_PRESETS, MSDNet  # registers "msdnet"
from .ranet import RANET_PRESETS, RANet  # registers "ranet"
from .protocol import MultiExitClassifier, TrainingHooks, TrainSettings, run_exits, select_state
from .registry import check_options, create_model, list_models, model_class, model_defaults, model_options, register_model

__all__ = ["ARCHS", "BasisNet", "BasisNetOutput", "NETWORK_PARTS", "ArchSpec", "MobileNet", "MSDNET_PRESETS", "MSDNet", "MultiExitClassifier",
           "RANET_PRESETS", "RANet", "TrainSettings", "TrainingHooks", "check_options", "create_model", "list_models",
           "model_class", "model_defaults", "model_options", "register_model", "run_exits", "select_state"]
