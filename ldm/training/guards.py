"""The non-finite-loss guard: stop at the first NaN/inf loss, naming the step and the last good checkpoint."""
from __future__ import annotations

from pathlib import Path

import torch


class NonFiniteLossError(RuntimeError):
    """Raised by `check_finite`; its message is one line meant to be printed as `error: <message>`."""


def check_finite(loss: torch.Tensor, step: int, *, last_checkpoint: Path | str | None) -> None:
    """Raise NonFiniteLossError if `loss` (any shape) holds NaN or inf.

    In a multi-process run pass a value reduced over processes (e.g. `accelerator.reduce(loss.detach())`), so
    every process stops at the same step instead of the others hanging in the next collective.
    """
    if bool(torch.isfinite(loss.detach()).all()):
        return
    kept = f"the last good checkpoint is {last_checkpoint}" if last_checkpoint else "no checkpoint saved yet"
    raise NonFiniteLossError(f"non-finite loss ({loss.detach().float().flatten()[0].item()}) at step {step}; "
                             f"stopped without saving, {kept}.")
