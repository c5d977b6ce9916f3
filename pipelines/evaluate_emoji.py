"""`ldm-eval --task emoji`: how well a model trained on the built-in emoji data follows its prompts, read offline.

    ldm-eval --task emoji --model PIPELINE_DIR --out EVALDIR --weights 0,1,2,4,8

Prompts are CLDR names of the installed font's glyphs, in three splits:
- "seen": names of the train split (one emoji per group, groups in an order shuffled by --seed; no held-out pair);
- "held_out": the held-out (emoji, skin tone) pairs of `emoji:heldouttones=1` (`ldm.data.emoji`), which no
  training caption of a model trained on that source named;
- "seen_tones": the same emoji as the held-out prompts, one to one, in a tone the model did see: the composition
  baseline, so that held-out minus seen_tones is what composing an unseen pair costs.
Each prompt is sampled with the same seeds at every w (guidance_scale = w + 1). Every image is read by the
retrieval reader (`ldm.eval.emoji_reader`: its emoji right when the prompt's emoji is the nearest of all the
font's 1,904 emoji) and, where the prompt names a skin tone, by the tone reader (`ldm.eval.tone_reader`); an
image adheres when both are right. EVALDIR gets eval.json, adherence_vs_guidance.png, grid_w{w}.png (first
column: the real glyph) and the PNGs under samples/.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ldm.data import emoji as emoji_data
from ldm.eval import metrics
from ldm.eval.emoji_reader import EmojiReader, Glyphs, render_glyphs
from ldm.eval.tone_reader import ToneReader
from ldm.grid import make_grid
from ldm.guidance import guidance_scale_from_weight
from pipelines.evaluate import (GRID_CELL, GRID_SEEDS, VAE_BATCH, EvalConfig, plot_sweep, prepare_pipeline,
                                sample_and_save, vae_figures)

logger = logging.getLogger("ldm-eval")

SPLITS = ("seen", "seen_tones", "held_out")
SPLIT_LABELS = {"seen": "seen", "seen_tones": "seen tone", "held_out": "held-out"}


@dataclass(frozen=True)
class EmojiPrompt:
    split: str  # one of SPLITS
    prompt: str  # the CLDR name, as the training captions write it
    sequence: str  # the emoji it names
    tone: str | None  # the skin tone it names, None when it names none


def _prompt(split: str, glyphs: Glyphs, index: int) -> EmojiPrompt:
    sequence = glyphs.sequences[index]
    tones = emoji_data.sequence_tones(sequence)
    return EmojiPrompt(split, glyphs.captions[index], sequence, tones[0] if len(tones) == 1 else None)


def build_emoji_prompts(glyphs: Glyphs, tone_reader: ToneReader, *, prompts_per_split: int,
                        seed: int) -> list[EmojiPrompt]:
    """Up to `prompts_per_split` prompts per split (seen, then held-out, then their seen-tone twins), a pure
    function of `seed` and the font. Held-out prompts are pairs whose tone the tone reader reads."""
    rng = np.random.default_rng([seed, 18])
    by_group: dict[str, list[int]] = {}
    for index, sequence in enumerate(glyphs.sequences):
        if emoji_data.in_split(sequence, glyphs.captions[index], "train", heldout_tones=True):
            by_group.setdefault(glyphs.groups[index], []).append(index)
    groups = sorted(by_group)
    seen = [_prompt("seen", glyphs, int(rng.choice(by_group[groups[g]])))
            for g in rng.permutation(len(groups))[:prompts_per_split]]
    held_out_index = [i for i, (s, c) in enumerate(zip(glyphs.sequences, glyphs.captions))
                      if emoji_data.in_split(s, c, "heldout") and tone_reader.reads(s)]
    held_out = [_prompt("held_out", glyphs, held_out_index[k])
                for k in rng.permutation(len(held_out_index))[:prompts_per_split]]
    twins = []
    for item in held_out:  # the same emoji in a seen tone (one tone, not the held-out one)
        others = [i for i in by_group[emoji_data.emoji_group(item.sequence)]
                  if len(emoji_data.sequence_tones(glyphs.sequences[i])) == 1]
        twins.append(_prompt("seen_tones", glyphs, int(rng.choice(others))))
    return seen + held_out + twins


def read_samples(images, item: EmojiPrompt, reader: EmojiReader, tone_reader: ToneReader) -> list[dict]:
    """One reading per image of `item`: emoji rank / right / nearest caption, tone read / right, adherent."""
    rows = []
    for reading in reader.read(images, [item.sequence] * len(images)):
        row = {"emoji_rank": reading["rank"], "emoji_right": reading["right"], "nearest": reading["nearest"],
               "tone": item.tone, "tone_read": None, "tone_right": None}
        rows.append(row)
    if item.tone is not None:
        for row, image in zip(rows, images):
            row["tone_read"] = tone_reader.read(image, item.sequence)
            row["tone_right"] = row["tone_read"] == item.tone
    for row in rows:
        row["adherent"] = row["emoji_right"] and row["tone_right"] in (None, True)
    return rows


def grid_tiles(glyph: np.ndarray, images, item: EmojiPrompt, scale: int) -> tuple[list, list]:
    """One grid row: the real glyph, then `images`, all enlarged `scale` times; and its captions."""
    real = Image.fromarray((glyph * 255).round().astype(np.uint8))
    tiles = [im.resize((im.width * scale, im.height * scale), Image.NEAREST) for im in [real, *images]]
    return tiles, [f"{SPLIT_LABELS[item.split]}: {item.prompt}"] + [""] * len(images)


def run_emoji_sweep(pipe, prompts: list[EmojiPrompt], config: EvalConfig, out_dir: Path, glyphs: Glyphs,
                    readers: tuple[EmojiReader, ToneReader]) -> tuple[list[dict], list[dict]]:
    """Sample, save and read every (w, prompt, seed); one grid per w. Returns (samples, diversities)."""
    samples, diversities = [], []
    glyph_of = {s: i for i, s in enumerate(glyphs.sequences)}
    shown = min(GRID_SEEDS, config.seeds_per_prompt)
    for w in config.guidance_weights():
        started, tiles, captions = time.perf_counter(), [], []
        for _, item, item_seeds, images, files in sample_and_save(pipe, list(enumerate(prompts)), config, w,
                                                                  out_dir):
            for row, seed, file in zip(read_samples(images, item, *readers), item_seeds, files):
                samples.append({"w": w, "split": item.split, "prompt": item.prompt, "seed": seed,
                                "file": file, **row})
            if len(images) > 1:
                diversities.append({"w": w, "split": item.split, "prompt": item.prompt,
                                    "diversity": metrics.diversity(images)})
            new_tiles, new_captions = grid_tiles(glyphs.pixels[glyph_of[item.sequence]], images[:shown],
                                                  item, max(1, GRID_CELL // config.resolution))
            tiles, captions = tiles + new_tiles, captions + new_captions
        make_grid(tiles, captions=captions, ncols=1 + shown).save(out_dir / f"grid_w{w:g}.png")
        rate = np.mean([s["adherent"] for s in samples if s["w"] == w])
        logger.info("w = %g: adherence %.1f%% (%.1f s)", w, 100 * rate, time.perf_counter() - started)
    return samples, diversities


def _rate(flags) -> dict:
    flags = [bool(f) for f in flags]
    return {"rate": sum(flags) / len(flags) if flags else None, "correct": sum(flags), "total": len(flags)}


def summarise_emoji_sweep(samples: list[dict], diversities: list[dict], *, weights) -> list[dict]:
    """Per w (in `weights` order): `adherence[split]`, `emoji[split]` (retrieval top-1), `emoji_top5[split]`,
    `tone[split]` (over samples whose prompt names a tone), each {rate, correct, total} (rate None when empty),
    and `diversity[split]` / `diversity["all"]`, the mean over prompts (None when no prompt had 2 images)."""
    summary = []
    for w in weights:
        entry = {"w": w, "guidance_scale": guidance_scale_from_weight(w), "adherence": {}, "emoji": {},
                 "emoji_top5": {}, "tone": {}, "diversity": {}}
        for split in SPLITS:
            rows = [s for s in samples if s["w"] == w and s["split"] == split]
            entry["adherence"][split] = _rate(s["adherent"] for s in rows)
            entry["emoji"][split] = _rate(s["emoji_right"] for s in rows)
            entry["emoji_top5"][split] = _rate(s["emoji_rank"] <= 5 for s in rows)
            entry["tone"][split] = _rate(s["tone_right"] for s in rows if s["tone"] is not None)
        for split in SPLITS + ("all",):
            values = [d["diversity"] for d in diversities if d["w"] == w and split in (d["split"], "all")]
            entry["diversity"][split] = float(np.mean(values)) if values else None
        summary.append(entry)
    return summary


@torch.no_grad()
def vae_readback(vae, glyphs: Glyphs, prompts: list[EmojiPrompt], readers) -> dict:
    """The readers on the VAE's reconstructions (posterior mean, decoded) of the real glyphs of `prompts`, per
    split: the ceiling stage 1 puts on stage 2 (a glyph the decoder cannot render readably cannot be sampled)."""
    glyph_of = {s: i for i, s in enumerate(glyphs.sequences)}
    pixels = torch.from_numpy(glyphs.pixels[[glyph_of[p.sequence] for p in prompts]]).permute(0, 3, 1, 2) * 2 - 1
    decoded = []
    for start in range(0, len(pixels), VAE_BATCH):
        x = pixels[start:start + VAE_BATCH].to(device=vae.device, dtype=vae.dtype)
        decoded.append(vae.decode(vae.encode(x).latent_dist.mode()).sample.float().cpu())
    images = ((torch.cat(decoded).clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy()
    rows = [read_samples([image], item, *readers)[0] for image, item in zip(images, prompts)]
    return {split: _rate(r["adherent"] for r, p in zip(rows, prompts) if p.split == split) for split in SPLITS}


def trained_without_held_out_pairs(model: str) -> bool | None:
    """Whether the folder's train_config.json names emoji data with heldouttones=1 (None: no such file)."""
    path = Path(model) / "train_config.json"
    if not path.is_file():
        return None
    data = str(json.loads(path.read_text()).get("data", ""))
    return data.startswith("emoji") and "heldouttones=1" in data


def _best_weight(sweep: list[dict]) -> dict:
    """The w with the highest held-out adherence (ties: the smaller w, the more diverse)."""
    rated = [e for e in sweep if e["adherence"]["held_out"]["rate"] is not None] or sweep
    best = max(rated, key=lambda e: (e["adherence"]["held_out"]["rate"] or 0.0, -e["w"]))
    return {"w": best["w"], **{f"{split}_adherence": best["adherence"][split]["rate"] for split in SPLITS}}


def evaluate_emoji(config: EvalConfig) -> dict:
    """Run the emoji evaluation and write EVALDIR; returns the eval.json content."""
    out_dir = Path(config.out)
    config, pipe, loras, device = prepare_pipeline(config, out_dir)
    glyphs = render_glyphs(config.resolution)
    readers = (EmojiReader(glyphs), ToneReader(glyphs))
    prompts = build_emoji_prompts(glyphs, readers[1], prompts_per_split=config.prompts_per_split, seed=config.seed)
    unseen = trained_without_held_out_pairs(config.model)
    if unseen is False:
        logger.warning("%s was not trained on emoji:heldouttones=1: its 'held-out' pairs were in its captions.",
                       config.model)
    logger.info("%d prompts (%s) x %d seeds x %d weights on %s", len(prompts),
                ", ".join(f"{sum(p.split == s for p in prompts)} {s}" for s in SPLITS),
                config.seeds_per_prompt, len(config.guidance_weights()), device)
    started = time.perf_counter()
    samples, diversities = run_emoji_sweep(pipe, prompts, config, out_dir, glyphs, readers)
    sampling_s = time.perf_counter() - started
    sweep = summarise_emoji_sweep(samples, diversities, weights=config.guidance_weights())
    plot_sweep(sweep, out_dir)
    vae = vae_figures(pipe, config)
    if "skipped" not in vae:
        vae["readback"] = vae_readback(pipe.vae, glyphs, prompts, readers)
    report = {
        "task": "emoji", "config": dataclasses.asdict(config), "device": device,
        "sampling_seconds": round(sampling_s, 2), "trained_without_held_out_pairs": unseen,
        "reader": {"candidates": len(readers[0].group_names), "chance": readers[0].chance,
                   "tone_classes": ["none", *emoji_data.TONES]},
        "diversity_metric": "mean pairwise RMS pixel distance in [0, 1] between the images of one prompt",
        "best": _best_weight(sweep), "sweep": sweep, "vae": vae,
        "fid_kid": {"skipped": "not computed for --task emoji"}, "loras": loras,
        "prompts": [dataclasses.asdict(p) for p in prompts], "diversity_per_prompt": diversities,
        "samples": samples,
    }
    (out_dir / "eval.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def evaluate_emoji_and_print(config: EvalConfig) -> dict:
    """Run `evaluate_emoji` and print the adherence table (emoji and tone right) per split and w."""
    report = evaluate_emoji(config)
    print("w     " + "".join(f"{SPLIT_LABELS[s]:>11}" for s in SPLITS) + "  diversity")
    for entry in report["sweep"]:
        rates = [entry["adherence"][s]["rate"] for s in SPLITS] + [entry["diversity"]["all"]]
        print(f"{entry['w']:<5g} " + "".join("          -" if r is None else f"{r:11.3f}" for r in rates))
    print(f"wrote {Path(config.out) / 'eval.json'}, adherence_vs_guidance.png and grid_w*.png")
    return report
