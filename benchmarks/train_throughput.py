"""Training samples/s: train_ldm.py's step (latent cache, captions tokenized once) against a plain
diffusers-example loop (VAE encode + tokenize every step), same U-Net, text encoder and batch, same run.

    OMP_NUM_THREADS=2 python benchmarks/train_throughput.py --steps 10 --batch-size 32

Both loops train the from-scratch text encoder jointly, as the quickstart does; the VAE is the `cpu-f4` preset
with random weights (throughput does not depend on the weights).
"""
from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from transformers import CLIPTokenizer

import train_ldm
from autoencoder.presets import build_vae
from ldm.conditioning import encode_prompt
from ldm.data import open_dataset
from ldm.latent_cache import encode_dataset
from ldm.objective import make_noise_scheduler
from ldm.text_encoder import build_text_encoder
from ldm.tokenizer import learn_tokenizer
from ldm.stage2 import CaptionEmbedder, micro_step_loss
from ldm.training.batches import global_batch_indices, step_generator
from ldm.unet import build_unet

logger = logging.getLogger("train_throughput")


def timed(step_fns: dict, *, steps: int, warmup: int) -> dict[str, float]:
    """Seconds per call of each `step_fn(i)` after `warmup` untimed calls. The loops take turns step by step,
    so a change in machine load (the CPU is shared) hits both alike."""
    seconds = dict.fromkeys(step_fns, 0.0)
    for i in range(warmup + steps):
        for name, step_fn in step_fns.items():
            start = time.perf_counter()
            step_fn(i)
            if i >= warmup:
                seconds[name] += time.perf_counter() - start
    return {name: total / steps for name, total in seconds.items()}


def build_models(*, resolution: int, captions: list[str], workdir: str):
    vae = build_vae(preset="cpu-f4", sample_size=resolution).requires_grad_(False).eval()
    learn_tokenizer(captions, captions, out_dir=Path(workdir) / "tokenizer", vocab_size=1024)
    tokenizer = CLIPTokenizer.from_pretrained(f"{workdir}/tokenizer")
    text_encoder = build_text_encoder(tokenizer=tokenizer, preset="tiny")
    unet = build_unet(preset="cpu-small", cross_attention_dim=text_encoder.config.hidden_size,
                      sample_size=resolution // 4)
    return vae, tokenizer, text_encoder, unet


def plain_step_fn(*, vae, tokenizer, text_encoder, unet, scheduler, dataset, batch_size: int):
    """The diffusers text_to_image example's step: encode images and captions every step."""
    loader = iter(DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True))
    optimizer = torch.optim.AdamW(list(unet.parameters()) + list(text_encoder.parameters()), lr=1e-4)

    def step(_):
        nonlocal loader
        try:
            batch = next(loader)
        except StopIteration:
            loader = iter(DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True))
            batch = next(loader)
        with torch.no_grad():
            latents = vae.encode(batch["pixel_values"]).latent_dist.sample() * vae.config.scaling_factor
        prompt_embeds = encode_prompt(text_encoder, tokenizer, list(batch["caption"]))
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],))
        noise_pred = unet(scheduler.add_noise(latents, noise, timesteps), timesteps, prompt_embeds).sample
        loss = torch.nn.functional.mse_loss(noise_pred, noise)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def cached_step_fn(*, vae, tokenizer, text_encoder, unet, scheduler, dataset, batch_size: int, workdir: str):
    """train_ldm.py's step: latents drawn from the cache, captions tokenized once, conditioning dropout."""
    config = train_ldm.TrainConfig(data="shapes", vae="-", output_dir=workdir, batch_size=batch_size)
    cache = encode_dataset(vae, dataset, batch_size=64)
    embedder = CaptionEmbedder(text_encoder, tokenizer, trainable=True)
    optimizer = train_ldm.make_optimizer(list(unet.parameters()) + list(text_encoder.parameters()), config)

    def step(i):
        indices = global_batch_indices(len(cache), batch_size, i, config.seed)
        loss = micro_step_loss(unet=unet, embedder=embedder, cache=cache, noise_scheduler=scheduler,
                               indices=indices, generator=step_generator(config.seed, i),
                               scaling_factor=vae.config.scaling_factor, cond_dropout=config.cond_dropout)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per loop")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per loop")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--num-images", type=int, default=512)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)
    dataset = open_dataset("shapes", resolution=args.resolution, size=args.num_images)
    with tempfile.TemporaryDirectory() as workdir:
        captions = [dataset[i]["caption"] for i in range(len(dataset))]
        vae, tokenizer, text_encoder, unet = build_models(resolution=args.resolution, captions=captions,
                                                          workdir=workdir)
        scheduler = make_noise_scheduler()
        common = dict(vae=vae, tokenizer=tokenizer, text_encoder=text_encoder, unet=unet, scheduler=scheduler,
                      dataset=dataset, batch_size=args.batch_size)
        start = time.perf_counter()
        cached = cached_step_fn(**common, workdir=workdir)
        encode_s = time.perf_counter() - start
        seconds = timed({"cached": cached, "plain": plain_step_fn(**common)}, steps=args.steps,
                        warmup=args.warmup)
        cached_s, plain_s = seconds["cached"], seconds["plain"]
    b = args.batch_size
    print(f"threads={torch.get_num_threads()} batch={b} resolution={args.resolution} "
          f"latents={args.resolution // 4}px images={len(dataset)} text_length={tokenizer.model_max_length} "
          f"(one-off cache encode {encode_s:.1f} s)")
    print(f"plain diffusers-style loop : {b / plain_s:8.1f} samples/s")
    print(f"train_ldm.py step (cached) : {b / cached_s:8.1f} samples/s")
    print(f"ratio cached / plain       : {plain_s / cached_s:8.2f}x")


if __name__ == "__main__":
    main()
