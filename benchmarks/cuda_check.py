"""The CUDA paths, measured on a GPU machine in one run: each trainer under every mixed precision and attention
kernel, then sampling in every dtype against fp32 and against a stock diffusers pipeline.

    python benchmarks/cuda_check.py --work /tmp/cuda_check

On one H100 a stage-1 run of 600 steps took 44-53 s and a stage-2 run of 1,200 steps 127 s (99 s of them training),
so the defaults (600 steps each) should fit in about 7 minutes, inside one 10-minute device call.

Stage 1 (train_vae.py with its defaults) runs with --mixed-precision no / fp16 / bf16 and reports held-out
PSNR. Stage 2 (train_ldm.py with its defaults, on the fp32 VAE) runs with fp32 + SDPA, fp32 + xformers
(when installed), fp16 and bf16, and reports a validation loss computed the same way for every run (fp32, fixed
test-split latents, noise and timesteps). Sampling takes the fp32 stage-2 folder and reports, per dtype and
kernel, seconds, pixel difference from fp32 SDPA and shapes-reader adherence, plus the pixel difference between
our pipeline and diffusers' StableDiffusionPipeline on the same folder, seeds and sampler.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import DDPMScheduler, StableDiffusionPipeline

import train_ldm
from ldm.attention import set_attention, xformers_runs
from ldm.conditioning import encode_prompt
from ldm.data import open_dataset
from ldm.eval.metrics import adherence, prompt_statement
from ldm.eval.attributes import read_scene
from ldm.guidance import guidance_scale_from_weight
from ldm.latent_cache import encode_dataset
from ldm.objective import diffusion_loss, min_snr_weights, snr, training_target
from pipelines.evaluate import build_prompt_set, sample_seeds
from pipelines.folder import load_pipeline
from pipelines.schedulers import make_scheduler

DATA = "shapes:objects=1"
DEVICE = "cuda"  # main() allows "cpu" only for --smoke, a quick run of this script's own code


def run(argv: list[str], log: Path) -> float:
    """Run `python -m ...argv`, output to `log`; seconds taken. A failure prints the log's tail and stops."""
    start = time.perf_counter()
    with log.open("w") as handle:
        result = subprocess.run([sys.executable, "-m", *argv], stdout=handle, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        print(log.read_text()[-3000:])
        raise SystemExit(f"{argv[0]} failed (exit {result.returncode}); log: {log}")
    return time.perf_counter() - start


def stage1(work: Path, steps: int, precisions: list[str]) -> dict[str, dict]:
    rows = {}
    for precision in precisions if DEVICE == "cuda" else ("no", "bf16"):
        out = work / f"vae_{precision}"
        seconds = run(["train_vae", "--data", DATA, "--output-dir", str(out), "--preset", "cpu-f4",
                       "--max-steps", str(steps), "--checkpoint-every", "500",  # the recipe: the defaults
                       "--val-every", str(steps), "--sample-every", str(steps), "--mixed-precision", precision],
                      work / f"vae_{precision}.log")
        metrics = json.loads((out / "metrics.json").read_text())
        rows[precision] = {"seconds": seconds, "psnr": metrics["psnr"], "ssim": metrics["ssim"]}
        print(f"stage 1 {precision}: {rows[precision]}", flush=True)
    return rows


@torch.no_grad()
def validation_loss(folder: Path, *, images: int = 512) -> float:
    """Min-SNR-weighted v-loss of a stage-2 folder on fixed test-split latents, noise and timesteps, in fp32."""
    pipe = load_pipeline(folder, device=DEVICE)
    set_attention(pipe, "sdpa", DEVICE)
    dataset = open_dataset(DATA, resolution=32, split="test", size=images)
    cache = encode_dataset(pipe.vae, dataset, batch_size=128, device=DEVICE)
    generator = torch.Generator().manual_seed(0)
    latents = cache.sample(torch.arange(len(cache)), scaling_factor=pipe.vae.config.scaling_factor,
                           generator=generator)
    noise = torch.randn(latents.shape, generator=generator)
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)  # the saved sampler holds the training betas
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (len(cache),), generator=generator)
    prompt_embeds = encode_prompt(pipe.text_encoder, pipe.tokenizer, cache.captions)
    latents, noise, timesteps = latents.to(DEVICE), noise.to(DEVICE), timesteps.to(DEVICE)
    noise_pred = pipe.unet(scheduler.add_noise(latents, noise, timesteps), timesteps, prompt_embeds).sample
    trained = json.loads((folder / train_ldm.CONFIG_FILE).read_text())  # the loss weighting it was trained with
    weights = min_snr_weights(snr(scheduler, timesteps), gamma=trained["min_snr_gamma"],
                              prediction_type=trained["prediction_type"], floor=trained["snr_floor"])
    return diffusion_loss(noise_pred, training_target(scheduler, latents, noise, timesteps), weights).item()


def stage2(work: Path, vae: Path, steps: int, *, with_xformers: bool) -> dict[str, dict]:
    runs = [("no", "sdpa"), ("no", "xformers"), ("fp16", "auto"), ("bf16", "auto")]
    if DEVICE == "cpu":
        runs = [("no", "sdpa"), ("bf16", "auto")]
    elif not with_xformers:
        runs.remove(("no", "xformers"))
    rows = {}
    for precision, attention in runs:
        name = f"{precision}_{attention}"
        out = work / f"ldm_{name}"
        seconds = run(["train_ldm", "--data", DATA, "--vae", str(vae), "--output-dir", str(out),
                       "--max-steps", str(steps), "--checkpoint-every", "250",  # the recipe: the defaults
                       "--mixed-precision", precision, "--attention", attention], work / f"ldm_{name}.log")
        used = "xformers" if "attention: xformers" in (work / f"ldm_{name}.log").read_text() else "sdpa"
        rows[name] = {"seconds": seconds, "attention": used, "val_loss": validation_loss(out), "folder": str(out)}
        print(f"stage 2 {name}: {rows[name]}", flush=True)
    return rows


def synchronize() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def sample_all(pipe, prompts, *, seeds: int, steps: int, w: float) -> tuple[np.ndarray, float]:
    """uint8 images (N, H, W, 3) of every prompt x seed, and the seconds taken (after one warm-up call)."""
    call = dict(num_inference_steps=steps, guidance_scale=guidance_scale_from_weight(w), output_type="np")
    pipe(prompts[0].prompt, generator=torch.Generator().manual_seed(0), **call)
    synchronize()
    start, images = time.perf_counter(), []
    for index, item in enumerate(prompts):
        generators = [torch.Generator().manual_seed(s) for s in sample_seeds(seed=0, prompt_index=index,
                                                                             count=seeds)]
        out = pipe(item.prompt, num_images_per_prompt=seeds, generator=generators, **call).images
        images.append((np.clip(out, 0, 1) * 255).round().astype(np.uint8))
    synchronize()
    return np.concatenate(images), time.perf_counter() - start


def sampling(folder: Path, *, seeds: int, steps: int, w: float, with_xformers: bool) -> dict[str, dict]:
    prompts = build_prompt_set(prompts_per_split=12, max_objects=1, seed=0)
    statements = [prompt_statement(item.scene) for item in prompts for _ in range(seeds)]
    settings = [("fp32", "sdpa"), ("fp32", "xformers"), ("fp16", "sdpa"), ("fp16", "xformers"),
                ("bf16", "sdpa"), ("bf16", "xformers")]
    if DEVICE == "cpu":
        settings = [("fp32", "sdpa")]
    elif not with_xformers:
        settings = [s for s in settings if s[1] != "xformers"]
    dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    results = {}
    for dtype, attention in settings:
        pipe = load_pipeline(folder, device=DEVICE, dtype=dtypes[dtype])
        set_attention(pipe, attention, DEVICE)
        pipe.scheduler = make_scheduler("dpm++", pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        results[f"{dtype}_{attention}"] = sample_all(pipe, prompts, seeds=seeds, steps=steps, w=w)
        print(f"sampled {dtype} {attention}: {results[f'{dtype}_{attention}'][1]:.1f} s", flush=True)
    stock = StableDiffusionPipeline.from_pretrained(str(folder), safety_checker=None,
                                                    requires_safety_checker=False).to(DEVICE)
    stock.scheduler = make_scheduler("dpm++", stock.scheduler.config)
    stock.set_progress_bar_config(disable=True)
    results["stock diffusers fp32"] = sample_all(stock, prompts, seeds=seeds, steps=steps, w=w)
    reference, reference_s = results["fp32_sdpa"]
    rows = {}
    for name, (images, seconds) in results.items():
        diff = np.abs(images.astype(int) - reference.astype(int))
        rows[name] = {"seconds": seconds, "speed_vs_fp32_sdpa": reference_s / seconds,
                      "max_diff": int(diff.max()), "mean_diff": float(diff.mean()),
                      "adherence": float(np.mean([adherence(s, read_scene(i)) for s, i in zip(statements, images)]))}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="runs/cuda_check", help="folder for the runs and logs")
    parser.add_argument("--vae-steps", type=int, default=600, help="stage-1 steps per precision")
    parser.add_argument("--ldm-steps", type=int, default=600, help="stage-2 steps per run")
    parser.add_argument("--vae-precisions", default="no,fp16,bf16",
                        help="stage-1 mixed precisions to run (comma-separated; 'no' is needed: stage 2 uses it)")
    parser.add_argument("--seeds", type=int, default=8, help="images per prompt when sampling")
    parser.add_argument("--w", type=float, default=2.0, help="guidance weight for sampling")
    parser.add_argument("--smoke", action="store_true", help="allow a CPU run (to check this script, not CUDA)")
    args = parser.parse_args()
    precisions = args.vae_precisions.split(",")
    if "no" not in precisions or not set(precisions) <= {"no", "fp16", "bf16"}:
        raise SystemExit("error: --vae-precisions takes 'no' plus any of fp16, bf16, e.g. 'no,bf16'.")
    global DEVICE
    if not torch.cuda.is_available():
        if not args.smoke:
            raise SystemExit("error: this benchmark needs a CUDA GPU.")
        DEVICE = "cpu"
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    versions = {name: (importlib.metadata.version(name) if importlib.util.find_spec(name) else "not installed")
                for name in ("torch", "diffusers", "transformers", "accelerate", "xformers")}
    with_xformers = xformers_runs()  # probed once: it runs a CUDA kernel
    versions["xformers kernels"] = "run" if with_xformers else "do not run"
    device_name = torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu"
    print(device_name, versions, flush=True)
    report = {"device": device_name, "versions": versions}
    report["stage1"] = stage1(work, args.vae_steps, precisions)
    report["stage2"] = stage2(work, work / "vae_no" / "vae", args.ldm_steps, with_xformers=with_xformers)
    report["sampling"] = sampling(Path(report["stage2"]["no_sdpa"]["folder"]), seeds=args.seeds, steps=20,
                                  w=args.w, with_xformers=with_xformers)
    (work / "cuda_check.json").write_text(json.dumps(report, indent=2))
    print(f"stage 1, {args.vae_steps} steps:")
    for name, row in report["stage1"].items():
        print(f"  mixed precision {name:5s} {row['seconds']:6.1f} s  PSNR {row['psnr']:5.2f} dB  "
              f"SSIM {row['ssim']:.3f}")
    print(f"stage 2, {args.ldm_steps} steps:")
    for name, row in report["stage2"].items():
        print(f"  {name:12s} ({row['attention']:8s}) {row['seconds']:6.1f} s  val loss {row['val_loss']:.4f}")
    print(f"sampling, 24 prompts x {args.seeds} seeds, 20 steps, w = {args.w:g}:")
    for name, row in report["sampling"].items():
        print(f"  {name:20s} {row['seconds']:6.1f} s  speed vs fp32 SDPA {row['speed_vs_fp32_sdpa']:4.2f}x  "
              f"pixel diff max {row['max_diff']:3d} mean {row['mean_diff']:.2f}  adherence {row['adherence']:.1%}")


if __name__ == "__main__":
    main()
