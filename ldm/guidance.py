"""Classifier-free guidance: the one place that fixes the batch order `[uncond, cond]` and the formula.

Ho & Salimans 2022 (https://arxiv.org/abs/2207.12598), eq. 6: ε̄ = (w+1)·ε(x, y) − w·ε(x). diffusers writes
the scale as `guidance_scale` = w + 1, so ε̄ = ε(x) + guidance_scale·(ε(x, y) − ε(x)). At guidance_scale <= 1
(w <= 0) the pipeline does not compute ε(x) at all (diffusers does the same), which halves the U-Net work.
"""

from __future__ import annotations

import torch


def guidance_scale_from_weight(w: float) -> float:
    """diffusers' `guidance_scale` for the paper's guidance weight `w`: w + 1 (w = 0 is the conditional model)."""
    return float(w) + 1.0


def do_guidance(guidance_scale: float) -> bool:
    """True when the unconditional branch is needed, i.e. guidance_scale > 1 (w > 0)."""
    return guidance_scale > 1.0


def cfg_batch(uncond: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """Stack the two branches along the batch: `(B, ...)`, `(B, ...)` → `(2B, ...)`, unconditional first."""
    if uncond.shape != cond.shape:
        raise ValueError(
            f"uncond and cond must have the same shape, got {tuple(uncond.shape)} and {tuple(cond.shape)}."
        )
    return torch.cat([uncond, cond])


def apply_guidance(noise_pred: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """Guided prediction `(B, ...)` from a `[uncond, cond]` batch `(2B, ...)` made by `cfg_batch`."""
    noise_pred_uncond, noise_pred_cond = noise_pred.chunk(2)
    return noise_pred_uncond + guidance_scale * (noise_pred_cond - noise_pred_uncond)
