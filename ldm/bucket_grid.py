"""Validation grids under aspect-ratio buckets: the sample prompts drawn at the sizes of the most-used buckets,
one row per size, so a bucketed run shows the model drawing wide and tall, not only the square it is sampled
at by default."""
from __future__ import annotations

import torch
from PIL import Image

GRID_BUCKETS = 3  # rows of a bucketed grid: the most-used buckets (more mostly repeats near-square sizes)


def grid_sizes(bucket_sizes: dict[str, int], *, vae_factor: int, n: int = GRID_BUCKETS) -> list[tuple[int, int]]:
    """(width, height) in pixels of the `n` buckets holding the most images, widest first.

    bucket_sizes: a latent cache's 'HxW' latent size → images (`ShardedLatentCache.bucket_sizes`);
    vae_factor: pixels per latent side. Ties in count go to the larger area, then the wider bucket."""
    if n < 1:
        raise ValueError(f"a bucketed grid needs at least one row, got n = {n}.")
    pixels = {}
    for name, count in bucket_sizes.items():
        height, width = (int(side) * vae_factor for side in name.split("x"))
        pixels[(width, height)] = count
    chosen = sorted(pixels, key=lambda size: (-pixels[size], -size[0] * size[1], -size[0]))[:n]
    return sorted(chosen, key=lambda size: -size[0] / size[1])


def sample_rows(pipe, prompts: list[str], sizes: list[tuple[int, int]], *, seed: int,
                **call_options) -> tuple[list[Image.Image], list[str]]:
    """Sample `prompts` once at each (width, height) of `sizes`: (images row by row, captions 'WxH: prompt').

    pipe: a text-to-image pipeline taking `width`, `height` and `generator` (`call_options` go to it too, e.g.
    num_inference_steps, guidance_scale). Every row draws its noise from a generator seeded with `seed`, so the
    grid of every validation starts from the same noise."""
    images, captions = [], []
    for width, height in sizes:
        generator = torch.Generator().manual_seed(seed)
        images += pipe(prompts, width=width, height=height, generator=generator, **call_options).images
        captions += [f"{width}x{height}: {prompt}" for prompt in prompts]
    return images, captions
