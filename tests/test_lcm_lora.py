"""Tests for ldm/lcm_lora.py: the LoRA student, its loss (rebuilt from stock LCMScheduler / DDIMScheduler with the
student as its own target), and the file metadata that marks an LCM-LoRA."""
import pytest
import torch

from distilling import stock_lcd_loss
from ldm.distill import distillation_loss, make_student, skipping_timesteps
from ldm.lcm_lora import LCM_LORA_TARGETS, lcm_lora_metadata, make_lora_student, read_lcm_lora
from ldm.lora import adapter_state_dict, add_lora, lora_parameters, save_lora
from ldm.objective import make_noise_scheduler
from tiny_components import TINY_HIDDEN, tiny_unet


def _inputs(seed=0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(2, 4, 8, 8, generator=generator), torch.randn(2, 3, TINY_HIDDEN, generator=generator),
            torch.tensor([700, 40]))


def test_lora_student_starts_as_the_teacher_and_trains_only_its_adapter():
    teacher = tiny_unet()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student, config = make_lora_student(teacher, rank=4, alpha=2.0, targets=",".join(LCM_LORA_TARGETS))
    x, cond, t = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(student(x, t, encoder_hidden_states=cond).sample,
                                   teacher(x, t, encoder_hidden_states=cond).sample, rtol=0, atol=0)
    trainable = [name for name, p in student.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in name or ".lora_B." in name for name in trainable)
    # Every linear and convolution, as diffusers' LCM-LoRA script: attention, feed-forward, ResNet convolutions,
    # the time-embedding projections and the down/upsamplers.
    for module in ("to_q", "ff.net.2", "proj_in", "conv1", "time_emb_proj", "downsamplers.0.conv",
                   "upsamplers.0.conv"):
        assert any(f"{module}.lora_A." in name for name in trainable), module
    assert config.r == 4 and config.lora_alpha == 2.0
    with torch.no_grad():
        for parameter in lora_parameters(student):
            parameter.normal_(std=0.1)
        moved = student(x, t, encoder_hidden_states=cond).sample
        assert (moved - teacher(x, t, encoder_hidden_states=cond).sample).abs().max() > 1e-3
    for key, value in teacher.state_dict().items():  # the teacher (the solver's model) is untouched
        assert torch.equal(value, before[key]), key


def test_lora_student_refuses_a_teacher_with_a_w_input_and_unknown_targets():
    with pytest.raises(ValueError, match="already takes a guidance embedding"):
        make_lora_student(make_student(tiny_unet(), time_cond_proj_dim=8), rank=2, alpha=None, targets="attn")
    with pytest.raises(ValueError, match="cannot attach LoRA"):
        make_lora_student(tiny_unet(), rank=2, alpha=None, targets="no_such_layer")


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_lora_loss_is_lcd_with_the_student_as_its_own_target(prediction_type):
    """Per example, from stock schedulers: the student's LCMScheduler `denoised` at t against its own (no
    gradient) at the guided teacher's DDIM point t − 20, with no timestep_cond anywhere."""
    teacher = tiny_unet()
    student, _ = make_lora_student(teacher, rank=4, alpha=4.0, targets="attn,conv")
    with torch.no_grad():
        for parameter in lora_parameters(student):
            parameter.normal_(std=0.05)  # as after some training
    noise_scheduler = make_noise_scheduler(prediction_type=prediction_type)
    grid = skipping_timesteps(num_train_timesteps=1000, num_solver_steps=50)
    generator = torch.Generator().manual_seed(5)
    latents, noise = torch.randn(2, 4, 8, 8, generator=generator), torch.randn(2, 4, 8, 8, generator=generator)
    cond, null = (torch.randn(2, 3, TINY_HIDDEN, generator=generator) for _ in range(2))
    index, w = torch.tensor([41, 6]), torch.tensor([1.5, 3.0])
    loss = distillation_loss(student=student, target=student, teacher=teacher, latents=latents, noise=noise,
                             solver_index=index, w=w, prompt_embeds=cond, null_embeds=null, solver_timesteps=grid,
                             alphas_cumprod=noise_scheduler.alphas_cumprod, prediction_type=prediction_type,
                             loss_kind="l2")
    want = stock_lcd_loss(student=student, target=student, teacher=teacher, noise_scheduler=noise_scheduler,
                          grid=grid, latents=latents, noise=noise, index=index, w=w, cond=cond, null=null)
    assert loss.item() == pytest.approx(want, rel=1e-4)
    loss.backward()
    assert all(p.grad is not None for p in lora_parameters(student))
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is None for name, p in student.named_parameters() if ".lora_" not in name)


def test_metadata_marks_an_lcm_lora_and_nothing_else(tmp_path):
    unet = tiny_unet()
    add_lora(unet, rank=2, targets=["to_q"])
    state_dict, metadata = adapter_state_dict({"unet": unet})
    facts = lcm_lora_metadata(num_inference_steps=4, original_inference_steps=50, guidance_weight_range=(1.0, 3.0),
                              teacher="runs/qs/stage2")
    for fmt in ("diffusers", "kohya"):
        path = save_lora(tmp_path / f"{fmt}.safetensors", state_dict, metadata, lora_format=fmt,
                         extra_metadata=facts)
        read = read_lcm_lora(path)
        assert read == {"scheduler": "lcm", "num_inference_steps": 4, "guidance_scale": 1.0,
                        "original_inference_steps": 50, "guidance_weight_range": [1.0, 3.0],
                        "teacher": "runs/qs/stage2"}
    assert read_lcm_lora(save_lora(tmp_path / "plain.safetensors", state_dict, metadata)) is None
    (tmp_path / "notes.safetensors").write_text("not weights")
    assert read_lcm_lora(tmp_path / "notes.safetensors") is None
    assert read_lcm_lora(tmp_path / "missing.safetensors") is None
