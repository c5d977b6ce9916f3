"""When a periodic task (checkpoint, sample grid, validation) runs: the one rule both trainers share.

Steps are counted from 1: step N is the N-th optimizer step, the checkpoint `step-N` holds the weights after
it, and a non-finite loss in it is reported as "at step N".
"""
from __future__ import annotations


def due(step: int, every: int, *, last_step: int) -> bool:
    """True after step `step` (1-based) when `every` divides it, or at `last_step`; `every` = 0: only at the end."""
    return step == last_step or (every > 0 and step % every == 0)
