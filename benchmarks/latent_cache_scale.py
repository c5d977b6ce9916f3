"""Stage 2 at scale, in one run: peak resident memory of train_ldm.py (encode + 50 steps) with the on-disk latent
cache against the in-memory cache of an earlier commit, encode throughput with 1 and 2 processes, disk bytes
per image, and the training step time reading the on-disk cache against the same latents held in memory.

    git archive 5f20c51 | tar -x -C /tmp/main_src     # the code before the on-disk cache: the baseline
    OMP_NUM_THREADS=2 python benchmarks/latent_cache_scale.py --baseline-src /tmp/main_src \\
        --work /tmp/scale

Built-in shapes data at 32 px, a random `cpu-f4` VAE (f = 4: 8x8x4 latents; speed and memory do not depend on
the weights), the `cpu-tiny` U-Net, batch 32. Peak memory is the largest resident set of the training process
or any of its children (`os.wait4`), so it covers the encode as well as the steps.
"""
from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from transformers import CLIPTokenizer

from autoencoder.presets import build_vae
from ldm.latent_cache import LatentCache
from ldm.latent_shards import TRAINING_CACHE_DIR, ShardedLatentCache
from ldm.objective import make_noise_scheduler
from ldm.stage2 import CaptionEmbedder, micro_step_loss
from ldm.text_encoder import build_text_encoder
from ldm.training.batches import global_batch_indices, step_generator
from ldm.training.optim import make_adamw
from ldm.unet import build_unet

REPO = Path(__file__).resolve().parents[1]
BATCH = 32


def run_measured(argv: list[str], *, env: dict, log: Path) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB of the process tree's largest process) of one command."""
    start = time.perf_counter()
    with log.open("w") as handle:
        process = subprocess.Popen(argv, env=env, stdout=handle, stderr=subprocess.STDOUT, cwd=REPO)
        _, status, usage = os.wait4(process.pid, 0)
    if status:
        raise RuntimeError(f"{argv[1]} failed; see {log}")
    return time.perf_counter() - start, usage.ru_maxrss / 1024


def train_command(src: Path, *, size: int, vae: Path, out: Path, steps: int) -> list[str]:
    return [sys.executable, str(src / "train_ldm.py"), "--data", f"shapes:size={size}", "--vae", str(vae),
            "--output-dir", str(out), "--preset", "cpu-tiny", "--max-steps", str(steps), "--batch-size",
            str(BATCH), "--checkpoint-every", "0", "--warmup-steps", "10"]


def memory_rows(args, vae: Path) -> list[dict]:
    rows = []
    for size in args.sizes:
        for name, src in (("on-disk", REPO), ("in-memory", args.baseline_src)):
            out = args.work / f"{name}-{size}"
            env = {**os.environ, "PYTHONPATH": str(src), "HF_HUB_OFFLINE": "1"}
            seconds, peak = run_measured(train_command(src, size=size, vae=vae, out=out, steps=args.steps),
                                         env=env, log=args.work / f"{name}-{size}.log")
            rows.append({"cache": name, "size": size, "seconds": seconds, "peak_mb": peak})
            print(f"{name:9s} {size:7d} images: encode + {args.steps} steps {seconds:6.0f} s, peak RSS {peak:6.0f} MB",
                  flush=True)
    return rows


def encode_rates(args, vae: Path) -> dict[int, float]:
    """Images/s of `ldm-data cache` with 1 and 2 processes (one DataLoader worker each), fresh folders."""
    rates = {}
    for processes in (1, 2):
        out = args.work / f"encode-{processes}"
        launch = [sys.executable, "-m", "ldm.data.cli"] if processes == 1 else [
            sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "ldm.data.cli"]
        threads = str(max(1, (os.cpu_count() or 2) // processes))
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": threads, "HF_HUB_OFFLINE": "1"}
        argv = launch + ["cache", f"shapes:size={args.encode_size}", "--resolution", "32", "--vae", str(vae),
                         "--out", str(out), "--workers", "1", "--batch-size", "64"]
        seconds, _ = run_measured(argv, env=env, log=args.work / f"encode-{processes}.log")
        rates[processes] = args.encode_size / seconds
        print(f"encode {args.encode_size} images with {processes} process(es): {rates[processes]:.0f} images/s "
              f"(start-up included)", flush=True)
    return rates


def disk_bytes_per_image(cache_dir: Path) -> float:
    cache = ShardedLatentCache(cache_dir)
    return sum(p.stat().st_size for p in cache_dir.glob("chunk-*.safetensors")) / len(cache)


def step_times(run_dir: Path, *, steps: int) -> dict[str, float]:
    """Seconds per training step (loss, backward, AdamW) reading the on-disk cache, and the same latents as one
    in-memory float32 tensor (what the earlier cache held); the two take turns step by step."""
    disk = ShardedLatentCache(run_dir / TRAINING_CACHE_DIR)
    mean, std = disk.posterior(torch.arange(len(disk)))
    memory = LatentCache(mean=mean, std=std, captions=list(disk.iter_captions()))
    tokenizer = CLIPTokenizer.from_pretrained(str(run_dir / "tokenizer"))
    text_encoder = build_text_encoder(tokenizer=tokenizer, preset="tiny")
    unet = build_unet(preset="cpu-tiny", cross_attention_dim=text_encoder.config.hidden_size, sample_size=8,
                      in_channels=4)
    optimizer = make_adamw(list(unet.parameters()) + list(text_encoder.parameters()), lr=1e-4)
    embedder = CaptionEmbedder(text_encoder, tokenizer, trainable=True)
    scheduler = make_noise_scheduler(beta_schedule="linear", prediction_type="epsilon", zero_terminal_snr=False,
                                     num_train_timesteps=1000)
    seconds = {"on-disk": 0.0, "in-memory": 0.0}
    for step in range(steps + 3):
        for name, cache in (("on-disk", disk), ("in-memory", memory)):
            start = time.perf_counter()
            loss = micro_step_loss(unet=unet, embedder=embedder, cache=cache, noise_scheduler=scheduler,
                                   indices=global_batch_indices(len(disk), BATCH, step, 0),
                                   generator=step_generator(0, step), scaling_factor=1.0, cond_dropout=0.1)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if step >= 3:  # warm-up steps untimed
                seconds[name] += time.perf_counter() - start
    result = {name: total / steps for name, total in seconds.items()}
    for name, cache in (("on-disk", disk), ("in-memory", memory)):  # the part that differs: reading a batch
        start = time.perf_counter()
        for step in range(steps):
            indices = global_batch_indices(len(disk), BATCH, step, 1)
            cache.posterior(indices), cache.captions_of(indices)
        result[f"{name} read"] = (time.perf_counter() - start) / steps
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-src", type=Path, required=True, help="source tree of the in-memory cache")
    parser.add_argument("--work", type=Path, required=True, help="folder for the runs (kept, for their logs)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 100_000, 200_000])
    parser.add_argument("--steps", type=int, default=50, help="training steps per memory run")
    parser.add_argument("--encode-size", type=int, default=2000, help="images for the 1 vs 2 process encode")
    parser.add_argument("--timed-steps", type=int, default=30, help="steps per cache in the step-time test")
    parser.add_argument("--skip-memory", action="store_true",
                        help="reuse the training runs already in --work (only encode rates, disk and step times)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    args.work.mkdir(parents=True, exist_ok=True)
    vae = args.work / "vae"
    if not (vae / "config.json").exists():
        torch.manual_seed(0)
        build_vae(preset="cpu-f4").save_pretrained(vae)
    print(f"threads={torch.get_num_threads()} cpus={os.cpu_count()} resolution=32 latents=8x8x4 batch={BATCH}",
          flush=True)
    rows = [] if args.skip_memory else memory_rows(args, vae)
    largest = args.work / f"on-disk-{max(args.sizes)}"
    print(f"disk: {disk_bytes_per_image(largest / TRAINING_CACHE_DIR):.0f} bytes per image (float16 mean and std, "
          f"caption, index)", flush=True)
    rates = encode_rates(args, vae)
    times = step_times(largest, steps=args.timed_steps)
    print(f"step time at {max(args.sizes)} images: on-disk {1000 * times['on-disk']:.1f} ms, in-memory "
          f"{1000 * times['in-memory']:.1f} ms, ratio {times['on-disk'] / times['in-memory']:.3f}; reading a batch "
          f"(posterior and captions): on-disk {1000 * times['on-disk read']:.2f} ms, in-memory "
          f"{1000 * times['in-memory read']:.2f} ms")
    small, large = min(args.sizes), max(args.sizes)
    for name in ("on-disk", "in-memory") if rows else ():
        peak = {row["size"]: row["peak_mb"] for row in rows if row["cache"] == name}
        print(f"{name:9s}: peak RSS {peak[small]:.0f} MB at {small} -> {peak[large]:.0f} MB at {large} images "
              f"({1024 * (peak[large] - peak[small]) / (large - small):.2f} KB more per image)")
    print(f"encode: 2 processes / 1 process = {rates[2] / rates[1]:.2f}x")


if __name__ == "__main__":
    main()
