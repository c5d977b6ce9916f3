"""WebDataset-style `.tar` shards (`key.jpg|png|webp` + `key.txt`), streamed as an IterableDataset.

Work is split over every consumer, i.e. each (process rank, DataLoader worker) pair: with at least as
many shards as consumers C, consumer k reads shards k, k + C, k + 2C, ...; with fewer shards, every
consumer reads all shards and keeps samples k, k + C, ... of the stream. Either way each sample is
yielded exactly once per epoch.
Bad samples are skipped and counted in `skipped` (per process: each worker counts its own; the latent-cache
encoder counts per shard with `shard_items(path, skipped)` and carries the counts out of the worker).
"""

from __future__ import annotations

import glob
import logging
import re
import tarfile
from collections import Counter
from pathlib import Path
from typing import Iterator

import torch

from .images import CORRUPT_TAR, IMAGE_EXTENSIONS, MISSING_IMAGE, BadSample, decode_caption, decode_image
from .transforms import image_to_item

logger = logging.getLogger(__name__)
_BRACES = re.compile(r"\{(\d+)\.\.(\d+)\}")


def expand_shards(spec: str) -> list[Path]:
    """Shard paths from a .tar file, a folder of .tar files, a brace range `a-{000..009}.tar` or a glob."""
    match = _BRACES.search(spec)
    if match:
        first, last = match.group(1), match.group(2)
        width = len(first)
        names = [
            spec[: match.start()] + str(i).zfill(width) + spec[match.end() :]
            for i in range(int(first), int(last) + 1)
        ]
        paths = [Path(n) for n in names]
    elif any(ch in spec for ch in "*?["):
        paths = [Path(p) for p in sorted(glob.glob(spec))]
    elif Path(spec).is_dir():
        paths = sorted(Path(spec).glob("*.tar"))
    else:
        paths = [Path(spec)]
    missing = [str(p) for p in paths if not p.is_file()]
    if not paths or missing:
        raise FileNotFoundError(
            f"No tar shard found for {spec!r}" + (f" (missing: {missing[0]})." if missing else ".")
        )
    return paths


def _split_key(name: str) -> tuple[str, str]:
    """WebDataset convention: the key is the path up to the first dot of the file name."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), (dot + ext).lower()


def _read_samples(path: Path, skipped: Counter) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) per sample, in tar order; a corrupt member ends the shard, counted."""
    key, files = None, {}
    try:
        with tarfile.open(path, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                member_key, ext = _split_key(member.name)
                if member_key != key and key is not None:
                    yield key, files
                    files = {}
                key = member_key
                files[ext] = tar.extractfile(member).read()
                if len(files[ext]) != member.size:  # tarfile reads a cut-off member short, without an error
                    raise EOFError(f"member {member.name} is truncated")
    except (tarfile.TarError, OSError, EOFError) as err:
        skipped[CORRUPT_TAR] += 1
        logger.warning(
            "%s: corrupt tar member after key %r (%s); skipping the rest of the shard", path, key, err
        )
        return  # the last sample may be incomplete: drop it rather than train on half of it
    if key is not None:
        yield key, files


def _decode_sample(files: dict[str, bytes], resolution: int, buckets=None) -> tuple:
    image_ext = next((ext for ext in files if ext in IMAGE_EXTENSIONS), None)
    if image_ext is None:
        raise BadSample(MISSING_IMAGE)
    caption = decode_caption(files.get(".txt"))
    return decode_image(files[image_ext], min_size=resolution, buckets=buckets), caption


def _consumer() -> tuple[int, int]:
    """(this consumer's id, number of consumers) over distributed ranks x DataLoader workers."""
    rank, world = 0, 1
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    info = torch.utils.data.get_worker_info()
    worker, workers = (info.id, info.num_workers) if info else (0, 1)
    return rank * workers + worker, world * workers


class TarShardDataset(torch.utils.data.IterableDataset):
    """Streams {"pixel_values": (3, R, R) in [-1, 1], "caption": str} from tar shards."""

    def __init__(
        self, shards: list[Path], *, resolution: int, crop: str = "center", random_flip: bool = False,
        buckets=None,
    ):
        self.shards, self.resolution, self.crop, self.random_flip = shards, resolution, crop, random_flip
        self.buckets = buckets  # an ldm.data.buckets.BucketSpec, or None for squares
        self.skipped: Counter = Counter()

    def _assigned(self) -> Iterator[tuple[str, dict[str, bytes]]]:
        consumer, consumers = _consumer()
        if len(self.shards) >= consumers:
            for path in self.shards[consumer::consumers]:
                yield from _read_samples(path, self.skipped)
            return
        position = 0
        for path in self.shards:
            for sample in _read_samples(path, self.skipped):
                if position % consumers == consumer:
                    yield sample
                position += 1

    def __iter__(self) -> Iterator[dict]:
        return self._items(self._assigned())

    def shard_items(self, path: Path, skipped: Counter | None = None) -> Iterator[dict]:
        """Every usable item of the one shard `path`, in tar order, whoever the consumer is (the latent cache
        gives each process whole shards); bad samples are counted in `skipped` (default: `self.skipped`; the
        latent-cache encoder passes its own per shard, since a DataLoader worker's `self.skipped` is a copy)."""
        skipped = self.skipped if skipped is None else skipped
        return self._items(_read_samples(path, skipped), skipped)

    def _items(self, samples: Iterator[tuple[str, dict[str, bytes]]], skipped: Counter | None = None
               ) -> Iterator[dict]:
        skipped = self.skipped if skipped is None else skipped
        for key, files in samples:
            try:
                image, caption = _decode_sample(files, self.resolution, self.buckets)
            except BadSample as bad:
                skipped[bad.reason] += 1
                logger.warning("skipping tar sample %r (%s)", key, bad)
                continue
            yield image_to_item(
                image, caption, resolution=self.resolution, crop=self.crop, random_flip=self.random_flip,
                buckets=self.buckets,
            )


def check_has_pairs(shards: list[Path]) -> None:
    """Raise a one-line ValueError unless a shard holds an image with a caption (reads headers only)."""
    for path in shards:
        seen: dict[str, set[str]] = {}
        try:
            with tarfile.open(path, mode="r:*") as tar:
                for name in tar.getnames():
                    key, ext = _split_key(name)
                    seen.setdefault(key, set()).add(ext)
        except (tarfile.TarError, OSError, EOFError):
            continue
        if any(".txt" in exts and exts & set(IMAGE_EXTENSIONS) for exts in seen.values()):
            return
    raise ValueError(
        f"No tar shard among {len(shards)} holds an image with a .txt caption (e.g. {shards[0]})."
    )
