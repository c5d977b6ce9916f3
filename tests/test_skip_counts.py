"""ldm/skip_counts.py: samples that fail to decode inside DataLoader workers reach the encoding process, are
counted once per chunk beside the cache (also across a resume), and are summed with the indexing-time skips."""
import io
import json
import logging

import numpy as np
from PIL import Image
from tiny_components import tiny_vae

from ldm.data import open_dataset
from ldm.data.images import TRUNCATED, ZERO_BYTES
from ldm.encode_shards import build_latent_cache, shard_cache_key
from ldm.latent_shards import MANIFEST, chunk_name
from ldm.skip_counts import (SKIPPED_FILE, chunk_skips_path, format_skips, read_skipped, sum_chunk_skips,
                             write_chunk_skips)


def truncated_png(size=(40, 40)) -> bytes:
    """A PNG of noise cut in half: its header reads fine (indexing keeps it), its pixels do not decode."""
    noise = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, "PNG")
    return buffer.getvalue()[: len(buffer.getvalue()) // 2]


def write_folder_with_bad_images(folder, *, good=5, truncated_at=(3,), empty_at=()):
    """Images 0 … n − 1 of one colour each, captioned "image k"; some truncated, some zero-byte files."""
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(good + len(truncated_at) + len(empty_at)):
        path = folder / f"{k:03d}.png"
        if k in truncated_at:
            path.write_bytes(truncated_png())
        elif k in empty_at:
            path.write_bytes(b"")
        else:
            Image.new("RGB", (40, 40), (40 * k % 256, 255 - 30 * k % 256, 90)).save(path)
        path.with_suffix(".txt").write_text(f"image {k}")
    return folder


def test_format_skips_names_every_reason_most_frequent_first():
    assert format_skips({}) == "skipped 0 images"
    assert format_skips({"a": 1, "b": 3}) == "skipped 4 images: b: 3, a: 1"


def test_chunk_counts_are_per_key_and_an_empty_count_removes_an_old_file(tmp_path):
    key, other = {"k": "1"}, {"k": "2"}
    write_chunk_skips(tmp_path, 0, {TRUNCATED: 2}, key=key)
    write_chunk_skips(tmp_path, 1, {TRUNCATED: 1, ZERO_BYTES: 1}, key=other)
    assert sum_chunk_skips(tmp_path, 2, key=key) == {TRUNCATED: 2}
    write_chunk_skips(tmp_path, 0, {}, key=other)
    assert not chunk_skips_path(tmp_path, 0).exists() and not list(tmp_path.glob("*.tmp"))


def test_decode_failures_in_workers_are_counted_once_beside_the_cache(tmp_path, caplog):
    """7 files: one zero-byte (skipped while indexing), two truncated (found only by the 2 DataLoader workers
    decoding them); chunks of 2 items. The counts reach skipped.json, the cache holds the 4 good images, and a
    resumed encode (chunk 2 and the manifest deleted) counts nothing twice."""
    folder = write_folder_with_bad_images(tmp_path / "data", good=4, truncated_at=(1, 4), empty_at=(5,))
    vae, dataset = tiny_vae(), open_dataset(folder, resolution=32)
    assert len(dataset) == 6 and dict(dataset.skipped) == {ZERO_BYTES: 1}  # the truncated pass indexing
    key = shard_cache_key(source=str(folder), resolution=32, vae=vae, dtype="float32", chunk_size=2)

    def build():
        return build_latent_cache(vae, dataset, cache_dir=tmp_path / "c", key=key, chunk_size=2, batch_size=2,
                                  num_workers=2)
    with caplog.at_level(logging.INFO, logger="ldm.encode_shards"):
        cache = build()
    assert list(cache.iter_captions()) == ["image 0", "image 2", "image 3", "image 6"]
    assert cache.counts == [1, 2, 1]  # chunk 0: images 0, 1; chunk 1: 2, 3; chunk 2: 4, 6 (5 left at indexing)
    expected = {TRUNCATED: 2, ZERO_BYTES: 1}
    assert read_skipped(tmp_path / "c") == expected
    record = json.loads((tmp_path / "c" / SKIPPED_FILE).read_text())
    assert record["decoding"] == {TRUNCATED: 2} and record["indexing"] == {ZERO_BYTES: 1} and record["total"] == 3
    assert "process 0: skipped 2 images: truncated or corrupt image: 2 while decoding" in caplog.text
    assert f"skipped 3 images: {TRUNCATED}: 2, {ZERO_BYTES}: 1" in caplog.text
    assert dict(dataset.skipped) == {ZERO_BYTES: 1}  # the workers' counts went to the encoder, not here
    (tmp_path / "c" / chunk_name(2)).unlink()  # as if killed while encoding chunk 2, which holds image 4
    (tmp_path / "c" / MANIFEST).unlink()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ldm.encode_shards"):
        again = build()
    assert len(again) == 4 and read_skipped(tmp_path / "c") == expected
    assert "process 0: skipped 1 images: truncated or corrupt image: 1 while decoding" in caplog.text
