"""Accelerator set-up shared by both trainers, plus gradient averaging for models called outside DDP."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed


def make_accelerator(*, output_dir: Path | str, mixed_precision: str = "no",
                     gradient_accumulation_steps: int = 1, seed: int = 0,
                     log_with: str | None = "tensorboard", project_name: str = "train") -> Accelerator:
    """An Accelerator writing logs under `output_dir/logs`, trackers started on the main process.

    Uses `cpu=True` when CUDA is absent, so `accelerate launch --num_processes 2` also runs on a CPU-only
    machine (over gloo). `log_with=None` turns tracking off.
    """
    output_dir = Path(output_dir)
    project_config = ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs"))
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(), mixed_precision=mixed_precision,
        gradient_accumulation_steps=gradient_accumulation_steps, log_with=log_with,
        project_config=project_config,
    )
    set_seed(seed)  # model initialisation; per-step randomness comes from ldm.training.batches
    if log_with is not None:
        accelerator.init_trackers(project_name)  # no-op on non-main processes
    return accelerator


def average_gradients(parameters: Iterable[torch.nn.Parameter], accelerator: Accelerator) -> None:
    """Average `.grad` over processes in place (what DDP does), for models used through several methods
    (e.g. `vae.encode` then `vae.decode`, or a discriminator inside a loss module) rather than one forward().

    One flat all-reduce; parameters without a gradient are skipped (every process must agree on which).
    """
    if accelerator.num_processes == 1:
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    flat = accelerator.reduce(flat, reduction="mean")
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()
