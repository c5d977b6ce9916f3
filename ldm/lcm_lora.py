"""LCM-LoRA: latent consistency distillation into a LoRA adapter on the frozen teacher U-Net.

Luo et al. 2023, "LCM-LoRA: A Universal Stable-Diffusion Acceleration Module" (arXiv:2311.05556): the student is
the teacher's own U-Net plus a low-rank adapter, trained with the LCD loss of `ldm.distill` (Algorithm 1 of the
LCM paper). What differs from the full student (`ldm.distill.make_student`):
- No w input. The teacher U-Net has no `timestep_cond` projection and the adapter adds none, so the guidance
  weight w, drawn per example from [w_min, w_max] for the teacher's guided DDIM step as before, is folded into
  the adapter's weights; one sampler call per step without classifier-free guidance (guidance_scale 1) draws
  at that guidance. diffusers' `train_lcm_distill_lora_sd_wds.py` does the same (`timestep_cond=None`).
- No EMA target network: the target f_θ⁻ is the online student itself under stop-gradient (μ = 0), as in the
  diffusers LoRA script ("we do not use a separate target network for LCM-LoRA distillation"). Why we keep
  that: the adapter starts at zero, so an EMA of it lags an adapter that is itself a small, slowly moving
  correction; a second full U-Net copy would also double the memory the adapter was meant to save, and the
  file then holds everything needed to resume without a target state.

The adapter file is `ldm.lora`'s diffusers format (stock `load_lora_weights` reads it) with one more metadata
entry, `LCM_LORA_KEY`, saying that it is an LCM-LoRA and how to sample with it (`lcm_lora_metadata`);
`ldm-generate` / `ldm-eval` / `ldm-serve` read it through `read_lcm_lora` for their few-step defaults.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from peft import LoraConfig
from safetensors import SafetensorError, safe_open

from ldm.distill import uses_guidance_embedding
from ldm.lora import add_lora, resolve_targets

LCM_LORA_KEY = "ldm_lcm_lora"  # safetensors metadata entry: JSON of the sampling facts below
# diffusers' LCM-LoRA script adapts every linear and convolution of the U-Net (its default target list).
LCM_LORA_TARGETS = ("attn", "ff", "proj", "conv", "time_emb_proj", "downsamplers.0.conv", "upsamplers.0.conv")
LCM_LORA_STEPS = 4  # the steps diffusers' LCM-LoRA examples sample with (the paper shows 1–8)
LCM_LORA_SOLVER_STEPS = 50  # the grid a stock LCMScheduler samples from (original_inference_steps)


def make_lora_student(teacher: torch.nn.Module, *, rank: int, alpha: float | None,
                      targets: str) -> tuple[torch.nn.Module, LoraConfig]:
    """(student, its LoraConfig): a copy of the frozen `teacher` U-Net with a trainable adapter on `targets`
    (comma-separated module names or groups, `ldm.lora.resolve_targets`). B starts at zero, so the student
    starts exactly as the teacher. The teacher itself stays untouched (it is the ODE solver's model)."""
    if uses_guidance_embedding(teacher):
        raise ValueError("the teacher U-Net already takes a guidance embedding (time_cond_proj_dim is set); "
                         "an LCM-LoRA adapts a plain teacher.")
    student = copy.deepcopy(teacher)
    config = add_lora(student, rank=rank, alpha=alpha, targets=resolve_targets(targets.split(",")))
    return student, config


def lcm_lora_metadata(*, num_inference_steps: int, original_inference_steps: int,
                      guidance_weight_range: tuple[float, float], teacher: str) -> dict[str, str]:
    """The safetensors metadata entry of an LCM-LoRA: sampler `lcm`, its steps, guidance_scale 1 (the weight is
    in the adapter), the solver grid it was distilled on and the teacher's folder."""
    facts = {"scheduler": "lcm", "num_inference_steps": num_inference_steps, "guidance_scale": 1.0,
             "original_inference_steps": original_inference_steps,
             "guidance_weight_range": list(guidance_weight_range), "teacher": teacher}
    return {LCM_LORA_KEY: json.dumps(facts, sort_keys=True)}


def read_lcm_lora(path: str | Path) -> dict | None:
    """The sampling facts of an LCM-LoRA file (`lcm_lora_metadata`'s JSON), or None for any other adapter or
    file (an unreadable file is `ldm.lora.read_lora`'s error to report, not this one's)."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            text = (handle.metadata() or {}).get(LCM_LORA_KEY)
    except (SafetensorError, OSError, ValueError):
        return None
    if text is None:
        return None
    try:
        facts = json.loads(text)
    except json.JSONDecodeError:
        return None
    return facts if isinstance(facts, dict) and facts.get("scheduler") == "lcm" else None
