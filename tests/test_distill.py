"""Tests for ldm/distill.py against stock diffusers (LCMScheduler, DDIMScheduler, StableDiffusionPipeline's w
embedding) and formulas written out here."""
import math

import pytest
import torch
from diffusers import DDIMScheduler, LCMScheduler, StableDiffusionPipeline

from distilling import stock_lcd_loss
from ldm.distill import (boundary_scalings, consistency_function, consistency_loss, ddim_step, distillation_loss,
                         guidance_embedding, guided_teacher_step, make_student, skipping_timesteps,
                         timestep_condition, update_target, x0_and_eps)
from ldm.objective import make_noise_scheduler
from tiny_components import TINY_HIDDEN, tiny_unet

PREDICTION_TYPES = ("epsilon", "v_prediction")


def _lcm(prediction_type="epsilon", original_steps=50) -> LCMScheduler:
    base = make_noise_scheduler(prediction_type=prediction_type)
    return LCMScheduler.from_config(base.config, original_inference_steps=original_steps)


@pytest.mark.parametrize("dim", [256, 33])
def test_guidance_embedding_matches_stock_and_the_formula(dim):
    w = torch.tensor([0.0, 0.5, 3.0, 7.5])
    ours = guidance_embedding(w, dim=dim)
    stock = StableDiffusionPipeline.get_guidance_scale_embedding(None, w, embedding_dim=dim)
    torch.testing.assert_close(ours, stock, rtol=0, atol=0)
    half = dim // 2
    i = 5
    angle = 1000.0 * 3.0 * 10000.0 ** (-i / (half - 1))
    assert ours[2, i].item() == pytest.approx(math.sin(angle), abs=1e-3)
    assert ours[2, half + i].item() == pytest.approx(math.cos(angle), abs=1e-3)
    assert ours.shape == (4, dim) and (dim % 2 == 0 or ours[:, -1].abs().max() == 0)


def test_timestep_condition_embeds_guidance_scale_minus_one_and_only_for_distilled_unets():
    plain = tiny_unet()
    assert timestep_condition(plain, 3.0, 2, device="cpu", dtype=torch.float32) is None
    student = make_student(plain, time_cond_proj_dim=64)
    cond = timestep_condition(student, 3.0, 2, device="cpu", dtype=torch.float32)
    torch.testing.assert_close(cond, guidance_embedding(torch.tensor([2.0, 2.0]), dim=64))


def test_skipping_grid_is_the_one_lcm_scheduler_samples_from():
    grid = skipping_timesteps(num_train_timesteps=1000, num_solver_steps=50)
    assert grid.tolist() == [20 * n - 1 for n in range(1, 51)]
    scheduler = _lcm(original_steps=50)
    for steps in (1, 2, 4, 8):
        scheduler.set_timesteps(steps)
        assert set(scheduler.timesteps.tolist()) <= set(grid.tolist())
    scheduler.set_timesteps(50)
    assert sorted(scheduler.timesteps.tolist()) == grid.tolist()
    with pytest.raises(ValueError, match="num_solver_steps"):
        skipping_timesteps(num_train_timesteps=1000, num_solver_steps=0)


def test_boundary_scalings_match_lcm_scheduler_and_the_boundary_condition():
    timesteps = torch.tensor([0, 1, 19, 499, 999])
    c_skip, c_out = boundary_scalings(timesteps)
    scheduler = _lcm()
    for t, skip, out in zip(timesteps.tolist(), c_skip.tolist(), c_out.tolist()):
        want_skip, want_out = scheduler.get_scalings_for_boundary_condition_discrete(t)
        assert skip == pytest.approx(want_skip, rel=1e-6) and out == pytest.approx(want_out, rel=1e-6)
    assert c_skip[0] == 1.0 and c_out[0] == 0.0  # f(x, 0) = x
    torch.testing.assert_close(c_skip + c_out ** 2, torch.ones(5))  # σ_d²/(u²+σ_d²) + u²/(u²+σ_d²)


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_x0_and_eps_invert_the_forward_process(prediction_type):
    scheduler = make_noise_scheduler(prediction_type=prediction_type)
    generator = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 4, 8, 8, generator=generator), torch.randn(3, 4, 8, 8, generator=generator)
    t = torch.tensor([10, 400, 990])
    x_t = scheduler.add_noise(x0, eps, t)
    output = eps if prediction_type == "epsilon" else scheduler.get_velocity(x0, eps, t)
    got_x0, got_eps = x0_and_eps(output, x_t, scheduler.alphas_cumprod[t], prediction_type=prediction_type)
    torch.testing.assert_close(got_x0, x0, atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(got_eps, eps, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_consistency_function_is_lcm_schedulers_denoised(prediction_type):
    scheduler = _lcm(prediction_type)
    scheduler.set_timesteps(4)
    generator = torch.Generator().manual_seed(1)
    sample, output = torch.randn(2, 4, 8, 8, generator=generator), torch.randn(2, 4, 8, 8, generator=generator)
    for i, t in enumerate(scheduler.timesteps):
        denoised = scheduler.step(output, t, sample, generator=generator).denoised
        ours = consistency_function(output, sample, t.repeat(2), alphas_cumprod=scheduler.alphas_cumprod,
                                    prediction_type=prediction_type)
        torch.testing.assert_close(ours, denoised, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_guided_teacher_step_is_a_guided_ddim_step(prediction_type):
    """Per example: two separate U-Net calls, ε̄ = u + (w+1)(c − u), then stock DDIMScheduler.step t → t − k."""
    teacher = tiny_unet()
    alphas_cumprod = make_noise_scheduler(prediction_type=prediction_type).alphas_cumprod
    ddim = DDIMScheduler.from_config(make_noise_scheduler(prediction_type=prediction_type).config,
                                     set_alpha_to_one=False)
    ddim.set_timesteps(50)  # prev_timestep = t − 1000 // 50
    generator = torch.Generator().manual_seed(2)
    x_t = torch.randn(2, 4, 8, 8, generator=generator)
    cond, null = torch.randn(2, 3, TINY_HIDDEN, generator=generator), torch.randn(2, 3, TINY_HIDDEN,
                                                                                generator=generator)
    t, w = torch.tensor([979, 219]), torch.tensor([0.5, 3.0])
    ours = guided_teacher_step(teacher, x_t, t, t - 20, prompt_embeds=cond, null_embeds=null, w=w,
                               alphas_cumprod=alphas_cumprod, prediction_type=prediction_type)
    for b in range(2):
        with torch.no_grad():
            c = teacher(x_t[b:b + 1], t[b], encoder_hidden_states=cond[b:b + 1]).sample
            u = teacher(x_t[b:b + 1], t[b], encoder_hidden_states=null[b:b + 1]).sample
        guided = u + (w[b] + 1) * (c - u)
        want = ddim.step(guided, t[b], x_t[b:b + 1], eta=0.0).prev_sample
        torch.testing.assert_close(ours[b:b + 1], want, atol=1e-5, rtol=1e-5)


def test_ddim_step_to_time_zero_uses_alpha_bar_zero():
    x0, eps = torch.ones(1, 4, 2, 2), torch.full((1, 4, 2, 2), 2.0)
    a = torch.tensor([0.9])
    torch.testing.assert_close(ddim_step(x0, eps, a), math.sqrt(0.9) * x0 + math.sqrt(0.1) * eps)


def test_consistency_loss_formulas():
    pred, target = torch.tensor([0.0, 1e-4, 3.0]), torch.zeros(3)
    c = 1e-3
    want = sum(math.sqrt(d * d + c * c) - c for d in (0.0, 1e-4, 3.0)) / 3
    assert consistency_loss(pred, target, huber_c=c).item() == pytest.approx(want, rel=1e-5)
    assert consistency_loss(pred, target, kind="l2").item() == pytest.approx((1e-8 + 9.0) / 3, rel=1e-6)
    with pytest.raises(ValueError, match="huber or l2"):
        consistency_loss(pred, target, kind="l1")


def test_update_target_is_a_fixed_decay_ema():
    online, target = tiny_unet(seed=0), tiny_unet(seed=1)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    update_target(target, online, decay=0.9)
    for key, value in target.state_dict().items():
        torch.testing.assert_close(value, 0.9 * before[key] + 0.1 * online.state_dict()[key])


def test_student_starts_as_the_teacher_and_w_reaches_it():
    teacher = tiny_unet()
    student = make_student(teacher, time_cond_proj_dim=32)
    assert student.config.time_cond_proj_dim == 32
    generator = torch.Generator().manual_seed(3)
    x, cond = torch.randn(2, 4, 8, 8, generator=generator), torch.randn(2, 3, TINY_HIDDEN, generator=generator)
    t, w_cond = torch.tensor([500, 20]), guidance_embedding(torch.tensor([1.0, 6.0]), dim=32)
    with torch.no_grad():
        want = teacher(x, t, encoder_hidden_states=cond).sample
        torch.testing.assert_close(student(x, t, encoder_hidden_states=cond, timestep_cond=w_cond).sample, want,
                                   rtol=0, atol=0)
        torch.nn.init.normal_(student.time_embedding.cond_proj.weight, std=0.1)
        moved = student(x, t, encoder_hidden_states=cond, timestep_cond=w_cond).sample
    assert (moved - want).abs().max() > 1e-3
    with pytest.raises(ValueError, match="already takes a guidance embedding"):
        make_student(student)


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_distillation_loss_against_stock_schedulers(prediction_type):
    """The whole step rebuilt per example from LCMScheduler (f_θ, f_θ⁻) and DDIMScheduler (the solver step)."""
    teacher = tiny_unet()
    student, target = make_student(teacher, time_cond_proj_dim=16), make_student(teacher, time_cond_proj_dim=16)
    torch.nn.init.normal_(student.time_embedding.cond_proj.weight, std=0.05)
    # target ≠ student, as after some training
    update_target(target, make_student(tiny_unet(seed=4), time_cond_proj_dim=16), decay=0.5)
    noise_scheduler = make_noise_scheduler(prediction_type=prediction_type)
    grid = skipping_timesteps(num_train_timesteps=1000, num_solver_steps=50)
    generator = torch.Generator().manual_seed(5)
    latents, noise = torch.randn(2, 4, 8, 8, generator=generator), torch.randn(2, 4, 8, 8, generator=generator)
    cond, null = torch.randn(2, 3, TINY_HIDDEN, generator=generator), torch.randn(2, 3, TINY_HIDDEN,
                                                                                generator=generator)
    index, w = torch.tensor([37, 3]), torch.tensor([2.0, 0.25])
    loss = distillation_loss(student=student, target=target, teacher=teacher, latents=latents, noise=noise,
                             solver_index=index, w=w, prompt_embeds=cond, null_embeds=null, solver_timesteps=grid,
                             alphas_cumprod=noise_scheduler.alphas_cumprod, prediction_type=prediction_type,
                             loss_kind="l2")
    want = stock_lcd_loss(student=student, target=target, teacher=teacher, noise_scheduler=noise_scheduler,
                          grid=grid, latents=latents, noise=noise, index=index, w=w, cond=cond, null=null,
                          timestep_cond=lambda b: guidance_embedding(w[b:b + 1], dim=16))
    assert loss.item() == pytest.approx(want, rel=1e-4)
    loss.backward()
    assert student.time_embedding.cond_proj.weight.grad is not None
    assert all(p.grad is None for p in list(target.parameters()) + list(teacher.parameters()))
