"""How well the emoji readers read real glyphs degraded the way samples are, against chance.

    python benchmarks/emoji_reader.py --vae runs/quickstart/stage1/vae [--resolutions 32,64] [--queries 400]

For each resolution: the retrieval reader (`ldm.eval.emoji_reader`) on `--queries` random glyphs of all the font
draws, top-1 and top-5 (its group among the 1,904 groups), clean and under each degradation below, beside the
two simpler feature spaces it was chosen over (all pixels; the 8 x 8 layout without shifted references). Then
the tone reader (`ldm.eval.tone_reader`) on every one-tone glyph and toneless glyph of the emoji it reads: a
confusion matrix (rows: true tone, columns: read) per degradation.

Degradations (seeded): blur (Gaussian, radius R/32 px); colour jitter (brightness x U(0.85, 1.15), saturation
x U(0.7, 1.3), a per-channel tint of U(-0.06, 0.06): the tinted white backgrounds samples show); shift (up to
R/16 px each way, white fill); the VAE round trip through `--vae` (encode, posterior mode, decode); and all of
them together.
"""
from __future__ import annotations

import argparse
from collections import Counter

import numpy as np
import torch
from PIL import Image, ImageFilter

from ldm.data.emoji import sequence_tones
from ldm.eval.emoji_reader import EmojiReader, Glyphs, layout_features, render_glyphs, shift_images
from ldm.eval.tone_reader import TONE_CLASSES, ToneReader

JITTER = {"brightness": (0.85, 1.15), "saturation": (0.7, 1.3), "tint": 0.06}


def blur(pixels: np.ndarray, rng) -> np.ndarray:
    radius = pixels.shape[1] / 32
    return np.stack([np.asarray(Image.fromarray((p * 255).round().astype(np.uint8)).filter(
        ImageFilter.GaussianBlur(radius)), dtype=np.float32) / 255 for p in pixels])


def jitter(pixels: np.ndarray, rng) -> np.ndarray:
    out = []
    for p in pixels:
        grey = p.mean(-1, keepdims=True)
        saturated = grey + rng.uniform(*JITTER["saturation"]) * (p - grey)
        tint = rng.uniform(-JITTER["tint"], JITTER["tint"], 3)
        out.append(np.clip(saturated * rng.uniform(*JITTER["brightness"]) + tint, 0, 1))
    return np.stack(out).astype(np.float32)


def shift(pixels: np.ndarray, rng) -> np.ndarray:
    most = max(1, pixels.shape[1] // 16)
    return np.concatenate([shift_images(p[None], *rng.integers(-most, most + 1, 2)) for p in pixels])


def vae_round_trip(vae):
    @torch.no_grad()
    def degrade(pixels: np.ndarray, rng) -> np.ndarray:
        x = torch.from_numpy(pixels).permute(0, 3, 1, 2) * 2 - 1
        y = torch.cat([vae.decode(vae.encode(x[i:i + 64]).latent_dist.mode()).sample for i in range(0, len(x), 64)])
        return ((y.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy()
    return degrade


def degradations(vae) -> dict:
    steps = {"clean": lambda p, rng: p, "blur": blur, "jitter": jitter, "shift": shift}
    if vae is not None:
        steps["vae"] = vae_round_trip(vae)
    last = steps.get("vae", blur)
    steps["all"] = lambda p, rng: shift(jitter(last(p, rng), rng), rng)
    return steps


def plain_top_k(features_of, glyphs: Glyphs, queries: np.ndarray, degraded: np.ndarray) -> tuple[float, float]:
    """Top-1 / top-5 of nearest-group retrieval in a feature space without shifted references."""
    reference, query = features_of(glyphs.pixels), features_of(degraded)
    groups = np.array(glyphs.groups)
    distances = (query ** 2).sum(1)[:, None] - 2 * query @ reference.T + (reference ** 2).sum(1)[None]
    ranks = []
    for row, index in zip(distances, queries):
        own = row[groups == groups[index]].min()
        ranks.append(1 + len(set(groups[row < own])))
    ranks = np.array(ranks)
    return float((ranks == 1).mean()), float((ranks <= 5).mean())


def retrieval(resolution: int, glyphs: Glyphs, steps: dict, count: int) -> None:
    reader = EmojiReader(glyphs)
    rng = np.random.default_rng(0)
    queries = rng.choice(len(glyphs.sequences), count, replace=False)
    print(f"\nretrieval at {resolution} px: {count} glyphs, {len(reader.group_names)} groups, "
          f"chance {reader.chance:.4%}; top-1 / top-5")
    spaces = {"pixels": lambda p: p.reshape(len(p), -1), "8x8 layout": layout_features}
    print(f"{'degradation':<12}" + "".join(f"{name:>20}" for name in [*spaces, "reader (9 shifts)"]))
    for name, degrade in steps.items():
        degraded = degrade(glyphs.pixels[queries], np.random.default_rng(1))
        cells = [plain_top_k(f, glyphs, queries, degraded) for f in spaces.values()]
        read = reader.read(list(degraded), [glyphs.sequences[i] for i in queries])
        ranks = np.array([r["rank"] for r in read])
        cells.append(((ranks == 1).mean(), (ranks <= 5).mean()))
        print(f"{name:<12}" + "".join(f"{a:>12.1%} /{b:>6.1%}" for a, b in cells))


def tones(resolution: int, glyphs: Glyphs, steps: dict) -> None:
    reader = ToneReader(glyphs)
    index = [i for i, s in enumerate(glyphs.sequences) if reader.reads(s) and len(sequence_tones(s)) <= 1]
    truth = [(sequence_tones(glyphs.sequences[i]) or ("none",))[0] for i in index]
    print(f"\ntone reader at {resolution} px: {len(index)} glyphs of {len(reader.masks)} emoji "
          f"(rows: true, columns: read; chance {1 / len(TONE_CLASSES):.0%})")
    for name, degrade in steps.items():
        degraded = degrade(glyphs.pixels[index], np.random.default_rng(2))
        read = [reader.read(image, glyphs.sequences[i]) for image, i in zip(degraded, index)]
        pairs = Counter(zip(truth, read))
        right = sum(t == r for t, r in zip(truth, read)) / len(index)
        print(f"{name}: {right:.1%} right")
        print(" " * 14 + "".join(f"{c:>13}" for c in TONE_CLASSES))
        for true_tone in TONE_CLASSES:
            print(f"{true_tone:<14}" + "".join(f"{pairs[(true_tone, c)]:>13}" for c in TONE_CLASSES))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vae", default="", help="a VAE folder for the round-trip degradation (none: skipped)")
    parser.add_argument("--resolutions", default="32,64", help="comma-separated image sides")
    parser.add_argument("--tones-only", action="store_true", help="skip the retrieval reader")
    parser.add_argument("--queries", type=int, default=400, help="random glyphs the retrieval reader reads")
    args = parser.parse_args()
    vae = None
    if args.vae:
        from diffusers import AutoencoderKL
        vae = AutoencoderKL.from_pretrained(args.vae).eval()
    steps = degradations(vae)
    for resolution in (int(r) for r in args.resolutions.split(",")):
        glyphs = render_glyphs(resolution)
        if not args.tones_only:
            retrieval(resolution, glyphs, steps, args.queries)
        tones(resolution, glyphs, steps)


if __name__ == "__main__":
    main()
