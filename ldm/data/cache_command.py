"""`ldm-data cache SOURCE --vae DIR --out CACHE_DIR`: build the on-disk latent cache ahead of training.

    accelerate launch -m ldm.data.cli cache shapes --vae OUT/stage1/vae --out CACHE --resolution 32

Every process encodes its share of the chunks (ldm/encode_shards.py); an interrupted run resumes when run again.
`train_ldm.py --latent-cache CACHE` then trains from it without --data, on this machine or another.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from autoencoder.presets import build_vae

from ..encode_shards import DEFAULT_CHUNK_SIZE, build_latent_cache, cache_source, shard_cache_key
from ..latent_shards import chunk_name
from ..skip_counts import SKIPPED_FILE, format_skips, read_skipped
from .buckets import bucket_spec
from .dataset import open_dataset


def _check_numbers(args) -> None:
    for name in ("batch_size", "chunk_size", "size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {value}.")
    if args.workers < 0:
        raise ValueError(f"--workers must be at least 0, got {args.workers}.")


def run_cache(args) -> int:
    """Encode `args.source` into `args.out` (`args`: an `ldm.data.cli.CacheConfig`); print one summary line
    (main process). Returns 0."""
    from ..training.accelerator import make_accelerator

    _check_numbers(args)
    logging.getLogger("ldm").setLevel(logging.INFO)
    out = Path(args.out)
    spec = bucket_spec(args)
    dataset = open_dataset(args.source, resolution=args.resolution, split=args.split, buckets=spec,
                           caption_column=args.caption_column, caption_ext=args.caption_ext, size=args.size)
    accelerator = make_accelerator(output_dir=out, log_with=None)
    vae = build_vae(pretrained=args.vae).to(accelerator.device).requires_grad_(False).eval()
    chunk_size = args.chunk_size or DEFAULT_CHUNK_SIZE
    key = shard_cache_key(source=cache_source(args.source, size=args.size, caption_column=args.caption_column),
                          resolution=args.resolution, vae=vae, dtype=args.dtype, chunk_size=chunk_size,
                          buckets=spec.key if spec else "")
    with torch.no_grad():
        cache = build_latent_cache(vae, dataset, cache_dir=out, key=key, rank=accelerator.process_index,
                                   world_size=accelerator.num_processes, barrier=accelerator.wait_for_everyone,
                                   chunk_size=chunk_size, batch_size=args.batch_size, num_workers=args.workers,
                                   device=accelerator.device)
    if accelerator.is_main_process:
        size = sum((out / chunk_name(c)).stat().st_size for c in range(len(cache.counts)))
        buckets = ", ".join(f"{name}: {count}" for name, count in cache.bucket_sizes.items())
        print(f"wrote {out}: {len(cache)} images in {len(cache.counts)} chunks, {size / len(cache):.0f} bytes "
              f"per image; images per latent size {buckets}; {format_skips(read_skipped(out))} "
              f"(counts in {out / SKIPPED_FILE})")
    accelerator.end_training()
    return 0
