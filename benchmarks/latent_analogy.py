"""How additive are colour and shape in a VAE's latents, per background of the shapes data?

    python benchmarks/latent_analogy.py runs/quickstart/stage1/vae

For every background, size, pair of colours (c, c') and pair of shapes (s, s') of single centred objects, the
latent of (c, s) is predicted by analogy, z(c, s') - z(c', s') + z(c', s), and the error is divided by the size
of a shape change, |z(c, s) - z(c, s')|² (mean squares over all quadruples). Small ratios mean a shape looks
alike whatever its colour, so a U-Net can draw an unseen colour-shape pair from seen ones; the same ratio on
the pixels is printed for reference. The VAE's posterior mean is used, times its scaling_factor.
"""
from __future__ import annotations

import argparse
import itertools

import numpy as np
import torch
from diffusers import AutoencoderKL

from ldm.data.shapes import BACKGROUNDS, COLOURS, SHAPES, SIZES, Scene, ShapeObject, render_scene
from ldm.data.transforms import to_tensor


def analogy_ratio(encode, background: str, resolution: int) -> float:
    """mean |z(c,s) - (z(c,s') - z(c',s') + z(c',s))|² / mean |z(c,s) - z(c,s')|² for one background."""
    cache = {}

    def z(colour, shape, size):
        if (colour, shape, size) not in cache:
            scene = Scene(objects=(ShapeObject(shape, colour, size, "centre"),), background=background)
            cache[colour, shape, size] = encode(render_scene(scene, resolution))
        return cache[colour, shape, size]

    errors, changes = [], []
    for size in SIZES:
        for c, c2 in itertools.permutations(COLOURS, 2):
            for s, s2 in itertools.permutations(SHAPES, 2):
                truth = z(c, s, size)
                errors.append(float(((truth - (z(c, s2, size) - z(c2, s2, size) + z(c2, s, size))) ** 2).mean()))
                changes.append(float(((truth - z(c, s2, size)) ** 2).mean()))
    return float(np.mean(errors) / np.mean(changes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("vae", help="a VAE folder (train_vae.py's OUT/vae) or a pipeline folder's vae/")
    parser.add_argument("--resolution", type=int, default=32)
    args = parser.parse_args()
    vae = AutoencoderKL.from_pretrained(args.vae, local_files_only=True).eval()

    @torch.no_grad()
    def latent(image) -> torch.Tensor:
        return vae.encode(to_tensor(image)[None]).latent_dist.mean[0] * vae.config.scaling_factor

    print("| background | latent analogy ratio | pixel analogy ratio |")
    print("|---|---|---|")
    for background in BACKGROUNDS:
        print(f"| {background} | {analogy_ratio(latent, background, args.resolution):.2f} | "
              f"{analogy_ratio(to_tensor, background, args.resolution):.2f} |")


if __name__ == "__main__":
    main()
