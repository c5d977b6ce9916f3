"""On-disk sharded latent cache: the posterior q(z|x) = N(mean, std²) and the caption of every image, in
safetensors shard files of which training reads only the rows of each batch, so a process's memory does not
grow with the data set.

Layout of a cache folder:

* `chunk-000000.safetensors`, ...: chunk c holds a fixed slice of the data (items [c·S, (c+1)·S) of a map-style
  source, or tar shard c of a WebDataset), written once, atomically (temporary name, then `os.replace`). Per
  bucket `HxW` (the latent height and width) it stores `mean.HxW` and `std.HxW` `(n, C, H, W)` in float16 or
  float32; per item `bucket` (int16, the bucket's position in the metadata list) and `row` (int32, its row
  there); the captions as UTF-8 bytes `caption_bytes` cut at `caption_offsets` (n + 1). Its metadata holds the
  cache key, so a chunk written for another key is never taken for a finished one.
* `cache.json`: written last, once every chunk exists: the key, the chunk counts, images per bucket and the
  most words in a caption. A folder without it is an unfinished encode (`ldm.encode_shards` resumes it).

Items are numbered chunk by chunk, in the order each chunk stores them. The files are plain safetensors
(`safetensors.torch.load_file` reads them); training reads only the rows it needs (`os.pread`).
"""
from __future__ import annotations

import json
import os
import struct
from collections import OrderedDict
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from safetensors.torch import save_file

MANIFEST = "cache.json"
TRAINING_CACHE_DIR = "latent_cache"  # train_ldm.py's cache folder inside its output folder, unless given
CACHE_DTYPES = {"float16": torch.float16, "float32": torch.float32}
_NUMPY = {"F16": np.float16, "F32": np.float32, "I16": np.int16, "I32": np.int32, "I64": np.int64, "U8": np.uint8}
MAX_OPEN_CHUNKS = 256  # chunk files kept open at once (one file descriptor each)


def chunk_name(chunk: int) -> str:
    return f"chunk-{chunk:06d}.safetensors"


def bucket_name(latent_shape: tuple[int, ...]) -> str:
    """'HxW' of a latent (C, H, W)."""
    return f"{latent_shape[-2]}x{latent_shape[-1]}"


def write_chunk(path: Path, *, means: list[torch.Tensor], stds: list[torch.Tensor], captions: list[str],
                key: dict[str, str], dtype: torch.dtype) -> None:
    """Write one chunk atomically: item i has posterior `means[i]`, `stds[i]` `(C, H, W)` and `captions[i]`."""
    names = sorted({bucket_name(m.shape) for m in means})
    bucket_of = [names.index(bucket_name(m.shape)) for m in means]
    rows, counts = [], [0] * len(names)
    for b in bucket_of:
        rows.append(counts[b])
        counts[b] += 1
    tensors = {}
    for b, name in enumerate(names):
        members = [i for i, item_bucket in enumerate(bucket_of) if item_bucket == b]
        tensors[f"mean.{name}"] = torch.stack([means[i] for i in members]).to(dtype).contiguous()
        tensors[f"std.{name}"] = torch.stack([stds[i] for i in members]).to(dtype).contiguous()
    encoded = [caption.encode("utf-8") for caption in captions]
    tensors["bucket"] = torch.tensor(bucket_of, dtype=torch.int16)
    tensors["row"] = torch.tensor(rows, dtype=torch.int32)
    joined = b"".join(encoded)
    tensors["caption_bytes"] = (torch.frombuffer(bytearray(joined), dtype=torch.uint8) if joined
                                else torch.zeros(0, dtype=torch.uint8))
    tensors["caption_offsets"] = torch.tensor(np.cumsum([0] + [len(e) for e in encoded]), dtype=torch.int64)
    metadata = {"key": json.dumps(key, sort_keys=True), "count": str(len(captions)), "buckets": json.dumps(names),
                "bucket_counts": json.dumps(counts),
                "max_words": str(max((len(c.split()) for c in captions), default=0))}
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)  # a finished chunk appears whole or not at all


def read_header(path: Path) -> tuple[dict, int]:
    """(safetensors header: tensor name → {dtype, shape, data_offsets}, plus "__metadata__"; data start)."""
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        return json.loads(handle.read(length)), 8 + length


def chunk_is_done(path: Path, key: dict[str, str]) -> bool:
    """Whether `path` is a finished chunk written for `key` (reads the header only)."""
    try:
        header, _ = read_header(path)
    except (OSError, ValueError, struct.error):
        return False
    return header.get("__metadata__", {}).get("key") == json.dumps(key, sort_keys=True)


class _Chunk:
    """One chunk file, open for reading: each request reads only the bytes it needs with `os.pread`.

    Not memory-mapped on purpose: the kernel maps a whole neighbourhood of already-cached file pages into a
    process on every fault of a mapping (fault-around, ~64 KB), so random batches from a mapped cache soon
    count the whole cache in the process's resident memory (measured: +25 MB of RssFile over 50 batches of a
    20,000-image cache). Pages that `pread` reads stay in the kernel's page cache, shared and reclaimable.
    """

    def __init__(self, path: Path):
        header, self._start = read_header(path)
        self.metadata = header.pop("__metadata__", {})
        self.buckets = json.loads(self.metadata["buckets"])
        self._file = open(path, "rb", buffering=0)  # closed with the object
        self._fd = self._file.fileno()
        self.shapes = {name: tuple(info["shape"]) for name, info in header.items()}
        self._info = {name: (np.dtype(_NUMPY[info["dtype"]]), info["data_offsets"][0])
                      for name, info in header.items()}

    def rows(self, name: str, rows) -> np.ndarray:
        """Rows `rows` of tensor `name` (first axis), one read per run of consecutive rows."""
        dtype, begin = self._info[name]
        row_shape = self.shapes[name][1:]
        row_bytes = dtype.itemsize * int(np.prod(row_shape, dtype=np.int64))
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        out = np.empty((len(rows), *row_shape), dtype)
        flat = out.reshape(len(rows), -1).view(np.uint8)
        order = np.argsort(rows, kind="stable")
        i = 0
        while i < len(order):  # read consecutive rows together
            j = i + 1
            while j < len(order) and rows[order[j]] == rows[order[j - 1]] + 1:
                j += 1
            data = os.pread(self._fd, row_bytes * (j - i), self._start + begin + row_bytes * int(rows[order[i]]))
            flat[order[i:j]] = np.frombuffer(data, np.uint8).reshape(j - i, row_bytes)
            i = j
        return out

    def whole(self, name: str) -> np.ndarray:
        """All of tensor `name`."""
        return self.rows(name, np.arange(self.shapes[name][0]))

    def caption(self, position: int) -> str:
        start, end = self.rows("caption_offsets", [position, position + 1])
        return os.pread(self._fd, int(end - start),
                        self._start + self._info["caption_bytes"][1] + int(start)).decode("utf-8")

    def captions(self) -> list[str]:
        """Every caption of the chunk, in order."""
        offsets, data = self.whole("caption_offsets"), self.whole("caption_bytes").tobytes()
        return [data[a:b].decode("utf-8") for a, b in zip(offsets[:-1], offsets[1:])]


class ShardedLatentCache:
    """A finished cache folder, read lazily. Items are numbered 0 … len − 1 (chunk by chunk).

    Memory held: the manifest and up to MAX_OPEN_CHUNKS open files (one descriptor and header each); rows are
    read on demand; `bucket_items` builds one index array per bucket.
    """

    def __init__(self, cache_dir: str | Path):
        self.root = Path(cache_dir)
        manifest_path = self.root / MANIFEST
        if not manifest_path.is_file():
            raise FileNotFoundError(f"{self.root} is not a finished latent cache (no {MANIFEST}); build it with "
                                    f"`ldm-data cache`.")
        manifest = json.loads(manifest_path.read_text())
        self.key: dict[str, str] = manifest["key"]
        self.counts: list[int] = manifest["counts"]
        self.bucket_sizes: dict[str, int] = manifest["buckets"]
        self.max_words: int = manifest["max_words"]
        self.starts = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)
        self._open: OrderedDict[int, _Chunk] = OrderedDict()

    def __len__(self) -> int:
        return int(self.starts[-1])

    def _chunk(self, chunk: int) -> _Chunk:
        if chunk in self._open:
            self._open.move_to_end(chunk)
            return self._open[chunk]
        if len(self._open) >= MAX_OPEN_CHUNKS:
            self._open.popitem(last=False)
        opened = self._open[chunk] = _Chunk(self.root / chunk_name(chunk))
        return opened

    def _locate(self, indices) -> tuple[np.ndarray, np.ndarray]:
        """(chunk, position in chunk) per item index."""
        index = np.asarray(indices, dtype=np.int64).reshape(-1)
        if index.size and (index.min() < 0 or index.max() >= len(self)):
            raise IndexError(f"item index out of range for a cache of {len(self)} images")
        chunk = np.searchsorted(self.starts, index, side="right") - 1
        return chunk, index - self.starts[chunk]

    def bucket_of(self, index: int) -> str:
        """'HxW' latent size of item `index`."""
        chunk, position = self._locate([index])
        opened = self._chunk(int(chunk[0]))
        return opened.buckets[int(opened.rows("bucket", position)[0])]

    def latent_shape(self, index: int) -> tuple[int, int, int]:
        """(C, H, W) of item `index`."""
        chunk, _ = self._locate([index])
        return self._chunk(int(chunk[0])).shapes[f"mean.{self.bucket_of(index)}"][1:]

    def posterior(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) of q(z|x) for `indices` (one bucket): float32 `(len(indices), C, H, W)`."""
        chunks, positions = self._locate(indices)
        name = self.bucket_of(int(indices[0]))
        shape = (len(chunks), *self.latent_shape(int(indices[0])))
        mean, std = np.empty(shape, np.float32), np.empty(shape, np.float32)
        for chunk in np.unique(chunks):
            selected = np.nonzero(chunks == chunk)[0]
            opened = self._chunk(int(chunk))
            if any(opened.buckets[b] != name for b in opened.rows("bucket", positions[selected])):
                raise ValueError(f"a batch must come from one bucket; {name} was mixed with another.")
            rows = opened.rows("row", positions[selected])
            mean[selected] = opened.rows(f"mean.{name}", rows)
            std[selected] = opened.rows(f"std.{name}", rows)
        return torch.from_numpy(mean), torch.from_numpy(std)

    def sample(self, indices: torch.Tensor, *, scaling_factor: float, generator: torch.Generator) -> torch.Tensor:
        """A fresh latent per index (one bucket): (mean + std · ε) · scaling_factor, ε ~ N(0, I) drawn on the CPU
        from `generator` (as `ldm.latent_cache.LatentCache.sample`)."""
        mean, std = self.posterior(indices)
        return (mean + std * torch.randn(mean.shape, generator=generator)) * scaling_factor

    def captions_of(self, indices: torch.Tensor) -> list[str]:
        chunks, positions = self._locate(indices)
        return [self._chunk(int(c)).caption(int(p)) for c, p in zip(chunks, positions)]

    def iter_captions(self) -> Iterator[str]:
        """Every caption in item order, one chunk at a time."""
        for chunk, count in enumerate(self.counts):
            if count:
                yield from _Chunk(self.root / chunk_name(chunk)).captions()

    def bucket_items(self) -> dict[str, np.ndarray]:
        """Item indices (int64) of each bucket, in item order."""
        parts: dict[str, list[np.ndarray]] = {name: [] for name in self.bucket_sizes}
        for chunk, count in enumerate(self.counts):
            if not count:
                continue
            opened = _Chunk(self.root / chunk_name(chunk))
            buckets = opened.whole("bucket")
            for b, name in enumerate(opened.buckets):
                parts[name].append(self.starts[chunk] + np.nonzero(buckets == b)[0])
        return {name: np.concatenate(p) if p else np.zeros(0, np.int64) for name, p in parts.items()}


def write_manifest(cache_dir: Path, *, key: dict[str, str], num_chunks: int) -> dict:
    """Check every chunk 0 … num_chunks − 1 is finished for `key`, then write `cache.json` atomically."""
    counts, buckets, max_words = [], {}, 0
    for chunk in range(num_chunks):
        path = cache_dir / chunk_name(chunk)
        if not chunk_is_done(path, key):
            raise RuntimeError(f"latent cache chunk {path} is missing or was written for another key.")
        metadata = read_header(path)[0]["__metadata__"]
        counts.append(int(metadata["count"]))
        for name, count in zip(json.loads(metadata["buckets"]), json.loads(metadata["bucket_counts"])):
            buckets[name] = buckets.get(name, 0) + count
        max_words = max(max_words, int(metadata["max_words"]))
    if not sum(counts):
        raise ValueError("The dataset yielded no images to encode.")
    manifest = {"key": key, "counts": counts, "buckets": dict(sorted(buckets.items())), "max_words": max_words}
    tmp = cache_dir / f"{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, cache_dir / MANIFEST)
    return manifest
