"""`ldm-data`: check a data source for bad samples, preview what the model sees after transforms, or encode it
into an on-disk latent cache (`ldm-data cache`, also under `accelerate launch`)."""

from __future__ import annotations

import itertools
import json
import logging
import sys
from collections import Counter
from dataclasses import dataclass
from typing import Optional

import torch
from PIL import Image

from ..cli import option, run_subcommands
from ..grid import make_grid
from .buckets import bucket_spec
from .dataset import open_dataset
from .images import BadSample, NoUsableSamples
from .transforms import to_pil

DEFAULT_RESOLUTION = 64  # images smaller than this are counted as "smaller than resolution"
PREVIEW_MIN_TILE = 128  # preview tiles are shown at least this large


@dataclass
class SourceOptions:
    """How every subcommand opens its source (`ldm.data.open_dataset`)."""

    resolution: int = option(DEFAULT_RESOLUTION, "training resolution in pixels")
    split: str = option("train", "split of built-in or HF datasets")
    caption_column: str = option("text", "caption column of metadata / HF datasets")
    caption_ext: str = option(".txt", "extension of sidecar caption files")

    def __post_init__(self):
        if self.resolution < 1:
            raise ValueError(f"--resolution must be at least 1, got {self.resolution}.")


@dataclass
class BucketOptions:
    """--buckets and kohya's bucket options (`ldm.data.buckets.bucket_spec` reads them)."""

    buckets: bool = option(False, "resize each image to the aspect-ratio bucket nearest its own instead of a "
                                  "centre square")
    min_bucket_reso: Optional[int] = option(None, "smallest bucket side (default R/2)")
    max_bucket_reso: Optional[int] = option(None, "largest bucket side (default 2R)")
    bucket_step: Optional[int] = option(None, "bucket sides are multiples of this (default R/8, at least 8)")


@dataclass
class CheckConfig(SourceOptions, BucketOptions):
    """Count usable and skipped samples (decodes every image)."""

    path: Optional[str] = option(None, "data source: a path, tar shards, or a built-in name", positional=True)
    json: bool = option(False, 'print {"usable": N, "skipped": {reason: count}}, with --buckets also '
                               '"buckets": {"WxH": count}')

    def __post_init__(self):
        super().__post_init__()
        if not self.path:
            raise ValueError("ldm-data check needs a data source.")


@dataclass
class PreviewConfig(SourceOptions):
    """Write a captioned grid of transformed samples."""

    source: Optional[str] = option(None, "data source: a path, tar shards, or a built-in name such as shapes",
                                   positional=True)
    n: int = option(16, "number of samples", aliases=["-n"])
    out: str = option("grid.png", "output image path")
    crop: str = option("center", "crop", choices=("center", "random"))
    random_flip: bool = option(False, "apply the caption-aware random flip")

    def __post_init__(self):
        super().__post_init__()
        if not self.source:
            raise ValueError("ldm-data preview needs a data source.")
        if self.n < 1:
            raise ValueError(f"-n must be at least 1, got {self.n}.")


@dataclass
class CacheConfig(SourceOptions, BucketOptions):
    """Encode a data source with a frozen VAE into an on-disk latent cache (every process of `accelerate launch`
    encodes its share)."""

    source: Optional[str] = option(None, "data source: a path, tar shards, or a built-in name such as shapes",
                                   positional=True)
    vae: str = option("", "(required) the stage-1 VAE folder (train_vae.py output's vae/)")
    out: str = option("", "(required) cache folder; pass it to train_ldm.py --latent-cache")
    size: Optional[int] = option(None, "number of items to use (as train_ldm --data-size)")
    dtype: str = option("float16", "storage of the posterior mean and std", choices=("float16", "float32"))
    batch_size: int = option(32, "images per VAE encode")
    workers: int = option(2, "DataLoader workers per process decoding images")
    chunk_size: Optional[int] = option(None, "items per chunk file of a map-style source (default 1024); tar "
                                             "shards: one chunk each")

    def __post_init__(self):
        super().__post_init__()
        if not self.source or not self.vae or not self.out:
            raise ValueError("ldm-data cache needs a data source, --vae and --out.")


def _open(args: SourceOptions, source: str, **extra) -> torch.utils.data.Dataset:
    return open_dataset(
        source,
        resolution=args.resolution,
        split=args.split,
        caption_column=args.caption_column,
        caption_ext=args.caption_ext,
        **extra,
    )


def check_source(dataset: torch.utils.data.Dataset, *, sizes: Counter | None = None) -> tuple[int, dict[str, int]]:
    """(usable, skipped) after decoding every sample; map-style sources are decoded without the fallback.

    `sizes`, if given, counts the (width, height) of every usable image: as decoded for map-style sources,
    after the transforms for tar shards, the generated side for built-in sets."""
    sizes = Counter() if sizes is None else sizes
    if isinstance(dataset, torch.utils.data.IterableDataset):
        usable = 0
        for item in dataset:
            usable += 1
            sizes[(item["pixel_values"].shape[2], item["pixel_values"].shape[1])] += 1
        return usable, dict(dataset.skipped)
    skipped = Counter(dataset.skipped)
    if not hasattr(dataset, "load"):  # built-in sets are generated, so every index is usable
        side = getattr(dataset, "resolution", 0)
        sizes[(side, side)] += len(dataset)
        return len(dataset), dict(skipped)
    usable = 0
    for index in range(len(dataset)):
        try:
            sizes[dataset.load(index).size] += 1
            usable += 1
        except BadSample as bad:
            skipped[bad.reason] += 1
    return usable, dict(skipped)


def images_per_bucket(sizes: Counter, spec) -> dict[str, int]:
    """{"WxH": images} of the buckets (`ldm.data.buckets.BucketSpec`) that images of these sizes go to."""
    counts = Counter()
    for (width, height), count in sizes.items():
        bucket = spec.nearest(width, height)
        counts[f"{bucket[0]}x{bucket[1]}"] += count
    return dict(sorted(counts.items()))


def _print_table(usable: int, skipped: dict[str, int]) -> None:
    width = max([len("usable")] + [len(reason) for reason in skipped])
    print(f"{'usable':<{width}}  {usable}")
    for reason, count in sorted(skipped.items(), key=lambda kv: -kv[1]):
        print(f"{reason:<{width}}  {count}  (skipped)")


def _preview(args: PreviewConfig) -> None:
    dataset = _open(args, args.source, crop=args.crop, random_flip=args.random_flip)
    if isinstance(dataset, torch.utils.data.IterableDataset):
        items = list(itertools.islice(dataset, args.n))
    else:
        items = [dataset[i] for i in range(min(args.n, len(dataset)))]
    # Small tiles are enlarged pixel-for-pixel (nearest) so captions fit beneath them.
    scale = max(1, PREVIEW_MIN_TILE // args.resolution)
    tiles = [to_pil(item["pixel_values"]) for item in items]
    tiles = [tile.resize((tile.width * scale,) * 2, Image.Resampling.NEAREST) for tile in tiles]
    grid = make_grid(tiles, captions=[item["caption"] for item in items])
    grid.save(args.out)
    print(f"wrote {args.out} ({len(items)} samples at {args.resolution} px)")


def _check(args: CheckConfig) -> None:
    # Per-sample warnings would drown the summary; the counts say the same.
    logging.getLogger("ldm.data").setLevel(logging.ERROR)
    spec, sizes = bucket_spec(args), Counter()
    try:
        usable, skipped = check_source(_open(args, args.path, buckets=spec), sizes=sizes)
    except NoUsableSamples as err:
        usable, skipped = 0, err.skipped
    buckets = images_per_bucket(sizes, spec) if spec else {}
    if args.json:
        print(json.dumps({"usable": usable, "skipped": skipped, **({"buckets": buckets} if spec else {})}))
    else:
        _print_table(usable, skipped)
        for name, count in buckets.items():
            print(f"bucket {name}  {count}")
    if not usable:
        raise ValueError(f"{args.path} has no usable image–caption sample at {args.resolution} px.")


def _cache(args: CacheConfig) -> None:
    from .cache_command import run_cache

    run_cache(args)


def main(argv: list[str] | None = None) -> int:
    """`ldm-data check|preview|cache`: 0 on success; a user mistake (or a source with no usable sample) is one
    `error: ...` line and exit status 2 (`ldm.cli`)."""
    return run_subcommands("ldm-data", {"check": (CheckConfig, _check), "preview": (PreviewConfig, _preview),
                                        "cache": (CacheConfig, _cache)}, argv, description=__doc__.strip())


if __name__ == "__main__":
    sys.exit(main())
