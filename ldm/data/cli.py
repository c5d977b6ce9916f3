"""`ldm-data`: check a data source for bad samples, preview what the model sees after transforms, or encode it
into an on-disk latent cache (`ldm-data cache`, also under `accelerate launch`)."""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys
from collections import Counter

import torch
from PIL import Image

from ..cli import USER_ERROR, report_user_error
from ..grid import make_grid
from .buckets import add_bucket_options, bucket_spec
from .dataset import open_dataset
from .images import BadSample, NoUsableSamples
from .transforms import to_pil

DEFAULT_RESOLUTION = 64  # images smaller than this are counted as "smaller than resolution"
PREVIEW_MIN_TILE = 128  # preview tiles are shown at least this large


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--resolution", type=int, default=DEFAULT_RESOLUTION, help="training resolution in pixels"
    )
    parser.add_argument("--split", default="train", help="split of built-in or HF datasets")
    parser.add_argument("--caption-column", default="text", help="caption column of metadata / HF datasets")
    parser.add_argument("--caption-ext", default=".txt", help="extension of sidecar caption files")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ldm-data", description=__doc__, allow_abbrev=False)
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="count usable and skipped samples (decodes every image)")
    check.add_argument("path", help="data source: a path, tar shards, or a built-in name")
    check.add_argument("--json", action="store_true", help='print {"usable": N, "skipped": {reason: count}}, '
                                                           'with --buckets also "buckets": {"WxH": count}')
    add_bucket_options(check)
    _common(check)
    preview = commands.add_parser("preview", help="write a captioned grid of transformed samples")
    preview.add_argument("source", help="data source: a path, tar shards, or a built-in name such as shapes")
    preview.add_argument("-n", type=int, default=16, help="number of samples")
    preview.add_argument("--out", default="grid.png", help="output image path")
    preview.add_argument("--crop", default="center", choices=("center", "random"))
    preview.add_argument("--random-flip", action="store_true", help="apply the caption-aware random flip")
    _common(preview)
    _add_cache_parser(commands)
    return parser


def _add_cache_parser(commands) -> None:
    cache = commands.add_parser("cache", help="encode a data source with a frozen VAE into an on-disk latent cache "
                                              "(every process of `accelerate launch` encodes its share)")
    cache.add_argument("source", help="data source: a path, tar shards, or a built-in name such as shapes")
    cache.add_argument("--vae", required=True, help="the stage-1 VAE folder (train_vae.py output's vae/)")
    cache.add_argument("--out", required=True, help="cache folder; pass it to train_ldm.py --latent-cache")
    cache.add_argument("--size", type=int, default=None, help="number of items to use (as train_ldm --data-size)")
    cache.add_argument("--dtype", default="float16", choices=("float16", "float32"),
                       help="storage of the posterior mean and std")
    cache.add_argument("--batch-size", type=int, default=32, help="images per VAE encode")
    cache.add_argument("--workers", type=int, default=2, help="DataLoader workers per process decoding images")
    cache.add_argument("--chunk-size", type=int, default=None, help="items per chunk file of a map-style source "
                                                                    "(default 1024); tar shards: one chunk each")
    add_bucket_options(cache)
    _common(cache)


def _open(args: argparse.Namespace, source: str, **extra) -> torch.utils.data.Dataset:
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


def _preview(args: argparse.Namespace) -> None:
    if args.n < 1:
        raise ValueError(f"-n must be at least 1, got {args.n}.")
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


def _check(args: argparse.Namespace) -> int:
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
        print(
            f"error: {args.path} has no usable image–caption sample at {args.resolution} px.",
            file=sys.stderr,
        )
    return 0 if usable else USER_ERROR


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "check":
            return _check(args)
        if args.command == "cache":
            from .cache_command import run_cache

            return run_cache(args)
        _preview(args)
    except (ValueError, ImportError, OSError) as err:
        return report_user_error(err)
    return 0


if __name__ == "__main__":
    sys.exit(main())
