"""Build an on-disk latent cache (ldm/latent_shards.py) with a frozen VAE, every process encoding its share.

The data is cut into chunks that do not depend on the number of processes: items [c·S, (c+1)·S) of a map-style
source, or tar shard c of a WebDataset. Process r encodes chunks r, r + P, r + 2P, …, with DataLoader workers
decoding images in parallel; within a chunk the encoder batches are always the same, so every entry equals the
one-process encode. A chunk is written whole when done (atomic rename), so an encode stopped part-way (Ctrl-C,
kill -9) resumes with the chunks that are missing and never rewrites a finished one. The main process writes
the manifest once all chunks exist; only then is the cache readable.

A sample that fails to decode in a DataLoader worker comes back as a marked skip (tar shards: as counts with
their shard's end), so the process writing the chunk counts it: each process logs its total, and the counts
are kept beside the cache (ldm/skip_counts.py: per chunk, summed into `skipped.json`).
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch.utils.data import DataLoader, IterableDataset

from ldm.data.images import SKIPPED_KEY
from ldm.latent_cache import vae_weights_hash
from ldm.latent_shards import (CACHE_DTYPES, MANIFEST, ShardedLatentCache, chunk_is_done, chunk_name,
                               write_chunk, write_manifest)
from ldm.skip_counts import (format_skips, read_skipped, remove_chunk_skips_past, sum_chunk_skips,
                             write_chunk_skips, write_skipped)

logger = logging.getLogger(__name__)

CACHE_VERSION = "2"  # bump when the stored layout changes, so old caches are re-encoded
DEFAULT_CHUNK_SIZE = 1024  # items per chunk of a map-style source: ~1 MB per chunk at 32 px, f = 4, float16
LOG_EVERY_S = 30.0  # seconds between encode progress lines


def cache_source(data: str, *, size: int | None, caption_column: str) -> str:
    """The data part of the key, the same for `ldm-data cache` and `train_ldm.py --data`."""
    return f"{data}|size={size}|captions={caption_column}"


def shard_cache_key(*, source: str, resolution: int, vae: torch.nn.Module, dtype: str = "float16",
                    chunk_size: int = DEFAULT_CHUNK_SIZE, buckets: str = "") -> dict[str, str]:
    """What a cache depends on; any change re-encodes. `buckets`: `BucketSpec.key`, or "" for squares."""
    return {"version": CACHE_VERSION, "source": str(source), "resolution": str(resolution), "buckets": buckets,
            "vae": vae_weights_hash(vae), "dtype": dtype, "chunk_size": str(chunk_size)}


def open_if_current(cache_dir: str | Path, key: dict[str, str]) -> ShardedLatentCache | None:
    """The finished cache in `cache_dir` if it was built for `key`; None otherwise."""
    try:
        cache = ShardedLatentCache(cache_dir)
    except (FileNotFoundError, ValueError, KeyError):
        return None
    return cache if cache.key == key else None


def _keep_list(items: list[dict]) -> list[dict]:
    return items  # images of a batch may differ in size (buckets): grouped by shape when encoded


class _MarkedSkips(torch.utils.data.Dataset):
    """A map-style source whose items that fail to decode come back as `skip_marker(reason)` (sources with
    `item_or_skip`), so the encoder counts them, not a DataLoader worker's copy of the source."""

    def __init__(self, dataset):
        self.dataset = dataset
        self.get = getattr(dataset, "item_or_skip", dataset.__getitem__)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        return self.get(index)


class _TarChunks(IterableDataset):
    """("item", chunk, item) for each sample of this worker's tar shards, then ("end", chunk, skipped) with
    the shard's skip counts, counted here in the worker and so carried out of it."""

    def __init__(self, dataset, chunks: list[int]):
        self.dataset, self.chunks = dataset, chunks

    def __iter__(self) -> Iterator[tuple]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        for chunk in self.chunks[worker::workers]:
            skipped = Counter()
            for item in self.dataset.shard_items(self.dataset.shards[chunk], skipped):
                yield "item", chunk, item
            yield "end", chunk, dict(skipped)


class _ChunkBatches:
    """Index batches of `batch_size` within each chunk (never across two), generated as needed: with 10⁷
    images a list of every index would itself grow with the data."""

    def __init__(self, chunks: list[int], *, chunk_size: int, batch_size: int, num_items: int):
        self.chunks, self.chunk_size, self.batch_size, self.num_items = chunks, chunk_size, batch_size, num_items

    def plan(self) -> Iterator[tuple[int, list[int], bool]]:
        """(chunk, indices, last batch of the chunk) in loading order."""
        for chunk in self.chunks:
            end = min((chunk + 1) * self.chunk_size, self.num_items)
            for start in range(chunk * self.chunk_size, end, self.batch_size):
                yield chunk, list(range(start, min(start + self.batch_size, end))), start + self.batch_size >= end

    def __iter__(self) -> Iterator[list[int]]:
        return (indices for _, indices, _ in self.plan())

    def __len__(self) -> int:
        return sum(-(-(min((c + 1) * self.chunk_size, self.num_items) - c * self.chunk_size) // self.batch_size)
                   for c in self.chunks)


def _map_stream(dataset, chunks: list[int], *, chunk_size: int, batch_size: int,
                num_workers: int) -> Iterator[tuple]:
    batches = _ChunkBatches(chunks, chunk_size=chunk_size, batch_size=batch_size, num_items=len(dataset))
    loader = DataLoader(_MarkedSkips(dataset), batch_sampler=batches, num_workers=num_workers,
                        collate_fn=_keep_list)
    for (chunk, _, last), items in zip(batches.plan(), loader):
        for item in items:
            yield ("skip", chunk, item[SKIPPED_KEY]) if SKIPPED_KEY in item else ("item", chunk, item)
        if last:
            yield "end", chunk, {}


def _tar_stream(dataset, chunks: list[int], *, num_workers: int) -> Iterator[tuple]:
    workers = min(num_workers, len(chunks))
    loader = DataLoader(_TarChunks(dataset, chunks), batch_size=None, num_workers=workers)
    yield from loader


class _ChunkEncoder:
    """Collects each chunk's items, encodes them `batch_size` at a time (grouped by image size), and writes
    the chunk when it ends; at most one batch of pixels per open chunk is held."""

    def __init__(self, vae, *, cache_dir: Path, key: dict[str, str], batch_size: int, device):
        self.vae, self.cache_dir, self.key, self.batch_size, self.device = vae, cache_dir, key, batch_size, device
        self.dtype = next(vae.parameters()).dtype
        self.store_dtype = CACHE_DTYPES[key["dtype"]]
        self.pending: dict[int, dict] = {}
        self.items = 0
        self.skipped: Counter = Counter()  # decode-time skips of the chunks this process encoded

    def _state(self, chunk: int) -> dict:
        return self.pending.setdefault(chunk, {"pixels": [], "means": [], "stds": [], "captions": [],
                                               "skipped": Counter()})

    def skip(self, chunk: int, reason: str) -> None:
        self._state(chunk)["skipped"][reason] += 1

    def add(self, chunk: int, item: dict) -> None:
        state = self._state(chunk)
        state["pixels"].append(item["pixel_values"])
        state["captions"].append(item["caption"])
        if len(state["pixels"]) == self.batch_size:
            self._flush(state)

    @torch.no_grad()
    def _flush(self, state: dict[str, list]) -> None:
        pixels, state["pixels"] = state["pixels"], []
        means, stds = [None] * len(pixels), [None] * len(pixels)
        for shape in dict.fromkeys(p.shape for p in pixels):
            members = [i for i, p in enumerate(pixels) if p.shape == shape]
            batch = torch.stack([pixels[i] for i in members]).to(device=self.device, dtype=self.dtype)
            posterior = self.vae.encode(batch).latent_dist
            for row, i in enumerate(members):
                means[i] = posterior.mean[row].float().cpu()
                stds[i] = posterior.std[row].float().cpu()
        state["means"] += means
        state["stds"] += stds
        self.items += len(pixels)

    def end(self, chunk: int, skipped: dict[str, int]) -> None:
        """Encode what is left of `chunk` and write it, its skip counts (plus `skipped`, counted elsewhere)
        first: a chunk on disk always has its counts beside it."""
        self._state(chunk)["skipped"].update(skipped)
        state = self.pending.pop(chunk)
        if state["pixels"]:
            self._flush(state)
        write_chunk_skips(self.cache_dir, chunk, state["skipped"], key=self.key)
        self.skipped.update(state["skipped"])
        write_chunk(self.cache_dir / chunk_name(chunk), means=state["means"], stds=state["stds"],
                    captions=state["captions"], key=self.key, dtype=self.store_dtype)


def _num_chunks(dataset, chunk_size: int) -> int:
    if isinstance(dataset, IterableDataset):
        if not hasattr(dataset, "shard_items"):
            raise ValueError("an iterable data set must be tar shards to be cached chunk by chunk.")
        return len(dataset.shards)
    return -(-len(dataset) // chunk_size)


def encode_chunks(vae, dataset, *, cache_dir: Path, key: dict[str, str], rank: int = 0, world_size: int = 1,
                  chunk_size: int = DEFAULT_CHUNK_SIZE, batch_size: int = 32, num_workers: int = 0,
                  device: str | torch.device = "cpu") -> int:
    """Encode this process's missing chunks into `cache_dir`; return the number of chunks of the data set."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    total = _num_chunks(dataset, chunk_size)
    mine = [c for c in range(rank, total, world_size) if not chunk_is_done(cache_dir / chunk_name(c), key)]
    logger.info("process %d: %d of its %d latent-cache chunks to encode", rank, len(mine),
                len(range(rank, total, world_size)))
    if not mine:
        return total
    encoder = _ChunkEncoder(vae, cache_dir=cache_dir, key=key, batch_size=batch_size, device=device)
    if isinstance(dataset, IterableDataset):
        stream = _tar_stream(dataset, mine, num_workers=num_workers)
    else:
        stream = _map_stream(dataset, mine, chunk_size=chunk_size, batch_size=batch_size, num_workers=num_workers)
    start = last_log = time.perf_counter()
    done = 0
    for kind, chunk, item in stream:
        if kind == "item":
            encoder.add(chunk, item)
            continue
        if kind == "skip":
            encoder.skip(chunk, item)
            continue
        encoder.end(chunk, item)
        done += 1
        if time.perf_counter() - last_log > LOG_EVERY_S or done == len(mine):
            last_log = time.perf_counter()
            logger.info("process %d: %d/%d chunks, %d images encoded (%.1f images/s)", rank, done, len(mine),
                        encoder.items, encoder.items / max(last_log - start, 1e-9))
    logger.info("process %d: %s while decoding its chunks", rank, format_skips(encoder.skipped))
    return total


def build_latent_cache(vae, dataset, *, cache_dir: str | Path, key: dict[str, str], rank: int = 0,
                       world_size: int = 1, barrier: Callable[[], None] = lambda: None,
                       chunk_size: int = DEFAULT_CHUNK_SIZE, batch_size: int = 32, num_workers: int = 0,
                       device: str | torch.device = "cpu") -> ShardedLatentCache:
    """The cache in `cache_dir` for `key`: reused when finished for it, else encoded (resuming what an earlier
    encode finished). Call on every process with its `rank`, `world_size` and a `barrier`
    (`accelerator.wait_for_everyone`); `dataset` must be the same on all of them."""
    cache_dir = Path(cache_dir)
    cache = open_if_current(cache_dir, key)
    if cache is not None:
        logger.info("Reusing the latent cache in %s (%d images; its encode %s).", cache_dir, len(cache),
                    format_skips(read_skipped(cache_dir)))
        return cache
    indexing = dict(getattr(dataset, "skipped", {}))  # the cheap checks', before any decode adds to it
    cache_dir.mkdir(parents=True, exist_ok=True)
    barrier()  # everyone has looked at the old manifest before the main process removes it
    if rank == 0:
        (cache_dir / MANIFEST).unlink(missing_ok=True)
    logger.info("Encoding the data set with the frozen VAE into %s.", cache_dir)
    total = encode_chunks(vae, dataset, cache_dir=cache_dir, key=key, rank=rank, world_size=world_size,
                          chunk_size=chunk_size, batch_size=batch_size, num_workers=num_workers, device=device)
    barrier()
    error = None
    if rank == 0:
        try:
            _remove_leftovers(cache_dir, total)
            skipped = write_skipped(cache_dir, indexing=indexing,  # before the manifest: always there
                                    decoding=sum_chunk_skips(cache_dir, total, key=key))
            logger.info("latent cache %s: %s", cache_dir, format_skips(skipped["reasons"]))
            write_manifest(cache_dir, key=key, num_chunks=total)
        except (RuntimeError, ValueError) as err:
            error = err
    barrier()
    if error is not None:
        raise error
    return ShardedLatentCache(cache_dir)


def _remove_leftovers(cache_dir: Path, num_chunks: int) -> None:
    """Temporary files of interrupted writes, and chunks past the end (a larger data set's)."""
    for path in cache_dir.glob("chunk-*.tmp"):
        path.unlink(missing_ok=True)
    for path in cache_dir.glob("chunk-*.safetensors"):
        if int(path.name.split("-")[1].split(".")[0]) >= num_chunks:
            path.unlink(missing_ok=True)
    remove_chunk_skips_past(cache_dir, num_chunks)
