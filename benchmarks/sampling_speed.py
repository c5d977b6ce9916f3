"""Sampling speed: `TextToImagePipeline` against stock `StableDiffusionPipeline` on the same weights.

    python benchmarks/sampling_speed.py [--steps 20] [--repeats 6] [--compile]

Prints images/s for batch 1 and 8 (ours and stock, interleaved so both see the same machine load), the
gain from skipping the unconditional branch at guidance_scale 1 (w = 0), and bf16 autocast / torch.compile
speed-ups with the largest 8-bit pixel difference from fp32. The model is CPU-sized and randomly initialised:
speed does not depend on the weights' values.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from ldm.tokenizer import train_clip_tokenizer
from pipelines import TextToImagePipeline
from pipelines.schedulers import make_scheduler

CAPTIONS = [
    "a red circle on the left",
    "a small blue square on the right",
    "a green triangle at the top",
] * 20
PROMPT = "a red circle on the left"


@dataclass
class BenchConfig:
    steps: int = 20  # the dpm++ default range is 20–30; fewer steps only shrink every number alike
    repeats: int = 6  # rounds; ratios are medians of per-round pairs, robust on a shared CPU
    guidance_scale: float = 4.0
    scheduler: str = "dpm++"
    compile: bool = False  # torch.compile takes minutes to warm up on 2 cores


def build_components(tmp_dir: str) -> dict:
    """U-Net (64, 128) at 8×8 latents, f = 4 VAE (32 px), 2-layer 128-wide CLIP text encoder, 77 tokens."""
    torch.manual_seed(0)
    tokenizer = train_clip_tokenizer(CAPTIONS, out_dir=tmp_dir, vocab_size=600, model_max_length=77)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=128,
            intermediate_size=512,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    ).eval()
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(64, 128),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=128,
        attention_head_dim=(2, 4),
    ).eval()
    vae = AutoencoderKL(
        latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        norm_num_groups=32,
        sample_size=32,
    ).eval()
    return dict(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet)


def images_per_second(setting: tuple, batch: int, steps: int) -> float:
    """One timed call of `setting` = (pipe, guidance_scale, context or None) → images per second."""
    pipe, guidance_scale, context = setting
    start = time.perf_counter()
    with context or contextlib.nullcontext():
        pipe([PROMPT] * batch, num_inference_steps=steps, guidance_scale=guidance_scale,
             generator=torch.Generator().manual_seed(0), output_type="np")
    return batch / (time.perf_counter() - start)


def timed_rounds(settings: dict, batch: int, config: BenchConfig) -> dict:
    """images/s of each setting over `repeats` rounds, interleaved with alternating order so that load spikes
    on a shared CPU hit all settings alike; returns name → list of speeds, one per round."""
    for setting in settings.values():  # warm-up: allocator, oneDNN kernels, compiled graphs
        images_per_second(setting, batch, config.steps)
    speeds = {name: [] for name in settings}
    for round_index in range(config.repeats):
        order = list(settings) if round_index % 2 == 0 else list(settings)[::-1]
        for name in order:
            speeds[name].append(images_per_second(settings[name], batch, config.steps))
    return speeds


def ratio(speeds: dict, faster: str, slower: str) -> float:
    """Median over rounds of the paired speed ratio: robust to a load spike in any one round."""
    return statistics.median(a / b for a, b in zip(speeds[faster], speeds[slower]))


def pixels(pipe, config: BenchConfig, context=None) -> np.ndarray:
    """8 images as uint8-scale floats `(8, 32, 32, 3)` in [0, 255] for a fixed seed."""
    with context or contextlib.nullcontext():
        images = pipe(
            [PROMPT] * 8,
            num_inference_steps=config.steps,
            guidance_scale=config.guidance_scale,
            generator=[torch.Generator().manual_seed(i) for i in range(8)],
            output_type="np",
        ).images
    return np.round(images * 255)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=BenchConfig.steps)
    parser.add_argument("--repeats", type=int, default=BenchConfig.repeats)
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile of the U-Net")
    config = BenchConfig(**vars(parser.parse_args()))
    with tempfile.TemporaryDirectory() as tmp_dir:
        components = build_components(tmp_dir)
    # steps_offset 1 is what SD folders ship; stock would otherwise rewrite its scheduler's config on load.
    scheduler_config = make_scheduler(config.scheduler, {"steps_offset": 1}).config
    ours = TextToImagePipeline(**components, scheduler=make_scheduler(config.scheduler, scheduler_config))
    stock = StableDiffusionPipeline(
        **components,
        scheduler=make_scheduler(config.scheduler, scheduler_config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    for pipe in (ours, stock):
        pipe.set_progress_bar_config(disable=True)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {config.scheduler}, "
        f"{config.steps} steps, guidance_scale {config.guidance_scale}"
    )

    gs = config.guidance_scale
    for batch in (1, 8):
        speeds = timed_rounds({"ours": (ours, gs, None), "stock": (stock, gs, None)}, batch, config)
        print(f"batch {batch}: ours {max(speeds['ours']):.2f} img/s, stock {max(speeds['stock']):.2f} img/s "
              f"(best), ours/stock = {ratio(speeds, 'ours', 'stock'):.3f} (median paired)")

    for batch in (1, 8):
        speeds = timed_rounds({"w0": (ours, 1.0, None), "guided": (ours, gs, None)}, batch, config)
        print(f"batch {batch}: guidance_scale 1 (no uncond branch) is {ratio(speeds, 'w0', 'guided'):.2f}x "
              f"the speed of guidance_scale {gs}")

    reference = pixels(ours, config)
    bf16 = torch.autocast("cpu", dtype=torch.bfloat16)
    for batch in (1, 8):
        speeds = timed_rounds({"fp32": (ours, gs, None), "bf16": (ours, gs, bf16)}, batch, config)
        print(f"batch {batch}: bf16 autocast {ratio(speeds, 'bf16', 'fp32'):.2f}x fp32")
    diff = np.abs(pixels(ours, config, bf16) - reference)
    print(f"bf16 autocast vs fp32: max pixel difference {diff.max():.0f}/255, mean {diff.mean():.2f}/255")

    if config.compile:
        measure_compile(ours, components, scheduler_config, config, reference)


def measure_compile(ours, components: dict, scheduler_config: dict, config: BenchConfig, reference) -> None:
    """torch.compile of the U-Net (a copy, so `ours` stays eager): speed-up and pixel drift."""
    unet = copy.deepcopy(components["unet"])
    unet.compile()  # in place: the module keeps its class, so the pipeline registers it as usual
    compiled = TextToImagePipeline(**{**components, "unet": unet},
                                   scheduler=make_scheduler(config.scheduler, scheduler_config))
    compiled.set_progress_bar_config(disable=True)
    gs = config.guidance_scale
    for batch in (1, 8):
        speeds = timed_rounds({"eager": (ours, gs, None), "compiled": (compiled, gs, None)}, batch, config)
        print(f"batch {batch}: torch.compile {ratio(speeds, 'compiled', 'eager'):.2f}x eager")
    diff = np.abs(pixels(compiled, config) - reference)
    print(f"torch.compile vs eager: max pixel difference {diff.max():.0f}/255")


if __name__ == "__main__":
    main()
