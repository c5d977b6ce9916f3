"""Print the README's Results tables from a finished quickstart folder (default runs/quickstart)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path


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
    lines += ["", f"best: {json.dumps(evaluation['best'])}"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("folder", nargs="?", default="runs/quickstart", type=Path)
    print(report(parser.parse_args().folder))


if __name__ == "__main__":
    main()
