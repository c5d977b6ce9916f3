"""Counts of the samples a latent-cache encode skipped, kept beside the cache (ldm/latent_shards.py owns the
chunks and the manifest; this module owns only the side files).

A sample can be skipped at two moments. Cheap checks (missing or empty caption, unreadable header, too small)
run when a source is indexed, in every process alike: those counts are the source's `skipped` before the encode.
A sample that fails only on full decode (a truncated file) is found by whichever DataLoader worker decodes it,
a process apart from the encoder: the worker hands back a marked skip (`ldm.data.images.skip_marker`) instead
of an item, and the process that encodes the chunk counts it. Each chunk's decode-time counts are written
atomically, just before the chunk itself, to `chunk-NNNNNN.skipped.json` (no file when nothing was skipped), so
a resumed encode never counts a chunk twice; the main process sums them with the indexing counts into
`skipped.json` once every chunk exists.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

SKIPPED_FILE = "skipped.json"


def chunk_skips_path(cache_dir: Path, chunk: int) -> Path:
    return Path(cache_dir) / f"chunk-{chunk:06d}.skipped.json"


def format_skips(counts: dict[str, int]) -> str:
    """'skipped N images: reason: count, ...' (most frequent reason first), or 'skipped 0 images'."""
    total = sum(counts.values())
    reasons = ", ".join(f"{reason}: {count}" for reason, count in sorted(counts.items(), key=lambda kv: -kv[1]))
    return f"skipped {total} images" + (f": {reasons}" if reasons else "")


def _write_json(path: Path, value: dict) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # matches chunk-*.tmp: cleaned up after a kill
    tmp.write_text(json.dumps(value, indent=1, sort_keys=True))
    os.replace(tmp, path)


def write_chunk_skips(cache_dir: Path, chunk: int, counts: dict[str, int], *, key: dict[str, str]) -> None:
    """Record chunk `chunk`'s decode-time skips (reason → count) for `key`; call before the chunk is written.
    With no skips, an older file (another key's encode) is removed instead."""
    path = chunk_skips_path(cache_dir, chunk)
    if not sum(counts.values()):
        path.unlink(missing_ok=True)
        return
    _write_json(path, {"key": key, "skipped": dict(counts)})


def sum_chunk_skips(cache_dir: Path, num_chunks: int, *, key: dict[str, str]) -> Counter:
    """Decode-time skips of chunks 0 … num_chunks − 1 recorded for `key`, summed (reason → count)."""
    total: Counter = Counter()
    for chunk in range(num_chunks):
        path = chunk_skips_path(cache_dir, chunk)
        if path.is_file():
            record = json.loads(path.read_text())
            if record.get("key") == key:
                total.update(record["skipped"])
    return total


def write_skipped(cache_dir: Path, *, indexing: dict[str, int], decoding: dict[str, int]) -> dict:
    """Write `skipped.json` atomically: {"total", "reasons" (both moments summed), "indexing", "decoding"}."""
    reasons = Counter(indexing) + Counter(decoding)
    record = {"total": sum(reasons.values()), "reasons": dict(reasons), "indexing": dict(indexing),
              "decoding": dict(decoding)}
    _write_json(Path(cache_dir) / SKIPPED_FILE, record)
    return record


def read_skipped(cache_dir: Path) -> dict[str, int]:
    """Reason → count of every sample the cache's encode skipped ({} for a cache without `skipped.json`)."""
    path = Path(cache_dir) / SKIPPED_FILE
    return json.loads(path.read_text())["reasons"] if path.is_file() else {}


def remove_chunk_skips_past(cache_dir: Path, num_chunks: int) -> None:
    """Remove the skip files of chunks numbered num_chunks and up (left by a larger data set's encode)."""
    for path in Path(cache_dir).glob("chunk-*.skipped.json"):
        if int(path.name.split("-")[1].split(".")[0]) >= num_chunks:
            path.unlink(missing_ok=True)
