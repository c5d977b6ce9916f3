"""The stage-2 training objective: noise schedule, noise, targets, min-SNR weights and the loss.

The forward process q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I) lives in diffusers' `DDPMScheduler` (`add_noise`,
`get_velocity`); this module picks its configuration and adds the few formulas the scheduler does not own. The
training step reads:

    noise = sample_noise(latents, offset_noise=...)
    noisy_latents = scheduler.add_noise(latents, noise, timesteps)
    weights = min_snr_weights(snr(scheduler, timesteps), gamma=..., prediction_type=...)
    loss = diffusion_loss(unet(noisy_latents, timesteps, prompt_embeds).sample,
                          training_target(scheduler, latents, noise, timesteps), weights)
"""
from __future__ import annotations

import logging

import torch
from diffusers import DDPMScheduler
from diffusers.utils.torch_utils import randn_tensor

logger = logging.getLogger(__name__)

# Name → (diffusers beta_schedule, beta_start, beta_end).
BETA_SCHEDULES = {
    "linear": ("linear", 1e-4, 0.02),  # DDPM (Ho et al. 2020): β linear from 1e-4 to 0.02 over T = 1000
    "scaled_linear": ("scaled_linear", 0.00085, 0.012),  # Stable Diffusion / LDM: linear in √β
    "cosine": ("squaredcos_cap_v2", 1e-4, 0.02),  # Nichol & Dhariwal 2021; beta_start/end unused
}
PREDICTION_TYPES = ("epsilon", "v_prediction")


def make_noise_scheduler(*, beta_schedule: str = "linear", prediction_type: str = "epsilon",
                         zero_terminal_snr: bool = False, num_train_timesteps: int = 1000) -> DDPMScheduler:
    """A `DDPMScheduler` for training (and, saved in the pipeline, the base config of every sampler).

    `zero_terminal_snr` rescales the betas so that ᾱ_T = 0 (Lin et al. 2023, https://arxiv.org/abs/2305.08891)
    and makes samplers use "trailing" timesteps, as that paper recommends; pair it with v-prediction.
    """
    if beta_schedule not in BETA_SCHEDULES:
        raise ValueError(f"beta_schedule must be one of {sorted(BETA_SCHEDULES)}, got {beta_schedule!r}.")
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}.")
    if num_train_timesteps < 2:
        raise ValueError(f"num_train_timesteps must be at least 2, got {num_train_timesteps}.")
    if zero_terminal_snr and prediction_type == "epsilon":
        logger.warning("zero_terminal_snr with epsilon prediction: at t = T the input is pure noise, so "
                       "predicting ε is trivial and x_0 unrecoverable; Lin et al. use v_prediction.")
    schedule, beta_start, beta_end = BETA_SCHEDULES[beta_schedule]
    return DDPMScheduler(
        num_train_timesteps=num_train_timesteps, beta_schedule=schedule, beta_start=beta_start,
        beta_end=beta_end, prediction_type=prediction_type, rescale_betas_zero_snr=zero_terminal_snr,
        clip_sample=False,  # latents are not bounded to [-1, 1]
        # Stable Diffusion's sampler spacing, unless zero-terminal SNR needs the last step to start at t = T.
        timestep_spacing="trailing" if zero_terminal_snr else "leading",
        steps_offset=0 if zero_terminal_snr else 1,
    )


def snr(scheduler: DDPMScheduler, timesteps: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio ᾱ_t / (1 − ᾱ_t) `(B,)` float32, for integer `timesteps` `(B,)` in [0, T)."""
    # ᾱ from the betas in float64: float32 ᾱ ≈ 0.9999 at small t leaves 1 − ᾱ with only ~3 correct digits.
    alphas_cumprod = torch.cumprod(1.0 - scheduler.betas.double(), dim=0)
    alpha_bar = alphas_cumprod[timesteps.long().cpu()]
    return (alpha_bar / (1.0 - alpha_bar)).to(device=timesteps.device, dtype=torch.float32)


def training_target(scheduler: DDPMScheduler, latents: torch.Tensor, noise: torch.Tensor,
                    timesteps: torch.Tensor) -> torch.Tensor:
    """What the U-Net learns to output, shaped like `latents` `(B, C, h, w)`.

    ε-prediction: the noise ε (Ho et al. 2020). v-prediction: v = √ᾱ ε − √(1−ᾱ) x_0 (Salimans & Ho 2022,
    https://arxiv.org/abs/2202.00512), computed by the scheduler.
    """
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"unsupported prediction_type {prediction_type!r}; use one of {PREDICTION_TYPES}.")


def min_snr_weights(snr_values: torch.Tensor, *, gamma: float | None, prediction_type: str,
                    floor: float | None = None) -> torch.Tensor:
    """Per-sample loss weights `(B,)` of Min-SNR-γ (Hang et al. 2023, https://arxiv.org/abs/2303.09556).

    In x0 terms the weight is clamp(SNR, floor, γ); as a weight on the ε-loss that is clamp(SNR, floor, γ) / SNR
    and on the v-loss clamp(SNR, floor, γ) / (SNR + 1). So ε: min(SNR, γ) / SNR; v: min(SNR, γ) / (SNR + 1).
    `floor` (e.g. 1: Salimans & Ho's truncated SNR) keeps the high-noise steps, where the layout is decided,
    from being weighted towards zero. `gamma=None` and `floor=None` give ones (the plain loss). Where SNR = 0
    (zero terminal SNR) the ε weight is 1.
    """
    if gamma is None and floor is None:
        return torch.ones_like(snr_values)
    if gamma is not None and gamma <= 0:
        raise ValueError(f"min-SNR gamma must be positive, got {gamma}.")
    if floor is not None and (floor <= 0 or (gamma is not None and floor > gamma)):
        raise ValueError(f"the SNR floor must be positive and at most gamma, got {floor}.")
    clipped = snr_values.clamp(min=floor, max=gamma)
    if prediction_type == "epsilon":
        return torch.where(snr_values > 0, clipped / snr_values.clamp(min=torch.finfo(snr_values.dtype).tiny),
                           torch.ones_like(snr_values))
    if prediction_type == "v_prediction":
        return clipped / (snr_values + 1.0)
    raise ValueError(f"unsupported prediction_type {prediction_type!r}; use one of {PREDICTION_TYPES}.")


def sample_noise(latents: torch.Tensor, *, offset_noise: float = 0.0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Gaussian noise shaped like `latents` `(B, C, h, w)`, plus `offset_noise` · N(0, 1) per (B, C) plane.

    Offset noise (Guttenberg 2023, https://www.crosslabs.org/blog/diffusion-with-offset-noise) lets the model
    change an image's mean brightness; 0.05–0.1 is typical, 0 turns it off.
    """
    if offset_noise < 0:
        raise ValueError(f"offset_noise must be non-negative, got {offset_noise}.")
    noise = randn_tensor(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
    if offset_noise > 0:
        offset_shape = (latents.shape[0], latents.shape[1], 1, 1)
        offset = randn_tensor(offset_shape, generator=generator, device=latents.device, dtype=latents.dtype)
        noise = noise + offset_noise * offset
    return noise


def diffusion_loss(noise_pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None
                   ) -> torch.Tensor:
    """Scalar loss: the batch mean of `weights` `(B,)` × per-sample MSE, computed in float32.

    With `weights=None` (or all ones) this is the DDPM simple loss ‖ε − ε_θ(x_t, t, y)‖², element mean.
    """
    if noise_pred.shape != target.shape:
        raise ValueError(f"noise_pred shape {tuple(noise_pred.shape)} != target shape {tuple(target.shape)}.")
    per_sample = (noise_pred.float() - target.float()).pow(2).flatten(1).mean(dim=1)
    if weights is None:
        return per_sample.mean()
    return (weights.float() * per_sample).mean()
