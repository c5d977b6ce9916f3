"""bf16 autocast against fp32 on a trained shapes model: speed, pixel drift, and whether the images still read right.

    python benchmarks/sampling_precision.py --model runs/quickstart/stage2 --w 2

Samples the evaluation prompt set (seen and held-out compositions) with the same seeds in fp32 and under CPU bf16
autocast, reads every image back with the shapes attribute reader, and prints adherence, the max and mean pixel
difference, and the time ratio, all measured in this run.
"""
from __future__ import annotations

import argparse
import contextlib
import time

import numpy as np
import torch

from ldm.eval.metrics import adherence, prompt_statement
from ldm.eval.attributes import read_scene
from ldm.guidance import guidance_scale_from_weight
from pipelines.evaluate import build_prompt_set, sample_seeds
from pipelines.folder import load_pipeline
from pipelines.schedulers import make_scheduler


def sample_all(pipe, prompts, *, w: float, seeds: int, steps: int, precision) -> tuple[list[np.ndarray], float]:
    """Images (uint8 HWC) for every prompt and seed, and the seconds it took."""
    images, start = [], time.perf_counter()
    for index, item in enumerate(prompts):
        generators = [torch.Generator().manual_seed(s) for s in sample_seeds(seed=0, prompt_index=index, count=seeds)]
        with precision:
            out = pipe(item.prompt, num_inference_steps=steps, guidance_scale=guidance_scale_from_weight(w),
                       num_images_per_prompt=seeds, generator=generators, output_type="np").images
        images += list((np.clip(out, 0, 1) * 255).round().astype(np.uint8))
    return images, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--w", type=float, default=2.0, help="guidance weight (guidance_scale = w + 1)")
    parser.add_argument("--seeds", type=int, default=4, help="images per prompt")
    parser.add_argument("--prompts-per-split", type=int, default=12)
    parser.add_argument("--objects", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    pipe = load_pipeline(args.model)
    pipe.scheduler = make_scheduler("dpm++", pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    prompts = build_prompt_set(prompts_per_split=args.prompts_per_split, max_objects=args.objects, seed=0)
    settings = {"fp32": contextlib.nullcontext(), "bf16 autocast": torch.autocast("cpu", dtype=torch.bfloat16)}
    results = {}
    for name, precision in settings.items():
        sample_all(pipe, prompts[:1], w=args.w, seeds=args.seeds, steps=args.steps, precision=precision)  # warm-up
        results[name] = sample_all(pipe, prompts, w=args.w, seeds=args.seeds, steps=args.steps, precision=precision)
    reference = results["fp32"][0]
    for name, (images, seconds) in results.items():
        statements = [prompt_statement(item.scene) for item in prompts for _ in range(args.seeds)]
        adherent = [adherence(s, read_scene(image)) for s, image in zip(statements, images)]
        diff = np.abs(np.stack(images).astype(int) - np.stack(reference).astype(int))
        print(f"{name:14s} {seconds:6.1f} s  speed vs fp32 {results['fp32'][1] / seconds:4.2f}x  "
              f"adherence {np.mean(adherent):6.1%}  pixel diff vs fp32 max {diff.max():3d} mean {diff.mean():.2f} /255")


if __name__ == "__main__":
    main()
