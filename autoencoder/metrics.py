"""Reconstruction metrics per image: PSNR and SSIM on images in [-1, 1], measured in [0, 1] (data range 1).

Both clamp to [0, 1] after mapping, i.e. they score the image that would be saved.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

SSIM_WINDOW = 11  # Wang et al. 2004 (https://doi.org/10.1109/TIP.2003.819861): 11x11 Gaussian, sigma 1.5
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


def _to_unit(images: torch.Tensor) -> torch.Tensor:
    return ((images.float() + 1.0) / 2.0).clamp(0.0, 1.0)


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """PSNR in dB = 10 · log10(1 / MSE), MSE over (C, H, W) in [0, 1]. x, y: (B, C, H, W) in [-1, 1].
    Returns (B,); identical images give inf."""
    mse = (_to_unit(x) - _to_unit(y)).pow(2).mean(dim=(1, 2, 3))
    return 10.0 * torch.log10(1.0 / mse)


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """(size, size) Gaussian weights summing to 1."""
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-coords.pow(2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).float()


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean SSIM over valid 11x11 windows and channels. x, y: (B, C, H, W) in [-1, 1], H, W >= 11.
    Returns (B,) in [-1, 1]; identical images give 1."""
    if min(x.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least 11x11 pixels, got {tuple(x.shape[-2:])}.")
    x, y = _to_unit(x), _to_unit(y)
    channels = x.shape[1]
    window = gaussian_window().to(x.device).expand(channels, 1, SSIM_WINDOW, SSIM_WINDOW)

    def local_mean(t: torch.Tensor) -> torch.Tensor:  # Gaussian-weighted mean per channel, valid windows only
        return F.conv2d(t, window, groups=channels)

    mu_x, mu_y = local_mean(x), local_mean(y)
    var_x = local_mean(x * x) - mu_x.pow(2)
    var_y = local_mean(y * y) - mu_y.pow(2)
    cov_xy = local_mean(x * y) - mu_x * mu_y
    c1, c2 = SSIM_K1**2, SSIM_K2**2  # (K · data range)², data range 1
    numerator = (2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)
    ssim_map = numerator / ((mu_x.pow(2) + mu_y.pow(2) + c1) * (var_x + var_y + c2))
    return ssim_map.mean(dim=(1, 2, 3))

