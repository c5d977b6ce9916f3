"""autoencoder/metrics.py: PSNR against its formula, SSIM against a numpy loop over windows (Wang 2004)."""
import math

import numpy as np
import pytest
import torch

from autoencoder.metrics import psnr, ssim


def _ssim_reference(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM of two (C, H, W) images in [0, 1]: a plain loop over every valid 11x11 window, with centred
    Gaussian-weighted moments (not the E[x²] - μ² form the module uses)."""
    offsets = np.arange(11) - 5.0
    g = np.exp(-offsets**2 / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01**2, 0.03**2
    values = []
    for channel in range(a.shape[0]):
        for i in range(a.shape[1] - 10):
            for j in range(a.shape[2] - 10):
                pa, pb = a[channel, i:i + 11, j:j + 11], b[channel, i:i + 11, j:j + 11]
                ma, mb = (w * pa).sum(), (w * pb).sum()
                va, vb = (w * (pa - ma) ** 2).sum(), (w * (pb - mb) ** 2).sum()
                cov = (w * (pa - ma) * (pb - mb)).sum()
                values.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(values))


def test_psnr_matches_the_formula():
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    y = torch.rand(3, 3, 16, 16) * 2 - 1
    unit_x, unit_y = (x.double().numpy() + 1) / 2, (y.double().numpy() + 1) / 2
    expected = [10 * math.log10(1 / np.mean((unit_x[i] - unit_y[i]) ** 2)) for i in range(3)]
    torch.testing.assert_close(psnr(x, y), torch.tensor(expected, dtype=torch.float32), rtol=1e-5, atol=1e-5)


def test_psnr_of_a_known_offset_and_of_identical_images():
    x = torch.rand(2, 3, 8, 8) - 0.5  # in [-0.5, 0.5], so +0.2 stays in range
    torch.testing.assert_close(psnr(x, x + 0.2), torch.full((2,), 20.0))  # 0.1 in [0, 1]: MSE 0.01
    assert torch.isinf(psnr(x, x)).all()


def test_ssim_matches_a_loop_over_windows():
    x = torch.rand(2, 3, 13, 14) * 2 - 1
    y = (x + 0.4 * torch.randn_like(x)).clamp(-1, 1)
    unit_x, unit_y = (x.double().numpy() + 1) / 2, (y.double().numpy() + 1) / 2
    expected = [_ssim_reference(unit_x[i], unit_y[i]) for i in range(2)]
    torch.testing.assert_close(ssim(x, y), torch.tensor(expected, dtype=torch.float32), rtol=1e-4, atol=1e-5)


def test_ssim_identity_symmetry_and_order():
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    torch.testing.assert_close(ssim(x, x), torch.ones(2))
    small, large = x + 0.05 * torch.randn_like(x), x + 0.5 * torch.randn_like(x)
    torch.testing.assert_close(ssim(x, large), ssim(large, x))
    assert (ssim(x, small) > ssim(x, large)).all()


def test_ssim_rejects_images_smaller_than_the_window():
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))
