"""The tiny teacher and helpers that the distillation tests share (test_distill, test_distill_ldm,
test_distill_ldm_lora, test_lcm_lora)."""
import json
from pathlib import Path

import torch
from diffusers import DDIMScheduler, LCMScheduler

from ldm.objective import make_noise_scheduler
from pipelines.folder import save_pipeline_folder
from tiny_components import tiny_text_encoder, tiny_tokenizer, tiny_unet, tiny_vae

REPO = Path(__file__).resolve().parents[1]


def make_teacher(root: Path) -> Path:
    """A tiny v-prediction teacher folder whose train_config.json names 16 shapes images at 32 px."""
    tokenizer = tiny_tokenizer(root / "tokenizer_src")
    save_pipeline_folder(root / "teacher", vae=tiny_vae(), text_encoder=tiny_text_encoder(tokenizer),
                         tokenizer=tokenizer, unet=tiny_unet(),
                         scheduler=make_noise_scheduler(prediction_type="v_prediction"))
    config = {"data": "shapes", "data_size": 16, "caption_column": "text", "resolution": 32}
    (root / "teacher" / "train_config.json").write_text(json.dumps(config))
    return root / "teacher"


def distill_args(teacher, out, *extra) -> list[str]:
    return ["--teacher", str(teacher), "--output-dir", str(out), "--batch-size", "4", "--solver-steps", "10",
            "--warmup-steps", "1", "--lr", "1e-3", *extra]


def error_lines(stderr: str) -> list[str]:
    assert "Traceback" not in stderr
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def stock_lcd_loss(*, student, target, teacher, noise_scheduler, grid, latents, noise, index, w, cond, null,
                   timestep_cond=None) -> float:
    """The LCD loss (l2) rebuilt one example at a time from stock schedulers, on a 50-step solver grid: the
    student's LCMScheduler `denoised` at t against the target's at t − 20, where the teacher's guided
    DDIMScheduler step lands. `timestep_cond(b)` is example b's w embedding (None: the U-Nets take none)."""
    lcm = LCMScheduler.from_config(noise_scheduler.config, original_inference_steps=50)
    ddim = DDIMScheduler.from_config(noise_scheduler.config, set_alpha_to_one=False)
    ddim.set_timesteps(50)
    diffs = []
    for b in range(len(index)):
        t = grid[index[b]]
        x_t = noise_scheduler.add_noise(latents[b:b + 1], noise[b:b + 1], t[None])
        kwargs = {"encoder_hidden_states": cond[b:b + 1]}
        if timestep_cond is not None:
            kwargs["timestep_cond"] = timestep_cond(b)
        with torch.no_grad():
            lcm.set_timesteps(timesteps=[int(t)])
            pred = lcm.step(student(x_t, t, **kwargs).sample, t, x_t).denoised
            c = teacher(x_t, t, encoder_hidden_states=cond[b:b + 1]).sample
            u = teacher(x_t, t, encoder_hidden_states=null[b:b + 1]).sample
            x_s = ddim.step(u + (w[b] + 1) * (c - u), t, x_t, eta=0.0).prev_sample
            lcm.set_timesteps(timesteps=[int(t) - 20])
            want = lcm.step(target(x_s, t - 20, **kwargs).sample, t - 20, x_s).denoised
        diffs.append(pred - want)
    return torch.cat(diffs).pow(2).mean().item()
