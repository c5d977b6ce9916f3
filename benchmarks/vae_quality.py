"""Held-out PSNR / SSIM of the cpu-f4 VAE on the built-in shapes data against wall time.

    OMP_NUM_THREADS=2 python benchmarks/vae_quality.py --budget-s 600            # the README figure
    OMP_NUM_THREADS=2 python benchmarks/vae_quality.py --budget-s 60 --out /tmp/b # smoke test

A short calibration run measures seconds per step; the real run is then sized to fill the budget, so its
cosine learning-rate schedule ends on time (as a user who knows their budget would set --max-steps). The recipe
(L2, lr 2e-3, batch 16) is train_vae.py's default.
Prints one row per validation: step, wall seconds, PSNR, SSIM.
Target: >= 30 dB within 600 s at 32 px on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

import train_vae

CALIBRATION_STEPS = 20
BATCH_SIZE = 16  # the quickstart's: more steps per second mattered more than a larger batch (README, Results)
VALIDATIONS = 8  # rows in the printed table
TARGET_PSNR_DB = 30.0


def _run(out: Path, *, data: str, max_steps: int, val_every: int, val_images: int) -> dict:
    argv = ["--data", data, "--output-dir", str(out), "--preset", "cpu-f4", "--resolution", "32",
            "--batch-size", str(BATCH_SIZE), "--lr-schedule", "cosine",
            "--max-steps", str(max_steps), "--val-every", str(val_every), "--sample-every", str(max_steps),
            "--checkpoint-every", str(max_steps),
            "--val-images", str(val_images), "--scaling-images", "256"]
    if train_vae.main(argv) != 0:
        raise SystemExit("training failed; see the error above.")
    return json.loads((out / "metrics.json").read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-s", type=float, default=600.0, help="training wall time to fill (s)")
    parser.add_argument("--data", default="shapes", help="data source (ldm.data.open_dataset)")
    parser.add_argument("--val-images", type=int, default=256, help="held-out images per validation")
    parser.add_argument("--out", default=None, help="run folder to keep (default: a temporary folder)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    root = Path(args.out or tempfile.mkdtemp(prefix="vae_quality_"))

    calibration = _run(root / "calibration", data=args.data, max_steps=CALIBRATION_STEPS,
                       val_every=CALIBRATION_STEPS, val_images=args.val_images)
    # Includes one validation and a grid, so it slightly overestimates and the run ends a little early.
    seconds_per_step = calibration["elapsed_s"] / CALIBRATION_STEPS
    max_steps = max(VALIDATIONS, int(args.budget_s / seconds_per_step))
    metrics = _run(root / "run", data=args.data, max_steps=max_steps,
                   val_every=max(1, max_steps // VALIDATIONS), val_images=args.val_images)

    print(f"cpu-f4, {args.data} at 32 px, batch {BATCH_SIZE}, {max_steps} steps "
          f"({seconds_per_step:.3f} s/step calibrated), {args.val_images} held-out images; "
          f"run in {root / 'run'}")
    print(f"{'step':>6} {'wall_s':>8} {'psnr_db':>8} {'ssim':>7}")
    for row in metrics["history"]:
        print(f"{row['step']:>6} {row['elapsed_s']:>8.1f} {row['psnr']:>8.2f} {row['ssim']:>7.4f}")
    reached = next((row for row in metrics["history"] if row["psnr"] >= TARGET_PSNR_DB), None)
    outcome = f"reached at {reached['elapsed_s']:.0f} s, step {reached['step']}" if reached else "not reached"
    print(f"target {TARGET_PSNR_DB} dB: {outcome}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
