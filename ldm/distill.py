"""Latent consistency distillation (LCD): the maths of a few-step student distilled from a guided teacher.

Luo et al. 2023, "Latent Consistency Models" (https://arxiv.org/abs/2310.04378), Algorithm 1, with the
guidance weight w as a student input. The solver works on the skipping grid τ_n = (n + 1)·k − 1, n = 0 … N−1,
k = T // N (`skipping_timesteps`), the grid `LCMScheduler` samples from with `original_inference_steps` = N.
One training step, per example:

    n ~ U{0 … N−1}, w ~ U[w_min, w_max]              # ε̄ = (1 + w)·ε(x, y) − w·ε(x), as ldm.guidance
    t, s = τ_n, max(τ_n − k, 0)
    x_t = √ᾱ_t·x_0 + √(1 − ᾱ_t)·ε                    # scheduler.add_noise
    x̂_s = DDIM step of the guided teacher from (x_t, t) to s     # guided_teacher_step (no gradient)
    pred   = f_θ(x_t, t, w)  = c_skip(t)·x_t + c_out(t)·x̂_0,θ   # consistency_function, LCM eq. 9
    target = f_θ⁻(x̂_s, s, w)                          # the EMA target network θ⁻ (no gradient)
    loss   = pseudo-Huber(pred − target)               # consistency_loss
    θ⁻ ← μ·θ⁻ + (1 − μ)·θ after the optimizer step     # update_target

`distillation_loss` is that step. w reaches the student as `timestep_cond = guidance_embedding(w)`, a
`UNet2DConditionModel(time_cond_proj_dim=d)` input (`make_student`); `timestep_condition` gives the sampler the
same embedding, the way stock `StableDiffusionPipeline` does.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel

from ldm.guidance import apply_guidance, cfg_batch, guidance_scale_from_weight

TIME_COND_PROJ_DIM = 256  # width of the w embedding (diffusers' LCM distillation script's default)
SIGMA_DATA = 0.5  # σ_data of the boundary scalings (Song et al. 2023, consistency models, Appendix C)
TIMESTEP_SCALING = 10.0  # c_skip(0) = 1 and c_skip ≈ 0 from t = 1 on (LCMScheduler's default)


def guidance_embedding(w: torch.Tensor, *, dim: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Sinusoidal embedding `(B, dim)` of guidance weights `w` `(B,)` (w = guidance_scale − 1).

    The VDM timestep embedding (Kingma et al. 2021, model_vdm.py) of 1000·w, half sines then half cosines at
    frequencies 10000^(−i / (dim/2 − 1)), zero-padded when `dim` is odd; LCM (Luo et al. 2023, § 4.2) feeds it to
    the U-Net's time embedding, and stock `StableDiffusionPipeline.get_guidance_scale_embedding` gives the same
    vectors for guidance_scale − 1.
    """
    if w.ndim != 1:
        raise ValueError(f"w must be a 1-D tensor of guidance weights, got shape {tuple(w.shape)}.")
    half = dim // 2
    frequencies = torch.exp(torch.arange(half, dtype=dtype) * -(math.log(10000.0) / (half - 1)))
    angles = (w.to(dtype) * 1000.0)[:, None] * frequencies.to(w.device)[None, :]
    embedding = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    return F.pad(embedding, (0, dim % 2))


def uses_guidance_embedding(unet) -> bool:
    """True for a guidance-distilled U-Net: it takes w through `timestep_cond` and needs no ε(x) branch."""
    return getattr(unet.config, "time_cond_proj_dim", None) is not None


def timestep_condition(unet, guidance_scale: float, batch_size: int, *, device, dtype) -> torch.Tensor | None:
    """The sampler's `timestep_cond` `(batch_size, d)` for `guidance_scale` = w + 1, or None for a U-Net without
    `time_cond_proj_dim` (stock `StableDiffusionPipeline.__call__` step 6.2 embeds guidance_scale − 1 the same way)."""
    if not uses_guidance_embedding(unet):
        return None
    w = torch.full((batch_size,), float(guidance_scale) - 1.0)
    return guidance_embedding(w, dim=unet.config.time_cond_proj_dim).to(device=device, dtype=dtype)


def skipping_timesteps(*, num_train_timesteps: int, num_solver_steps: int) -> torch.Tensor:
    """The solver grid τ_n = (n + 1)·k − 1, n = 0 … N−1, k = T // N: LongTensor `(N,)`, ascending.

    LCM's skipping-step schedule (Luo et al. 2023, § 4.3); `LCMScheduler.set_timesteps` picks its inference
    timesteps from exactly this grid when `original_inference_steps` = N.
    """
    if not 1 <= num_solver_steps <= num_train_timesteps:
        raise ValueError(f"num_solver_steps must be in [1, {num_train_timesteps}], got {num_solver_steps}.")
    k = num_train_timesteps // num_solver_steps
    return torch.arange(1, num_solver_steps + 1) * k - 1


def boundary_scalings(timesteps: torch.Tensor, *, timestep_scaling: float = TIMESTEP_SCALING,
                      sigma_data: float = SIGMA_DATA) -> tuple[torch.Tensor, torch.Tensor]:
    """(c_skip, c_out), each float `(B,)`, for integer `timesteps` `(B,)`.

    Song et al. 2023 (consistency models, eq. 7 with ε = 0) on the scaled time u = timestep_scaling·t:
    c_skip = σ_d² / (u² + σ_d²), c_out = u / √(u² + σ_d²), so f(x, 0) = x (the boundary condition); LCM eq. 9 and
    `LCMScheduler.get_scalings_for_boundary_condition_discrete`.
    """
    u = timesteps.double() * timestep_scaling
    c_skip = sigma_data ** 2 / (u ** 2 + sigma_data ** 2)
    c_out = u / (u ** 2 + sigma_data ** 2).sqrt()
    return c_skip.float(), c_out.float()


def _per_example(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`(B,)` → `(B, 1, 1, 1)` on `like`'s device and dtype, to scale a batch of latents."""
    return values.to(device=like.device, dtype=like.dtype).view(-1, *([1] * (like.ndim - 1)))


def x0_and_eps(model_output: torch.Tensor, sample: torch.Tensor, alpha_bar: torch.Tensor, *,
               prediction_type: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(x̂_0, ε̂) `(B, C, h, w)` from a U-Net output at noisy `sample` x_t, with ᾱ_t `alpha_bar` `(B,)`.

    x_t = √ᾱ·x_0 + √(1−ᾱ)·ε; v = √ᾱ·ε − √(1−ᾱ)·x_0 (Salimans & Ho 2022, § 4), so x_0 = √ᾱ·x_t − √(1−ᾱ)·v and
    ε = √(1−ᾱ)·x_t + √ᾱ·v.
    """
    a, s = _per_example(alpha_bar.sqrt(), sample), _per_example((1 - alpha_bar).sqrt(), sample)
    if prediction_type == "epsilon":
        return (sample - s * model_output) / a, model_output
    if prediction_type == "v_prediction":
        return a * sample - s * model_output, s * sample + a * model_output
    raise ValueError(f"prediction_type must be epsilon or v_prediction, got {prediction_type!r}.")


def consistency_function(model_output: torch.Tensor, sample: torch.Tensor, timesteps: torch.Tensor, *,
                         alphas_cumprod: torch.Tensor, prediction_type: str,
                         timestep_scaling: float = TIMESTEP_SCALING) -> torch.Tensor:
    """f(x_t, t) = c_skip(t)·x_t + c_out(t)·x̂_0 `(B, C, h, w)` (LCM eq. 9): what `LCMScheduler.step` returns as
    `denoised` for the same U-Net output, timesteps `(B,)` and ᾱ table `alphas_cumprod` `(T,)`."""
    x0, _ = x0_and_eps(model_output, sample, alphas_cumprod[timesteps.cpu()], prediction_type=prediction_type)
    c_skip, c_out = boundary_scalings(timesteps.cpu(), timestep_scaling=timestep_scaling)
    return _per_example(c_skip, sample) * sample + _per_example(c_out, sample) * x0


def ddim_step(x0: torch.Tensor, eps: torch.Tensor, alpha_bar_prev: torch.Tensor) -> torch.Tensor:
    """Deterministic DDIM (Song et al. 2021, eq. 12, η = 0) to the earlier time s: √ᾱ_s·x̂_0 + √(1−ᾱ_s)·ε̂."""
    return _per_example(alpha_bar_prev.sqrt(), x0) * x0 + _per_example((1 - alpha_bar_prev).sqrt(), x0) * eps


@torch.no_grad()
def guided_teacher_step(teacher, noisy_latents: torch.Tensor, timesteps: torch.Tensor,
                        prev_timesteps: torch.Tensor, *, prompt_embeds: torch.Tensor, null_embeds: torch.Tensor,
                        w: torch.Tensor, alphas_cumprod: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """x̂_s `(B, C, h, w)`: one DDIM step of the teacher guided at per-example weights `w` `(B,)` from x_t at
    `timesteps` `(B,)` to `prev_timesteps` `(B,)` (LCM Algorithm 1's Ψ with guidance, eq. 12).

    One teacher call on the `[uncond, cond]` batch (ldm.guidance). x̂_0 and ε̂ are linear in the U-Net output for
    both prediction types, so guiding the output equals guiding x̂_0 and ε̂ separately as the LCM script does.
    """
    output = teacher(cfg_batch(noisy_latents, noisy_latents), timesteps.repeat(2),
                     encoder_hidden_states=cfg_batch(null_embeds, prompt_embeds)).sample
    guidance_scale = _per_example(guidance_scale_from_weight(0.0) + w, noisy_latents)
    output = apply_guidance(output, guidance_scale)
    x0, eps = x0_and_eps(output, noisy_latents, alphas_cumprod[timesteps.cpu()], prediction_type=prediction_type)
    return ddim_step(x0, eps, alphas_cumprod[prev_timesteps.cpu()])


def consistency_loss(pred: torch.Tensor, target: torch.Tensor, *, kind: str = "huber",
                     huber_c: float = 1e-3) -> torch.Tensor:
    """Scalar mean over all elements: pseudo-Huber √(d² + c²) − c (Song & Dhariwal 2023, improved consistency
    training, § 3.3; the LCM script's default) or L2 d², with d = pred − target."""
    diff = pred.float() - target.float()
    if kind == "huber":
        return (torch.sqrt(diff ** 2 + huber_c ** 2) - huber_c).mean()
    if kind == "l2":
        return (diff ** 2).mean()
    raise ValueError(f"loss kind must be huber or l2, got {kind!r}.")


@torch.no_grad()
def update_target(target: torch.nn.Module, online: torch.nn.Module, *, decay: float) -> None:
    """θ⁻ ← μ·θ⁻ + (1 − μ)·θ in place, μ = `decay` fixed (LCM Algorithm 1; a plain EMA with no warm-up ramp,
    unlike diffusers' `EMAModel`, whose decay starts near 0)."""
    targets, onlines = list(target.parameters()), list(online.parameters())
    torch._foreach_lerp_(targets, [p.detach() for p in onlines], 1.0 - decay)


def make_student(teacher: UNet2DConditionModel, *, time_cond_proj_dim: int = TIME_COND_PROJ_DIM
                 ) -> UNet2DConditionModel:
    """The teacher's U-Net plus a w input: its config with `time_cond_proj_dim`, its weights, and the new
    projection `time_embedding.cond_proj` zero-initialised, so the student starts as exactly the teacher."""
    if uses_guidance_embedding(teacher):
        raise ValueError("the teacher U-Net already takes a guidance embedding (time_cond_proj_dim is set).")
    student = UNet2DConditionModel.from_config(teacher.config, time_cond_proj_dim=time_cond_proj_dim)
    missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
    if missing != ["time_embedding.cond_proj.weight"] or unexpected:
        raise ValueError(f"student and teacher differ beyond the w projection: missing {missing}, "
                         f"unexpected {unexpected}.")
    torch.nn.init.zeros_(student.time_embedding.cond_proj.weight)
    if student.dtype != teacher.dtype:
        student.to(teacher.dtype)
    return student.to(teacher.device)


def distillation_loss(*, student, target, teacher, latents: torch.Tensor, noise: torch.Tensor,
                      solver_index: torch.Tensor, w: torch.Tensor, prompt_embeds: torch.Tensor,
                      null_embeds: torch.Tensor, solver_timesteps: torch.Tensor, alphas_cumprod: torch.Tensor,
                      prediction_type: str, loss_kind: str = "huber", huber_c: float = 1e-3) -> torch.Tensor:
    """The LCD loss (scalar) of one batch: the module docstring's step. `target` may be the (unwrapped)
    `student` itself: the LCM-LoRA variant's stop-gradient target (`ldm.lcm_lora`).

    latents, noise `(B, C, h, w)` (scaled latents, standard normal); solver_index `(B,)` in [0, N) into
    `solver_timesteps` `(N,)`; w `(B,)`; prompt_embeds `(B, L, D)`; null_embeds `(B, L, D)` (the ε(x) condition);
    alphas_cumprod `(T,)` on the CPU.
    """
    skip = int(solver_timesteps[0]) + 1
    timesteps = solver_timesteps[solver_index.cpu()]
    prev_timesteps = (timesteps - skip).clamp(min=0)
    device = latents.device
    alpha_bar = _per_example(alphas_cumprod[timesteps], latents)
    noisy = alpha_bar.sqrt() * latents + (1 - alpha_bar).sqrt() * noise
    # The target's config: the student may come wrapped (DDP) without one. An LCM-LoRA student
    # (`ldm.lcm_lora`) has no w input: w then only guides the teacher, and the adapter learns that guidance.
    w_cond = (guidance_embedding(w.cpu(), dim=target.config.time_cond_proj_dim).to(device, latents.dtype)
              if uses_guidance_embedding(target) else None)
    common = {"alphas_cumprod": alphas_cumprod, "prediction_type": prediction_type}

    output = student(noisy, timesteps.to(device), encoder_hidden_states=prompt_embeds, timestep_cond=w_cond).sample
    pred = consistency_function(output, noisy, timesteps, **common)
    x_prev = guided_teacher_step(teacher, noisy, timesteps.to(device), prev_timesteps.to(device),
                                 prompt_embeds=prompt_embeds, null_embeds=null_embeds, w=w.to(device), **common)
    with torch.no_grad():
        target_output = target(x_prev, prev_timesteps.to(device), encoder_hidden_states=prompt_embeds,
                               timestep_cond=w_cond).sample
        target_value = consistency_function(target_output, x_prev, prev_timesteps, **common)
    return consistency_loss(pred, target_value, kind=loss_kind, huber_c=huber_c)
