"""A captioned image folder unlike the built-in data, its reader and its evaluation: colour patterns (issue 18).

Each image is a pattern in a foreground colour on a background colour: horizontal, vertical or diagonal stripes,
or polka dots, captioned like "gold polka dots on a navy ground". No objects, positions or sizes, and colour
names the built-in shapes never use: data the defaults were not chosen on. Four (pattern, foreground) pairs
never appear in the folder; prompts naming them are the held-out split.

    python benchmarks/patterns.py make runs/patterns --size 6000 --resolution 32      # PNG + .txt pairs
    python benchmarks/patterns.py eval --model OUT --out runs/patterns_eval            # adherence over w

The reader (tests/test_patterns_benchmark.py): the two colours are the palette pair whose blends fit the pixels
best (the background covering more than half), the pattern the best correlation of the background-to-foreground
coverage with every pattern's renders at every period and phase.
"""
from __future__ import annotations

import argparse
import functools
import itertools
import json
import random
import sys
from pathlib import Path

import numpy as np
from PIL import Image

PATTERNS = ("horizontal stripes", "vertical stripes", "diagonal stripes", "polka dots")
COLOURS: dict[str, tuple[int, int, int]] = {
    "crimson": (200, 20, 50), "navy": (20, 30, 120), "gold": (240, 200, 30),
    "teal": (0, 140, 130), "violet": (170, 80, 230), "ivory": (245, 240, 220),
}
HELD_OUT = (("horizontal stripes", "gold"), ("vertical stripes", "violet"), ("diagonal stripes", "crimson"),
            ("polka dots", "teal"))
PERIODS = (6, 8)  # pixels at 32 px, scaled with the resolution
SUPERSAMPLE = 4  # render at 4x and box-filter down: anti-aliased edges, as photographs have
MIN_FOREGROUND = 0.05  # a foreground colour must cover this share of the image to be read at all
PALETTE_NAMES = tuple(COLOURS)
PALETTE = np.array([COLOURS[n] for n in PALETTE_NAMES], dtype=np.float64)


def caption(pattern: str, fg: str, bg: str) -> str:
    article = "an" if bg[0] in "aeiou" else "a"
    return f"{fg} {pattern} on {article} {bg} ground"


def coverage(pattern: str, *, resolution: int, period: int, phase: tuple[int, int]) -> np.ndarray:
    """Foreground coverage in [0, 1], (resolution, resolution): the pattern at `period` (pixels at 32 px) and
    `phase` (pixels, y and x), supersampled."""
    side = resolution * SUPERSAMPLE
    step = period * resolution / 32 * SUPERSAMPLE
    y, x = np.mgrid[0:side, 0:side].astype(np.float64) + 0.5
    y, x = y + phase[0] * SUPERSAMPLE, x + phase[1] * SUPERSAMPLE
    if pattern == "polka dots":
        dy, dx = (y % step) - step / 2, (x % step) - step / 2
        mask = dy ** 2 + dx ** 2 < (0.3 * step) ** 2
    else:
        coordinate = {"horizontal stripes": y, "vertical stripes": x, "diagonal stripes": x + y}[pattern]
        mask = coordinate % step < step / 3
    return mask.reshape(resolution, SUPERSAMPLE, resolution, SUPERSAMPLE).mean(axis=(1, 3))


def render(pattern: str, fg: str, bg: str, *, resolution: int, period: int, phase: tuple[int, int]) -> Image.Image:
    alpha = coverage(pattern, resolution=resolution, period=period, phase=phase)[..., None]
    pixels = alpha * np.array(COLOURS[fg]) + (1 - alpha) * np.array(COLOURS[bg])
    return Image.fromarray(np.round(pixels).astype(np.uint8))


def seen_pairs() -> list[tuple[str, str]]:
    return [(p, c) for p in PATTERNS for c in COLOURS if (p, c) not in HELD_OUT]


def random_scene(rng: random.Random, pairs) -> tuple[str, str, str, int, tuple[int, int]]:
    pattern, fg = rng.choice(pairs)
    bg = rng.choice([c for c in COLOURS if c != fg])
    period = rng.choice(PERIODS)
    return pattern, fg, bg, period, (rng.randrange(period), rng.randrange(period))


def make_folder(out: Path, *, size: int, resolution: int, seed: int = 0) -> None:
    """`size` PNG images with same-named .txt captions, seen pairs only."""
    out.mkdir(parents=True, exist_ok=True)
    rng, pairs = random.Random(seed), seen_pairs()
    for index in range(size):
        pattern, fg, bg, period, phase = random_scene(rng, pairs)
        render(pattern, fg, bg, resolution=resolution, period=period, phase=phase).save(out / f"{index:05d}.png")
        (out / f"{index:05d}.txt").write_text(caption(pattern, fg, bg) + "\n")


@functools.lru_cache(maxsize=8)
def _templates(resolution: int) -> dict[str, np.ndarray]:
    """Every pattern's zero-mean, unit-norm coverages over periods and phases: pattern -> (n, R*R)."""
    out = {}
    for pattern in PATTERNS:
        rows = []
        for period in PERIODS:
            for phase in itertools.product(range(period), repeat=2):
                flat = coverage(pattern, resolution=resolution, period=period, phase=phase).ravel()
                flat = flat - flat.mean()
                rows.append(flat / np.linalg.norm(flat))
        out[pattern] = np.stack(rows)
    return out


def read(image: Image.Image) -> dict | None:
    """{'pattern', 'fg', 'bg'} read back from an RGB image, or None when it shows no second colour."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    flat = pixels.reshape(-1, 3)
    best = None
    for a, b in itertools.permutations(range(len(PALETTE)), 2):  # the colour pair whose blends fit best
        line = PALETTE[b] - PALETTE[a]
        alpha = np.clip((flat - PALETTE[a]) @ line / (line @ line), 0.0, 1.0)
        residual = ((flat - PALETTE[a] - alpha[:, None] * line) ** 2).sum()
        if alpha.mean() <= 0.5 and (best is None or residual < best[0]):  # the background covers the most
            best = (residual, a, b, alpha)
    _, bg, fg, alpha = best
    if alpha.mean() < MIN_FOREGROUND:
        return None
    alpha = alpha - alpha.mean()
    norm = np.linalg.norm(alpha)
    if norm == 0:
        return None
    scores = {p: float((t @ (alpha / norm)).max()) for p, t in _templates(pixels.shape[0]).items()}
    return {"pattern": max(scores, key=scores.get), "fg": PALETTE_NAMES[fg], "bg": PALETTE_NAMES[bg]}


def prompt_set(split: str, *, count: int, seed: int = 0) -> list[tuple[str, str, str]]:
    """`count` (pattern, fg, bg) prompts of a split, cycling through its pairs so each gets its share."""
    pairs = list(HELD_OUT) if split == "held_out" else seen_pairs()
    rng = random.Random(f"{split}-{seed}")
    rng.shuffle(pairs)
    prompts = []
    for pattern, fg in itertools.islice(itertools.cycle(pairs), count):
        prompts.append((pattern, fg, rng.choice([c for c in COLOURS if c != fg])))
    return prompts


def evaluate(model: str, out: Path, *, weights: list[float], prompts: int, seeds: int, steps: int,
             resolution: int) -> dict:
    """Adherence (pattern, foreground and background all read right) of seen and held-out prompts over w."""
    import torch

    from ldm.guidance import guidance_scale_from_weight
    from pipelines.folder import load_pipeline
    from pipelines.schedulers import make_scheduler

    pipe = load_pipeline(model, device="cpu")
    pipe.scheduler = make_scheduler("dpm++", pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    splits = {split: prompt_set(split, count=prompts) for split in ("seen", "held_out")}
    sweep = []
    for w in weights:
        entry = {"w": w}
        for split, items in splits.items():
            texts = [caption(*item) for item in items]
            generators = [torch.Generator().manual_seed(1000 * i + s) for i in range(len(texts)) for s in range(seeds)]
            images = pipe(texts, num_inference_steps=steps, guidance_scale=guidance_scale_from_weight(w),
                          num_images_per_prompt=seeds, generator=generators, height=resolution, width=resolution,
                          output_type="pil").images
            right = [read(image) == dict(zip(("pattern", "fg", "bg"), items[i // seeds]))
                     for i, image in enumerate(images)]
            entry[split] = sum(right) / len(right)
        sweep.append(entry)
        print(f"w = {w:g}: seen {entry['seen']:.1%}, held-out {entry['held_out']:.1%}", flush=True)
    best = max(sweep, key=lambda e: (e["held_out"], e["seen"]))
    report = {"model": model, "sweep": sweep, "best": best, "prompts_per_split": prompts, "seeds": seeds}
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    make = sub.add_parser("make", help="write the captioned folder")
    make.add_argument("out")
    make.add_argument("--size", type=int, default=6000)
    make.add_argument("--resolution", type=int, default=32)
    make.add_argument("--seed", type=int, default=0)
    ev = sub.add_parser("eval", help="adherence of a pipeline folder over guidance weights")
    ev.add_argument("--model", required=True)
    ev.add_argument("--out", required=True)
    ev.add_argument("--weights", default="0,1,3,6")
    ev.add_argument("--prompts", type=int, default=32, help="prompts per split")
    ev.add_argument("--seeds", type=int, default=4)
    ev.add_argument("--steps", type=int, default=20)
    ev.add_argument("--resolution", type=int, default=32)
    args = parser.parse_args(argv)
    if args.command == "make":
        make_folder(Path(args.out), size=args.size, resolution=args.resolution, seed=args.seed)
    else:
        evaluate(args.model, Path(args.out), weights=[float(w) for w in args.weights.split(",")],
                 prompts=args.prompts, seeds=args.seeds, steps=args.steps, resolution=args.resolution)
    return 0


if __name__ == "__main__":
    sys.exit(main())
