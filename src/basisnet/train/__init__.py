"""Training: config, optimizer/schedule, EMA, losses, crash-safe checkpoints and the epoch loop."""
from .checkpoint import (
    CheckpointError, CheckpointMismatchError, atomic_write_bytes, load_run_model, load_state, load_weights,
    read_weights, read_weights_metadata, resolve_weights, save_state, save_weights,
)
from .config import (
    ConfigError, DataConfig, ModelConfig, RunConfig, TrainConfig, config_diff, config_from_dict, config_help,
    config_to_dict, load_config, save_config, validate_config,
)
from .distributed import DistributedInfo, init_distributed_device, is_distributed, rank, world_size
from .ema import ModelEma
from .losses import MultiExitLoss, final_logits, kd_loss
from .health import NonFiniteLossError
from .history import read_summary, val_top1, val_top1_key
from .hooks import check_train_options, training_hooks
from .loop import EpochContext, TrainData, fit, train_one_epoch, validate
from .parts import TrainParts, build_parts
from .resume import TrainLoader, seed_everything
from .task import TrainingTask
from .run_dir import RunDir
from .optim import WarmupCosine, create_optimizer, create_scheduler, param_groups
from .warm_start import warm_start

__all__ = [
    "CheckpointError", "CheckpointMismatchError", "atomic_write_bytes", "load_run_model", "load_state",
    "load_weights", "read_weights", "read_weights_metadata", "resolve_weights", "save_state", "save_weights",
    "ConfigError", "DataConfig", "ModelConfig", "RunConfig", "TrainConfig", "config_from_dict", "config_help",
    "config_to_dict", "load_config", "save_config", "validate_config",
    "DistributedInfo", "init_distributed_device", "is_distributed", "rank", "world_size",
    "ModelEma", "MultiExitLoss", "final_logits", "kd_loss",
    "NonFiniteLossError", "check_train_options", "training_hooks", "EpochContext", "TrainData", "fit",
    "train_one_epoch", "validate", "TrainParts", "build_parts", "TrainLoader", "seed_everything", "TrainingTask",
    "config_diff", "RunDir", "read_summary", "val_top1", "val_top1_key",
    "WarmupCosine", "create_optimizer", "create_scheduler", "param_groups", "warm_start",
]
