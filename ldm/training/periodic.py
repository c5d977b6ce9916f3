"""When a periodic task (checkpoint, sample grid, validation) runs: the one rule both trainers share.

Steps are counted from 1: step N is the N-th optimizer step, the checkpoint `step-N` holds the weights after
it, and a non-finite loss in it is reported as "at step N".
"""
from __future__ import annotations

from typing import Callable

from ldm.training.interrupt import stop_if_requested


def due(step: int, every: int, *, last_step: int) -> bool:
    """True after step `step` (1-based) when `every` divides it, or at `last_step`; `every` = 0: only at the end."""
    return step == last_step or (every > 0 and step % every == 0)


def end_of_step(step: int, *, max_steps: int, checkpoint_every: int, sample_every: int, checkpoints, accelerator,
                sample: Callable[[str], object], stop) -> None:
    """What a trainer does after optimizer step `step` (1-based): a checkpoint when due (always at the last
    step), a sample grid named `step-N` when due (the last step's grid is the caller's "final" one, drawn after
    the loop with the weights it saves), and the Ctrl-C check (`ldm.training.interrupt.stop_if_requested`)."""
    if due(step, checkpoint_every, last_step=max_steps):
        checkpoints.save(accelerator, step)
    if step < max_steps and due(step, sample_every, last_step=max_steps):
        sample(f"step-{step}")
    stop_if_requested(stop, checkpoints, accelerator, step=step)
