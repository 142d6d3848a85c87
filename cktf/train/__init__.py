"""Single-run training: typed configs, the shared loop, checkpoints and callbacks."""

from .callbacks import Callback, MLflowCallback
from .checkpoint import load_model, load_state, save_model_weights
from .config import OptimConfig, RunConfig, TrainConfig
from .engine import NonFiniteLossError, evaluate, train_one_epoch
from .runner import Prepared, fit, prepare_run, train, validate_names

__all__ = [
    "Callback",
    "MLflowCallback",
    "NonFiniteLossError",
    "OptimConfig",
    "Prepared",
    "RunConfig",
    "TrainConfig",
    "evaluate",
    "fit",
    "load_model",
    "load_state",
    "prepare_run",
    "save_model_weights",
    "train",
    "train_one_epoch",
    "validate_names",
]
