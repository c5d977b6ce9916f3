"""The latent scale factor: 1 / std of the VAE's posterior samples (LDM paper, sec. 4.3.2 and appendix G)."""
from __future__ import annotations

import logging
from collections.abc import Iterable

import torch

logger = logging.getLogger(__name__)


@torch.no_grad()
def measure_scaling_factor(
    vae, pixel_batches: Iterable[torch.Tensor], *, generator: torch.Generator | None = None
) -> float:
    """1 / std of z ~ q(z | x) over every element of every batch, so that scaled latents have unit variance.

    vae: an AutoencoderKL (unwrapped, not a DDP module). pixel_batches: tensors (B, 3, H, W) in [-1, 1], moved
    to the VAE's device and dtype. generator: for the posterior samples. The std is the sample std (n - 1) of
    all latent elements, accumulated in float64: any split into batches gives the result of one big batch.
    """
    count, total, total_sq = 0, 0.0, 0.0
    for pixel_values in pixel_batches:
        pixel_values = pixel_values.to(device=vae.device, dtype=vae.dtype)
        latents = vae.encode(pixel_values).latent_dist.sample(generator=generator).double()
        count += latents.numel()
        total += latents.sum().item()
        total_sq += latents.pow(2).sum().item()
    if count < 2:
        raise ValueError("measure_scaling_factor needs at least one batch of images.")
    variance = (total_sq - total * total / count) / (count - 1)
    std = variance**0.5
    logger.info("Latent std over %d elements: %.5f -> scaling_factor %.5f", count, std, 1.0 / std)
    return 1.0 / std
