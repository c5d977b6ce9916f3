"""The trainers' defaults: the best settings we measured, and the ones that follow from what a command knows.

A trainer's option left unset (None) is filled here by `fill`, which returns one `Choice` per value it chose:
the trainer logs each as one line ("lr = 0.001: from scratch ...") and saves the values in its
`train_config.json`, so a run says what it trained with and why. A flag the user gives always wins.

What a command knows and what follows from it:
- **from scratch, full fine-tune or LoRA** (`--pretrained`, `--lora-rank`): fine-tuning a pretrained model needs
  a learning rate two orders of magnitude below training from scratch, and an adapter one in between;
- **the pretrained model's scheduler**: its prediction type, beta schedule and number of timesteps are what its
  weights were trained for, so a fine-tune or an adapter keeps them;
- **the number of steps**: the EMA's averaging window, ~1 / (1 - decay) steps, should be a fraction of the run;
- **the model size** (its preset): the from-scratch learning rate that a 1-17 M-parameter U-Net tolerates
  diverges at Stable Diffusion's size.

The measured values and where they come from are in the constants' comments (docs/experiments.md has the runs).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

# --- Stage 1 (train_vae.py)
# The VAE by resolution: stage 2's cost grows with the latent area, and 8x8 latents are what stage 2 trains
# in the quickstart's minutes. cpu-f4 up to 32 px (8x8 latents); cpu-f8 above, so 64 px is 8x8 again: at
# 64 px a cpu-tiny stage-2 step on 16x16 latents (cpu-f4) cost 2.7 times one on 8x8 (105 vs 283 images/s,
# batch 64, emoji), while the two VAEs' own steps cost the same (18.7 vs 19.8 images/s, batch 16). f = 8 is
# also Stable Diffusion's factor (64x64 latents at 512 px).
VAE_F4_MAX_RESOLUTION = 32
# From scratch, batch 16 at lr 2e-3 gave the most PSNR per second of the rates and batches tried on the shapes
# data (cpu-f4); the old 1e-3 at batch 32 reached 29.7 dB where this reaches 32-35 dB in the same time.
VAE_SCRATCH_LR = 2e-3
# Fine-tuning a trained VAE (e.g. Stable Diffusion's) moves it little: two orders of magnitude lower, as the
# diffusers and CompVis fine-tuning configs do (1e-5 to 4.5e-6).
VAE_FINETUNE_LR = 1e-5

# --- Stage 2 (train_ldm.py)
# The U-Net preset when none is given: on 2 CPU cores the number of steps, not the width, limited adherence,
# and cpu-tiny (1.1 M parameters) runs three times the steps of cpu-small per second at 8x8 latents.
UNET_PRESET = "cpu-tiny"
# From scratch: the quickstart's U-Nets (1-4 M parameters) train fastest at 1e-3 with warm-up; beyond the CPU
# presets (sd15 or a config file) the field's 1e-4 (LDM paper, Stable Diffusion) is the safe start.
SCRATCH_LR_SMALL = 1e-3
SCRATCH_LR_LARGE = 1e-4
SMALL_PRESETS = ("cpu-tiny", "cpu-small", "cpu-base")
# Fine-tuning every weight of a pretrained model: 1e-5 (diffusers' text-to-image example, kohya's fine_tune).
FINETUNE_LR = 1e-5
# A LoRA adapter starts at zero and has few weights: 1e-4 (diffusers' LoRA example, kohya's train_network).
LORA_LR = 1e-4
# Batch per process: 64 from scratch (the recipe's measured runs; 8x8 latents leave a CPU busy at that size),
# 4 for a pretrained Stable Diffusion-size model, as the diffusers and kohya fine-tuning examples start (1-4).
SCRATCH_BATCH = 64
PRETRAINED_BATCH = 4
# From scratch: v-prediction learnt about twice as fast per step as epsilon on the shapes data.
SCRATCH_PREDICTION = "v_prediction"
# Min-SNR-5 loss weighting (Hang et al. 2023, arXiv:2303.09556): faster convergence; 5 is the paper's value.
MIN_SNR_GAMMA = 5.0
# From scratch, a floor of 0.1 under min-SNR's weights keeps the high-noise steps, where an object's position is
# decided, in the loss: held-out adherence 92-99% over eight seeds with it, 64-97% without (README Results).
SCRATCH_SNR_FLOOR = 0.1
# EMA window as a fraction of the run: 0.999 (a 1,000-step window) was measured best for 2,400 steps; diffusers'
# 0.9999 would average over four times the whole run. Clamped to [0.99, 0.9999].
EMA_WINDOW_FRACTION = 1 / 2.4
EMA_DECAY_RANGE = (0.99, 0.9999)


@dataclass(frozen=True)
class Choice:
    """One default filled in: the option, its value and the one-line reason."""

    name: str
    value: Any
    why: str

    def line(self) -> str:
        return f"{self.name} = {self.value}: {self.why}"


def fill(config: Any, rules: dict[str, Callable[[], tuple[Any, str]]]) -> list[Choice]:
    """For each option in `rules` that `config` leaves None, set it to the rule's value; return the choices.

    A rule is called only when its option is unset, so it may read options filled by earlier rules (dicts keep
    their order).
    """
    chosen = []
    for name, rule in rules.items():
        if getattr(config, name) is None:
            value, why = rule()
            setattr(config, name, value)
            chosen.append(Choice(name, value, why))
    return chosen


def ema_decay_for(max_steps: int) -> float:
    """An EMA decay whose window 1 / (1 - decay) is EMA_WINDOW_FRACTION of `max_steps`, clamped, rounded to 5
    decimals (0.99917 for 2,400 steps, 0.9999 from 24,000 on)."""
    low, high = EMA_DECAY_RANGE
    return round(min(high, max(low, 1.0 - 1.0 / (EMA_WINDOW_FRACTION * max_steps))), 5)


def training_mode(*, pretrained: str | None, lora_rank: int | None) -> str:
    """'lora', 'finetune' or 'scratch'."""
    return "lora" if lora_rank else "finetune" if pretrained else "scratch"


def vae_preset_for(resolution: int) -> tuple[str, str]:
    """The VAE preset for a from-scratch stage 1 at `resolution`, and why (a rule for `fill`)."""
    if resolution <= VAE_F4_MAX_RESOLUTION:
        return "cpu-f4", f"{resolution} px: f = 4 gives {resolution // 4}x{resolution // 4} latents"
    return "cpu-f8", (f"{resolution} px: f = 8 gives {resolution // 8}x{resolution // 8} latents (f = 4's "
                      f"{resolution // 4}x{resolution // 4} would make every stage-2 step several times dearer)")


def stage1_rules(config: Any) -> dict[str, Callable[[], tuple[Any, str]]]:
    """Rules for train_vae.py's TrainVAEConfig. A --config file or a --pretrained VAE is the architecture, so
    the preset is chosen only when neither is given."""
    def lr():
        if config.pretrained:
            return VAE_FINETUNE_LR, "fine-tuning a pretrained VAE: two orders of magnitude below from scratch"
        return VAE_SCRATCH_LR, "from scratch: the most PSNR per second measured on the shapes data"
    rules = {"lr": lr}
    if config.config is None and config.pretrained is None:
        rules = {"preset": lambda: vae_preset_for(config.resolution), **rules}
    return rules


def stage2_rules(config: Any, base_scheduler: dict) -> dict[str, Callable[[], tuple[Any, str]]]:
    """Rules for train_ldm.py's TrainConfig; `base_scheduler` is the --pretrained model's scheduler config ({}
    from scratch)."""
    mode = training_mode(pretrained=config.pretrained, lora_rank=config.lora_rank)

    def from_base(name: str, scratch_value: Any, scratch_why: str, stock: Any):
        def rule():
            if mode == "scratch":
                return scratch_value, scratch_why
            if name in base_scheduler:
                return base_scheduler[name], "what the pretrained model was trained with (its scheduler config)"
            return stock, "the pretrained model's scheduler does not say; Stable Diffusion 1.x's value"
        return rule

    def lr():
        if mode == "lora":
            return LORA_LR, "a LoRA adapter on a pretrained model"
        if mode == "finetune":
            return FINETUNE_LR, "fine-tuning every weight of a pretrained model: 100x below from scratch"
        if config.preset in SMALL_PRESETS:
            return SCRATCH_LR_SMALL, f"from scratch, a {config.preset} U-Net: measured fastest on 2 CPU cores"
        return SCRATCH_LR_LARGE, "from scratch beyond the CPU presets: the LDM paper's and Stable Diffusion's"

    def ema():
        if mode == "lora":
            return False, "an adapter trains few steps from zero; average it with --ema if wanted"
        return True, "EMA weights sample better than the last step's (validation and the saved model use them)"

    rules = {
        "batch_size": lambda: ((SCRATCH_BATCH, "from scratch: the batch the measured recipe trained with")
                               if mode == "scratch" else
                               (PRETRAINED_BATCH, "a pretrained (Stable Diffusion-size) model: the fine-tuning "
                                                  "examples' small batch; raise it as memory allows")),
        "prediction_type": from_base("prediction_type", SCRATCH_PREDICTION,
                                     "from scratch: about twice the adherence per step of epsilon", "epsilon"),
        "beta_schedule": from_base("beta_schedule", "linear", "from scratch: the DDPM schedule", "scaled_linear"),
        "num_train_timesteps": from_base("num_train_timesteps", 1000, "from scratch: DDPM's T", 1000),
        "min_snr_gamma": lambda: (MIN_SNR_GAMMA, "min-SNR weighting (arXiv:2303.09556), the paper's gamma"),
        "snr_floor": lambda: ((SCRATCH_SNR_FLOOR, "from scratch: keeps weight on the high-noise steps that "
                                                  "place objects") if mode == "scratch" else
                              (0.0, "fine-tuning: off (measured from scratch only)")),
        "lr": lr,
        "ema": ema,
        "ema_decay": lambda: (ema_decay_for(config.max_steps),
                              f"an averaging window of about {EMA_WINDOW_FRACTION:.0%} of the {config.max_steps} "
                              f"steps"),
    }
    return rules
