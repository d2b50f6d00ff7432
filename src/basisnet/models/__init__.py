"""Models: the registry and every multi-exit classifier."""

from . import basisnet, mobilenet  # noqa: F401  (registers the models)
from .basisnet import BasisNet, BasisNetOutput
from .mobilenet import ARCHS, NETWORK_PARTS, ArchSpec, MobileNet
from .registry import create_model, list_models, model_options, register_model

__all__ = ["ARCHS", "BasisNet", "BasisNetOutput", "NETWORK_PARTS", "ArchSpec", "MobileNet", "create_model", "list_models", "model_options",
           "register_model"]
