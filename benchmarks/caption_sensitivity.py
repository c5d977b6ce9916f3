"""Which caption words does a trained stage-2 model use? Swap one attribute word and watch the loss.

    python benchmarks/caption_sensitivity.py runs/quickstart/stage2

For shapes captions from the model's own latent cache, the diffusion loss is computed at several timesteps
with the true caption and with one attribute's word replaced by another value of the same attribute (colour,
shape, size, position, background), on the same latents, noise and timesteps. A ratio near 1 means the model
ignores that attribute at that noise level; the quickstart's model, for instance, ignores position everywhere.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch
from diffusers import DDPMScheduler

from ldm.conditioning import encode_prompt
from ldm.data import shapes
from ldm.latent_shards import TRAINING_CACHE_DIR, ShardedLatentCache
from ldm.objective import training_target
from pipelines.folder import load_pipeline

ATTRIBUTE_WORDS = {
    "colour": list(shapes.COLOURS),
    "shape": list(shapes.SHAPES),
    "size": list(shapes.SIZES),
    "position": list(shapes.POSITION_PHRASES.values()),
    "background": [f"{name} background" for name in shapes.BACKGROUNDS],
}


def swap_attribute(caption: str, words: list[str]) -> str | None:
    """`caption` with its first word from `words` replaced by the next one (cyclically); None if absent."""
    for k, word in enumerate(words):
        pattern = rf"\b{re.escape(word)}(es|s)?\b"
        if re.search(pattern, caption):
            return re.sub(pattern, lambda m: words[(k + 1) % len(words)] + (m.group(1) or ""), caption, count=1)
    return None


@torch.no_grad()
def sensitivity(model: Path, *, timesteps: list[int], samples: int, seed: int) -> dict:
    pipe = load_pipeline(str(model), device="cpu")
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)  # the training betas and prediction type
    cache = ShardedLatentCache(model / TRAINING_CACHE_DIR)  # read without a key check: any cache will do
    captions = list(cache.iter_captions())
    generator = torch.Generator().manual_seed(seed)
    results = {}
    for attribute, words in ATTRIBUTE_WORDS.items():
        pairs = [(i, swapped) for i, c in enumerate(captions) if (swapped := swap_attribute(c, words))][:samples]
        if not pairs:
            continue
        index = torch.tensor([i for i, _ in pairs])
        latents = cache.sample(index, scaling_factor=pipe.vae.config.scaling_factor, generator=generator)
        true_embeds = encode_prompt(pipe.text_encoder, pipe.tokenizer, [captions[i] for i, _ in pairs])
        swapped_embeds = encode_prompt(pipe.text_encoder, pipe.tokenizer, [s for _, s in pairs])
        results[attribute] = {}
        for t in timesteps:
            noise = torch.randn(latents.shape, generator=generator)
            steps = torch.full((len(pairs),), t)
            noisy = scheduler.add_noise(latents, noise, steps)
            target = training_target(scheduler, latents, noise, steps)
            losses = [float((pipe.unet(noisy, steps, encoder_hidden_states=e).sample - target).pow(2).mean())
                      for e in (true_embeds, swapped_embeds)]
            results[attribute][t] = losses[1] / losses[0]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="a train_ldm.py output folder (it holds the latent cache)")
    parser.add_argument("--timesteps", default="999,800,600,400,200")
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    timesteps = [int(t) for t in args.timesteps.split(",")]
    results = sensitivity(args.model, timesteps=timesteps, samples=args.samples, seed=args.seed)
    print("loss with one attribute word swapped / loss with the true caption")
    print("attribute   " + "".join(f"t={t:<7d}" for t in timesteps))
    for attribute, ratios in results.items():
        print(f"{attribute:<12}" + "".join(f"{ratios[t]:<9.3f}" for t in timesteps))


if __name__ == "__main__":
    main()
