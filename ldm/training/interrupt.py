"""Ctrl-C during training: finish the current step, save a checkpoint, and stop with one line.

Python turns SIGINT into a KeyboardInterrupt wherever the program happens to be, which may be between the
optimizer step and the EMA update; a checkpoint written there would not resume exactly, and without one the
steps since the last periodic checkpoint are lost. `StopOnInterrupt` makes the first Ctrl-C a request that
the training loop honours at the end of a step (`stop_if_requested`); a second Ctrl-C raises at once.

Only single-process runs get this: under `accelerate launch` every process receives the signal, possibly in
different steps, and a checkpoint needs all of them in the same one, so those keep Python's default and rely on
the periodic checkpoints.
"""
from __future__ import annotations

import logging
import signal
import threading

from accelerate import Accelerator

from .checkpoint import CheckpointManager

logger = logging.getLogger(__name__)

INTERRUPTED_EXIT_STATUS = 130  # what shells report for a command stopped by SIGINT


class TrainingInterrupted(Exception):
    """Raised by `stop_if_requested` after saving; its message is one line for the user."""


class StopOnInterrupt:
    """Context manager: while active (and `enabled`, in the main thread), the first SIGINT sets `requested`
    instead of raising; the previous handler comes back at once, so a second SIGINT acts as before."""

    def __init__(self, enabled: bool = True, *, message: str = "stopping after this step (Ctrl-C again to stop "
                                                                "at once)"):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.message = message
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, self._previous)
        logger.warning("interrupt: %s", self.message)

    def __enter__(self) -> "StopOnInterrupt":
        if self.enabled:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self.enabled:
            signal.signal(signal.SIGINT, self._previous)


def stop_if_requested(stop: StopOnInterrupt, checkpoints: CheckpointManager, accelerator: Accelerator, *,
                      step: int) -> None:
    """At the end of optimizer step `step`: if an interrupt was requested, make sure a checkpoint of `step`
    exists (saving one unless the loop just did) and raise TrainingInterrupted naming it."""
    if stop.requested:
        path = checkpoints.ensure_saved(accelerator, step)
        raise TrainingInterrupted(f"interrupted after step {step}; the checkpoint {path} holds it: run the same "
                                  f"command with --resume latest to continue.")
