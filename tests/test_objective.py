"""Tests for ldm/objective.py against formulas computed here from the betas, independently of diffusers."""
import math

import pytest
import torch

from ldm.objective import (diffusion_loss, make_noise_scheduler, min_snr_weights, sample_noise, snr,
                           training_target)

T = 1000


def _alpha_bar(betas: torch.Tensor) -> torch.Tensor:
    return torch.cumprod(1.0 - betas.double(), dim=0)


def test_default_schedule_is_ddpm_linear():
    scheduler = make_noise_scheduler()
    betas = torch.linspace(1e-4, 0.02, T, dtype=torch.float64)  # Ho et al. 2020
    assert scheduler.config.num_train_timesteps == T and scheduler.config.prediction_type == "epsilon"
    torch.testing.assert_close(scheduler.alphas_cumprod.double(), _alpha_bar(betas), rtol=1e-5, atol=1e-7)


def test_scaled_linear_and_cosine_schedules():
    scaled = make_noise_scheduler(beta_schedule="scaled_linear")
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, T, dtype=torch.float64) ** 2
    torch.testing.assert_close(scaled.alphas_cumprod.double(), _alpha_bar(betas), rtol=1e-5, atol=1e-7)
    cosine = make_noise_scheduler(beta_schedule="cosine")
    # Nichol & Dhariwal 2021: ᾱ(t) = f(t)/f(0), f(t) = cos²((t/T + s)/(1 + s) · π/2), s = 0.008, β ≤ 0.999.
    f = [math.cos((t / T + 0.008) / 1.008 * math.pi / 2) ** 2 for t in range(T + 1)]
    want = torch.tensor([min(1 - f[t + 1] / f[t], 0.999) for t in range(T)], dtype=torch.float64)
    torch.testing.assert_close(cosine.betas.double(), want, rtol=1e-4, atol=1e-6)


def test_zero_terminal_snr_reaches_zero():
    scheduler = make_noise_scheduler(beta_schedule="scaled_linear", prediction_type="v_prediction",
                                     zero_terminal_snr=True)
    assert scheduler.alphas_cumprod[-1].item() == 0.0
    assert scheduler.alphas_cumprod[0].item() > 0.99 and scheduler.config.timestep_spacing == "trailing"
    assert snr(scheduler, torch.tensor([T - 1])).item() == 0.0
    plain = make_noise_scheduler(beta_schedule="scaled_linear")
    assert plain.alphas_cumprod[-1].item() > 0.0


@pytest.mark.parametrize("option", [dict(beta_schedule="sigmoid"), dict(prediction_type="sample"),
                                    dict(num_train_timesteps=1)])
def test_bad_options_raise(option):
    with pytest.raises(ValueError):
        make_noise_scheduler(**option)


def test_snr_and_forward_process_match_formulas():
    scheduler = make_noise_scheduler()
    alpha_bar = _alpha_bar(torch.linspace(1e-4, 0.02, T, dtype=torch.float64))
    timesteps = torch.tensor([0, 10, 499, 999])
    torch.testing.assert_close(snr(scheduler, timesteps).double(),
                               alpha_bar[timesteps] / (1 - alpha_bar[timesteps]), rtol=1e-4, atol=0)
    latents, noise = torch.randn(4, 4, 8, 8), torch.randn(4, 4, 8, 8)
    a = alpha_bar[timesteps].float().view(-1, 1, 1, 1)
    want = a.sqrt() * latents + (1 - a).sqrt() * noise  # x_t = √ᾱ x0 + √(1−ᾱ) ε
    torch.testing.assert_close(scheduler.add_noise(latents, noise, timesteps), want, rtol=1e-5, atol=1e-5)


def test_training_targets():
    latents, noise, timesteps = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8), torch.tensor([5, 300, 900])
    eps = make_noise_scheduler(prediction_type="epsilon")
    assert torch.equal(training_target(eps, latents, noise, timesteps), noise)
    v_sched = make_noise_scheduler(prediction_type="v_prediction", beta_schedule="scaled_linear")
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, T, dtype=torch.float64) ** 2
    a = _alpha_bar(betas)[timesteps].float().view(-1, 1, 1, 1)
    want = a.sqrt() * noise - (1 - a).sqrt() * latents  # v = √ᾱ ε − √(1−ᾱ) x0
    got = training_target(v_sched, latents, noise, timesteps)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_min_snr_weights():
    snr_values = torch.tensor([0.0, 0.5, 5.0, 50.0])
    eps = min_snr_weights(snr_values, gamma=5.0, prediction_type="epsilon")
    v = min_snr_weights(snr_values, gamma=5.0, prediction_type="v_prediction")
    torch.testing.assert_close(eps, torch.tensor([1.0, 1.0, 1.0, 5.0 / 50.0]))
    torch.testing.assert_close(v, torch.tensor([0.0, 0.5 / 1.5, 5.0 / 6.0, 5.0 / 51.0]))
    assert torch.equal(min_snr_weights(snr_values, gamma=None, prediction_type="epsilon"), torch.ones(4))
    with pytest.raises(ValueError):
        min_snr_weights(snr_values, gamma=5.0, prediction_type="sample")


def test_snr_floor_weights():
    """clamp(SNR, floor, γ) in x0 terms, divided by SNR + 1 (v) or SNR (ε); checked value by value."""
    snr_values = torch.tensor([0.0, 0.25, 2.0, 50.0])
    v = min_snr_weights(snr_values, gamma=5.0, prediction_type="v_prediction", floor=1.0)
    torch.testing.assert_close(v, torch.tensor([1.0 / 1.0, 1.0 / 1.25, 2.0 / 3.0, 5.0 / 51.0]))
    eps = min_snr_weights(snr_values, gamma=5.0, prediction_type="epsilon", floor=1.0)
    torch.testing.assert_close(eps, torch.tensor([1.0, 1.0 / 0.25, 1.0, 5.0 / 50.0]))
    floor_only = min_snr_weights(snr_values, gamma=None, prediction_type="v_prediction", floor=0.5)
    torch.testing.assert_close(floor_only, torch.tensor([0.5, 0.5 / 1.25, 2.0 / 3.0, 50.0 / 51.0]))
    for bad in (0.0, 6.0):
        with pytest.raises(ValueError):
            min_snr_weights(snr_values, gamma=5.0, prediction_type="v_prediction", floor=bad)


def test_sample_noise_offset_and_reproducibility():
    latents = torch.zeros(512, 4, 8, 8)
    plain = sample_noise(latents, generator=torch.Generator().manual_seed(0))
    assert torch.equal(plain, sample_noise(latents, generator=torch.Generator().manual_seed(0)))
    offset = sample_noise(latents, offset_noise=0.5, generator=torch.Generator().manual_seed(0))
    assert offset.shape == latents.shape
    # Offset noise adds the same N(0, 0.5²) value to every pixel of a (sample, channel): the per-channel means
    # vary with std ≈ √(0.5² + 1/64) instead of √(1/64) = 0.125.
    channel_means = offset.mean(dim=(2, 3))
    assert abs(channel_means.std().item() - math.sqrt(0.25 + 1 / 64)) < 0.05
    assert abs(plain.mean(dim=(2, 3)).std().item() - 0.125) < 0.02
    # Same seed: the per-pixel part is the same draw, so the difference is constant over each (h, w) plane.
    diff = offset - plain
    torch.testing.assert_close(diff, diff[..., :1, :1].expand_as(diff))


def test_diffusion_loss_is_weighted_mean_of_per_sample_mse():
    noise_pred, target = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    weights = torch.tensor([1.0, 0.0, 2.0])
    per_sample = [((noise_pred[i] - target[i]) ** 2).mean() for i in range(3)]
    want = (per_sample[0] + 2 * per_sample[2]) / 3
    torch.testing.assert_close(diffusion_loss(noise_pred, target, weights), want)
    torch.testing.assert_close(diffusion_loss(noise_pred, target, None),
                               torch.nn.functional.mse_loss(noise_pred, target))
    with pytest.raises(ValueError):
        diffusion_loss(noise_pred, target[:2], None)
