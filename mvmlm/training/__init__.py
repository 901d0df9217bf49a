"""The one training engine (:class:`Engine`) and the pieces it is made of; every trainer of mvmlm runs on it."""

from mvmlm.training.checkpoints import checkpoint_dirs, latest_checkpoint, resolve_resume, save_checkpoint
from mvmlm.training.engine import Engine, FitResult, Loss, check_train_config
from mvmlm.training.guards import NonFiniteLossError, average_gradients, check_finite
from mvmlm.training.loop import BEST_DIR, CHECKPOINTS_DIR, TRAIN_LOG, VAL_LOG
from mvmlm.training.optim import build_optimizer, build_scheduler, param_groups, warmup_cosine_schedule
from mvmlm.training.runs import open_run
from mvmlm.training.signals import StopSignals, TrainingStopped
from mvmlm.training.state import Best, TrainState
from mvmlm.training.trackers import flat_hparams, tracker_names

__all__ = [
    "Engine",
    "FitResult",
    "Loss",
    "check_train_config",
    "TRAIN_LOG",
    "VAL_LOG",
    "BEST_DIR",
    "CHECKPOINTS_DIR",
    "Best",
    "TrainState",
    "NonFiniteLossError",
    "check_finite",
    "average_gradients",
    "param_groups",
    "build_optimizer",
    "build_scheduler",
    "warmup_cosine_schedule",
    "checkpoint_dirs",
    "latest_checkpoint",
    "resolve_resume",
    "save_checkpoint",
    "tracker_names",
    "flat_hparams",
    "open_run",
    "StopSignals",
    "TrainingStopped",
]
