"""What both trainers share: accelerator set-up, deterministic per-step data and randomness (exact resume),
atomic checkpoints, EMA, the non-finite-loss guard, saving on Ctrl-C, LR schedules, progress and logging."""
from .accelerator import average_gradients, make_accelerator
from .batches import (StepBatchSampler, global_batch_indices, local_slice, sliced_randn,
                      step_generator)
from .checkpoint import CheckpointManager
from .ema import ema_weights, make_ema
from .guards import NonFiniteLossError, check_finite
from .interrupt import StopOnInterrupt, TrainingInterrupted, stop_if_requested
from .optim import LR_SCHEDULES, make_adamw, make_lr_scheduler
from .progress import TrainingProgress

__all__ = [
    "CheckpointManager", "LR_SCHEDULES", "NonFiniteLossError", "StepBatchSampler", "StopOnInterrupt",
    "TrainingInterrupted", "TrainingProgress", "stop_if_requested",
    "average_gradients", "check_finite", "ema_weights", "global_batch_indices", "local_slice",
    "make_accelerator", "make_adamw", "make_ema", "make_lr_scheduler",
    "sliced_randn", "step_generator",
]
