"""Print the README's Results tables from a finished quickstart folder (default runs/quickstart)."""
from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from PIL import Image

from ldm.grid import make_grid


def _pct(rate: dict) -> str:
    return "–" if rate.get("rate") is None else f"{100 * rate['rate']:.0f}% ({rate['correct']}/{rate['total']})"


def _colour_and_shape(samples: list[dict], w: float, split: str) -> str:
    """The baseline notes' "both" measure: colour and shape right, whatever the other attributes."""
    rows = [s for s in samples if s["w"] == w and s["split"] == split]
    right = sum(s["attributes"]["colour"] and s["attributes"]["shape"] for s in rows)
    return f"{100 * right / len(rows):.0f}%" if rows else "–"


def report(folder: Path) -> str:
    timings = json.loads((folder / "timings.json").read_text())
    vae_history = json.loads((folder / "stage1" / "metrics.json").read_text())["history"]
    evaluation = json.loads((folder / "eval" / "eval.json").read_text())
    lines = ["| stage | wall time |", "|---|---|"]
    lines += [f"| {name} | {seconds / 60:.1f} min |" for name, seconds in timings.items()]
    lines.append(f"| total | {sum(timings.values()) / 60:.1f} min |")
    last = vae_history[-1]
    lines += ["", f"Stage 1 (held-out shapes, 32 px, step {last['step']}): PSNR {last['psnr']:.1f} dB, "
                  f"SSIM {last['ssim']:.3f}.", "",
              "| w (guidance_scale) | adherence, seen | adherence, held-out | colour+shape, seen | "
              "colour+shape, held-out | diversity |", "|---|---|---|---|---|---|"]
    for entry in evaluation["sweep"]:
        lines.append(f"| {entry['w']:g} ({entry['guidance_scale']:g}) | {_pct(entry['adherence']['seen'])} | "
                     f"{_pct(entry['adherence']['held_out'])} | "
                     f"{_colour_and_shape(evaluation['samples'], entry['w'], 'seen')} | "
                     f"{_colour_and_shape(evaluation['samples'], entry['w'], 'held_out')} | "
                     f"{entry['diversity']['all']:.3f} |")
    by_background = [entry for entry in evaluation["sweep"] if entry.get("adherence_by_background")]
    backgrounds = sorted({b for e in by_background for split in e["adherence_by_background"].values()
                          for b in split})  # none for simple prompts, which state no background
    if backgrounds:
        lines += ["", "| w | " + " | ".join(f"seen, {b} | held-out, {b}" for b in backgrounds) + " |",
                  "|---" * (1 + 2 * len(backgrounds)) + "|"]
        for entry in by_background:
            cells = [_pct(entry["adherence_by_background"][split].get(b, {}))
                     for b in backgrounds for split in ("seen", "held_out")]
            lines.append(f"| {entry['w']:g} | " + " | ".join(cells) + " |")
    for key, scenes in (("readback", "test"), ("readback_held_out", "held-out")):
        readback = evaluation.get("vae", {}).get(key)
        if readback:
            per = ", ".join(f"{name} {100 * v['rate']:.0f}%" for name, v in readback["attributes"].items()
                            if v["rate"] is not None)  # the simple variant states no size, position or background
            lines += ["", f"Reader on the VAE's reconstructions ({readback['adherence']['total']} {scenes} scenes): "
                          f"all attributes right {100 * readback['adherence']['rate']:.0f}% ({per})."]
    lines += ["", f"best: {json.dumps(evaluation['best'])}"]
    return "\n".join(lines)


def readme_images(folder: Path, out: Path, *, w: float, prefix: str = "quickstart") -> None:
    """The README's figures: the guidance plot, the last stage-1 reconstruction grid, samples at `w` (four
    seeds each of three seen and three held-out prompts, captioned when every attribute was right), and the
    three held-out prompts that miss most on the background where held-out prompts fail most, as
    `{prefix}_guidance.png`, `{prefix}_reconstructions.png`, `{prefix}_samples.png` and
    `{prefix}_heldout_{background}.png`."""
    out.mkdir(parents=True, exist_ok=True)
    Image.open(folder / "eval" / "adherence_vs_guidance.png").save(out / f"{prefix}_guidance.png", optimize=True)
    recon = Image.open(sorted((folder / "stage1" / "samples").glob("step-*.png"))[-1])
    recon.resize((recon.width * 3, recon.height * 3), Image.NEAREST).save(out / f"{prefix}_reconstructions.png",
                                                                          optimize=True)
    evaluation = json.loads((folder / "eval" / "eval.json").read_text())
    prompts = {split: [p for p in evaluation["prompts"] if p["split"] == split] for split in ("seen", "held_out")}
    _sample_figure(folder, evaluation, prompts["seen"][:3] + prompts["held_out"][:3], w,
                   out / f"{prefix}_samples.png")
    # The background on which held-out prompts fail most at w, with the three of its held-out prompts that
    # miss most often there (ties in prompt order).
    entry = next((e for e in evaluation["sweep"] if e["w"] == w), {})
    rates = {b: r["rate"] for b, r in entry.get("adherence_by_background", {}).get("held_out", {}).items()}
    if len(rates) > 1:
        worst = min(rates, key=rates.get)
        misses = Counter(s["prompt"] for s in evaluation["samples"] if s["w"] == w and not s["adherent"])
        on_worst = [p for p in prompts["held_out"] if p["scene"]["background"] == worst]
        chosen = sorted(on_worst, key=lambda p: -misses[p["prompt"]])[:3]
        _sample_figure(folder, evaluation, chosen, w, out / f"{prefix}_heldout_{worst}.png")


def _sample_figure(folder: Path, evaluation: dict, prompts: list[dict], w: float, path: Path) -> None:
    """Four seeds of each prompt at `w`, one row per prompt, captioned when every attribute was right."""
    images, captions = [], []
    for item in prompts:
        rows = [s for s in evaluation["samples"] if s["w"] == w and s["prompt"] == item["prompt"]][:4]
        for k, sample in enumerate(rows):
            images.append(Image.open(folder / "eval" / sample["file"]).convert("RGB").resize((96, 96),
                                                                                          Image.NEAREST))
            label = f"{'held-out: ' if item['split'] == 'held_out' else ''}{item['prompt']}" if k == 0 else ""
            captions.append(label or ("all attributes right" if sample["adherent"] else ""))
    make_grid(images, captions=captions, ncols=4).save(path, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("folder", nargs="?", default="runs/quickstart", type=Path)
    parser.add_argument("--images", type=Path, help="also write the README's figures into this folder")
    parser.add_argument("--prefix", default="quickstart", help="file name prefix of the figures")
    parser.add_argument("--w", type=float, help="guidance weight of the sample figure (default: the best w)")
    args = parser.parse_args()
    print(report(args.folder))
    if args.images:
        best = json.loads((args.folder / "eval" / "eval.json").read_text())["best"]["w"]
        readme_images(args.folder, args.images, w=best if args.w is None else args.w,
                      prefix=args.prefix)


if __name__ == "__main__":
    main()
