"""The README's emoji figure from an `ldm-eval --task emoji` folder: seen names beside held-out (emoji, tone) pairs.

    python benchmarks/emoji_figure.py runs/quickstart_emoji/eval --w 2 --rows 8 --out docs/images/emoji_samples.png

Two panels side by side, `--rows` prompts each (the first of each split, in eval.json's order): the real glyph,
then the samples at `--w` (up to four seeds), each sample captioned with what the readers made of it.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from PIL import Image

from ldm.eval.emoji_reader import render_glyphs
from ldm.grid import make_grid
from pipelines.evaluate_emoji import EmojiPrompt, grid_tiles

SEEDS = 4
CELL = 96  # pixels per tile: 32 and 64 px samples scale up by a whole factor


def _verdict(sample: dict) -> str:
    if sample["adherent"]:
        return "right"
    return "wrong tone" if sample["emoji_right"] else "wrong emoji"


def panel(report: dict, eval_dir: Path, split: str, w: float, rows: int, glyphs) -> Image.Image:
    """One grid: for the first `rows` prompts of `split`, the real glyph and the samples at w."""
    glyph_of = {s: i for i, s in enumerate(glyphs.sequences)}
    prompts = [p for p in report["prompts"] if p["split"] == split][:rows]
    tiles, captions = [], []
    for prompt in prompts:
        samples = [s for s in report["samples"]
                   if s["w"] == w and s["split"] == split and s["prompt"] == prompt["prompt"]][:SEEDS]
        images = [Image.open(eval_dir / s["file"]).convert("RGB") for s in samples]
        row, _ = grid_tiles(glyphs.pixels[glyph_of[prompt["sequence"]]], images, EmojiPrompt(**prompt),
                            max(1, CELL // glyphs.pixels.shape[1]))
        tiles += row
        captions += [prompt["prompt"], *(_verdict(s) for s in samples)]
    return make_grid(tiles, captions=captions, ncols=1 + SEEDS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("eval_dir", type=Path)
    parser.add_argument("--w", type=float, default=None, help="guidance weight (default: the evaluation's best)")
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    report = json.loads((args.eval_dir / "eval.json").read_text())
    w = report["best"]["w"] if args.w is None else args.w
    glyphs = render_glyphs(report["config"]["resolution"])
    left, right = (panel(report, args.eval_dir, split, w, args.rows, glyphs) for split in ("seen", "held_out"))
    figure = Image.new("RGB", (left.width + right.width, max(left.height, right.height)), (255, 255, 255))
    figure.paste(left, (0, 0))
    figure.paste(right, (left.width, 0))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.save(args.out)
    print(f"wrote {args.out} (w = {w:g}; seen names left, held-out (emoji, tone) pairs right)")


if __name__ == "__main__":
    main()
