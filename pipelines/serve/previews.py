"""Live previews: a linear latent → RGB map fitted to the model's own VAE, cheap enough to run every step.

Decoding the VAE at every sampler step would cost about as much as a U-Net step; a per-pixel linear map of the
latent channels costs nothing and shows colours and layout well (the approach of the "latent2RGB" previews in
AUTOMATIC1111 and ComfyUI, which ship fixed SD-1.x factors). Our VAEs are trained here, so the factors are
fitted at start-up: encode a few synthetic images, decode their latents, and solve least squares from each
latent cell `(C,)` to the mean colour of the `f × f` pixel block it decodes to.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

FIT_IMAGES = 16  # 16 images × (h·w) cells is thousands of equations for C + 1 unknowns per colour


def synthetic_images(count: int, size: int, seed: int = 0) -> torch.Tensor:
    """`(count, 3, size, size)` in [-1, 1]: flat backgrounds with a few flat rectangles, colours uniform.

    Flat regions of many colours pin down the colour map; edges are few, so the fit is not dominated by them.
    """
    rng = np.random.default_rng(seed)
    images = np.empty((count, size, size, 3), dtype=np.float32)
    for image in images:
        image[:] = rng.random(3)
        for _ in range(3):
            top, left = rng.integers(0, size - size // 4, size=2)
            height, width = rng.integers(size // 4, size // 2 + 1, size=2)
            image[top : top + height, left : left + width] = rng.random(3)
    return torch.from_numpy(images).permute(0, 3, 1, 2) * 2 - 1


@torch.inference_mode()
def fit_latent_rgb_map(vae, size: int, *, count: int = FIT_IMAGES, seed: int = 0) -> torch.Tensor:
    """Least-squares `(C + 1, 3)` map from a scaled latent cell `[z_1 … z_C, 1]` to RGB in [0, 1].

    size: image side in pixels (the model's size). Targets are the VAE's decodes of the latents,
    average-pooled to latent resolution, so the preview approximates what the final decode will show.
    """
    param = next(vae.parameters())
    images = synthetic_images(count, size, seed).to(device=param.device, dtype=param.dtype)
    scaling = vae.config.scaling_factor
    latents = vae.encode(images).latent_dist.mean * scaling  # (N, C, h, w), as the sampler sees them
    decoded = vae.decode(latents / scaling).sample.float().clamp(-1, 1) * 0.5 + 0.5  # (N, 3, H, W)
    targets = F.adaptive_avg_pool2d(decoded, latents.shape[-2:])  # (N, 3, h, w)
    inputs = latents.float().permute(0, 2, 3, 1).reshape(-1, latents.shape[1])  # (N·h·w, C)
    inputs = torch.cat([inputs, torch.ones(len(inputs), 1, device=inputs.device)], dim=1)
    targets = targets.permute(0, 2, 3, 1).reshape(-1, 3)  # (N·h·w, 3)
    return torch.linalg.lstsq(inputs.cpu(), targets.cpu()).solution  # (C + 1, 3)


def latents_to_rgb(latents: torch.Tensor, rgb_map: torch.Tensor) -> torch.Tensor:
    """Scaled latents `(B, C, h, w)` → preview RGB `(B, h, w, 3)` in [0, 1] through the fitted map."""
    cells = latents.detach().float().cpu().permute(0, 2, 3, 1)  # (B, h, w, C)
    return (cells @ rgb_map[:-1] + rgb_map[-1]).clamp(0, 1)


def preview_image(latents: torch.Tensor, rgb_map: torch.Tensor, size: tuple[int, int]) -> Image.Image:
    """The first image of a latent batch as a PIL preview, resized to `size` = (width, height) pixels."""
    rgb = latents_to_rgb(latents[:1], rgb_map)[0]
    pixels = (rgb.numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(pixels).resize(size, Image.BILINEAR)
