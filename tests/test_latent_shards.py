"""ldm/latent_shards.py: chunk files round-trip what was written (float32 exactly, float16 as rounded), are plain
safetensors, keep buckets apart, and are recognised as finished only for their own key."""
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ldm.latent_shards import (MANIFEST, ShardedLatentCache, chunk_is_done, chunk_name, write_chunk,
                               write_manifest)

KEY = {"source": "test", "dtype": "float32"}


def _items(n, shape, seed):
    generator = torch.Generator().manual_seed(seed)
    return ([torch.randn(shape, generator=generator) for _ in range(n)],
            [torch.rand(shape, generator=generator) for _ in range(n)])


@pytest.fixture
def two_chunks(tmp_path):
    """Chunk 0: 3 square items and 2 wide ones, interleaved; chunk 1: 2 square items."""
    means0, stds0 = _items(5, (4, 8, 8), 0)
    wide_means, wide_stds = _items(2, (4, 6, 12), 1)
    means0[1], stds0[1], means0[3], stds0[3] = wide_means[0], wide_stds[0], wide_means[1], wide_stds[1]
    means1, stds1 = _items(2, (4, 8, 8), 2)
    captions = ["a red circle", "un cercle rouge élargi", "a blue square", "a wide", "x", "y z", "ü"]
    write_chunk(tmp_path / chunk_name(0), means=means0, stds=stds0, captions=captions[:5], key=KEY,
                dtype=torch.float32)
    write_chunk(tmp_path / chunk_name(1), means=means1, stds=stds1, captions=captions[5:], key=KEY,
                dtype=torch.float32)
    write_manifest(tmp_path, key=KEY, num_chunks=2)
    return tmp_path, means0 + means1, stds0 + stds1, captions


def test_items_read_back_exactly_in_item_order(two_chunks):
    root, means, stds, captions = two_chunks
    cache = ShardedLatentCache(root)
    assert len(cache) == 7 and cache.counts == [5, 2] and cache.max_words == 4
    assert cache.bucket_sizes == {"6x12": 2, "8x8": 5}
    items = cache.bucket_items()
    assert items["8x8"].tolist() == [0, 2, 4, 5, 6] and items["6x12"].tolist() == [1, 3]
    for bucket, indices in items.items():
        mean, std = cache.posterior(torch.as_tensor(indices))
        assert torch.equal(mean, torch.stack([means[i] for i in indices]))
        assert torch.equal(std, torch.stack([stds[i] for i in indices]))
        assert all(cache.bucket_of(int(i)) == bucket for i in indices)
    assert cache.latent_shape(3) == (4, 6, 12)
    assert cache.captions_of(torch.tensor([6, 1, 0])) == [captions[6], captions[1], captions[0]]
    assert list(cache.iter_captions()) == captions
    with pytest.raises(ValueError, match="one bucket"):
        cache.posterior(torch.tensor([0, 1]))
    with pytest.raises(IndexError):
        cache.posterior(torch.tensor([7]))


def test_rows_in_any_order_and_repeated_read_back_without_mapping_the_files(two_chunks):
    """Batches are random rows: shuffled, repeated, across chunks. They are read with pread, so no chunk file is
    mapped into the process (a mapping's fault-around would count the whole cache as the process's memory)."""
    root, means, stds, captions = two_chunks
    cache = ShardedLatentCache(root)
    order = [6, 0, 4, 0, 2, 5, 6]
    mean, std = cache.posterior(torch.tensor(order))
    assert torch.equal(mean, torch.stack([means[i] for i in order]))
    assert torch.equal(std, torch.stack([stds[i] for i in order]))
    assert cache.captions_of(torch.tensor(order)) == [captions[i] for i in order]
    maps = Path("/proc/self/maps")
    if maps.exists():
        assert chunk_name(0) not in maps.read_text() and chunk_name(1) not in maps.read_text()


def test_sample_is_the_posterior_draw(two_chunks):
    root, means, stds, _ = two_chunks
    latents = ShardedLatentCache(root).sample(torch.tensor([5, 0]), scaling_factor=0.5,
                                              generator=torch.Generator().manual_seed(3))
    noise = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(3))
    expected = (torch.stack([means[5], means[0]]) + torch.stack([stds[5], stds[0]]) * noise) * 0.5
    torch.testing.assert_close(latents, expected, rtol=0, atol=1e-6)


def test_chunks_are_plain_safetensors_and_float16_is_rounding_only(tmp_path):
    means, stds = _items(3, (4, 8, 8), 0)
    path = tmp_path / chunk_name(0)
    write_chunk(path, means=means, stds=stds, captions=["a", "b", "c"], key=KEY, dtype=torch.float16)
    stored = load_file(str(path))
    assert stored["mean.8x8"].dtype == torch.float16
    assert torch.equal(stored["mean.8x8"], torch.stack(means).half())
    write_manifest(tmp_path, key=KEY, num_chunks=1)
    mean, _ = ShardedLatentCache(tmp_path).posterior(torch.arange(3))
    assert mean.dtype == torch.float32 and torch.equal(mean, torch.stack(means).half().float())
    assert not list(tmp_path.glob("*.tmp"))


def test_a_chunk_is_finished_only_for_its_key(tmp_path):
    means, stds = _items(2, (4, 8, 8), 0)
    path = tmp_path / chunk_name(0)
    assert not chunk_is_done(path, KEY)
    write_chunk(path, means=means, stds=stds, captions=["a", "b"], key=KEY, dtype=torch.float32)
    assert chunk_is_done(path, KEY) and not chunk_is_done(path, {**KEY, "source": "other"})
    with pytest.raises(RuntimeError, match="missing"):
        write_manifest(tmp_path, key=KEY, num_chunks=2)
    assert not (tmp_path / MANIFEST).exists()
    path.write_bytes(path.read_bytes()[:5])  # cut short
    assert not chunk_is_done(path, KEY)
    with pytest.raises(FileNotFoundError, match="not a finished latent cache"):
        ShardedLatentCache(tmp_path)
