"""ldm/encode_shards.py: every item once and equal to a direct VAE encode; chunks that do not depend on the
process count; a finished chunk never rewritten (resume after kill -9); any key change re-encodes; tar shards
streamed one chunk per shard with bad samples skipped."""
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import torch
from test_data_webdataset import _add, _png, _write_shards
from tiny_components import tiny_vae

from ldm.data import open_dataset
from ldm.data.images import NOT_AN_IMAGE
from ldm.encode_shards import build_latent_cache, encode_chunks, shard_cache_key
from ldm.latent_cache import encode_dataset
from ldm.latent_shards import MANIFEST, ShardedLatentCache, chunk_name
from ldm.skip_counts import read_skipped

REPO = Path(__file__).resolve().parents[1]


def _key(vae, source="shapes", dtype="float32", chunk_size=4):
    return shard_cache_key(source=source, resolution="32", vae=vae, dtype=dtype, chunk_size=chunk_size)


def _stamps(folder):
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(folder.glob("chunk-*"))}


def test_every_item_once_equal_to_the_direct_encode(tmp_path):
    vae, dataset = tiny_vae(), open_dataset("shapes", resolution=32, size=10)
    cache = build_latent_cache(vae, dataset, cache_dir=tmp_path, key=_key(vae), chunk_size=4, batch_size=3,
                               num_workers=2)
    reference = encode_dataset(vae, dataset, batch_size=10)
    assert cache.counts == [4, 4, 2] and len(cache) == 10
    mean, std = cache.posterior(torch.arange(10))
    torch.testing.assert_close(mean, reference.mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(std, reference.std, rtol=1e-5, atol=1e-5)
    assert list(cache.iter_captions()) == reference.captions


def test_process_shares_make_the_one_process_cache(tmp_path):
    """Two ranks encode chunks 0, 2 and 1 separately; the union is the one-process encode, file for file."""
    vae, dataset = tiny_vae(), open_dataset("shapes", resolution=32, size=10)
    key = _key(vae)
    for rank in (1, 0):
        assert encode_chunks(vae, dataset, cache_dir=tmp_path / "two", key=key, rank=rank, world_size=2,
                             chunk_size=4, batch_size=3) == 3
    assert sorted(p.name for p in (tmp_path / "two").glob("chunk-*")) == [chunk_name(c) for c in range(3)]
    two = build_latent_cache(vae, dataset, cache_dir=tmp_path / "two", key=key, chunk_size=4, batch_size=3)
    one = build_latent_cache(vae, dataset, cache_dir=tmp_path / "one", key=key, chunk_size=4, batch_size=3)
    assert torch.equal(two.posterior(torch.arange(10))[0], one.posterior(torch.arange(10))[0])


def test_finished_chunks_are_kept_and_a_key_change_reencodes(tmp_path):
    vae, dataset = tiny_vae(), open_dataset("shapes", resolution=32, size=10)
    first = build_latent_cache(vae, dataset, cache_dir=tmp_path, key=_key(vae), chunk_size=4)
    stamps = _stamps(tmp_path)
    (tmp_path / chunk_name(1)).unlink()
    (tmp_path / MANIFEST).unlink()  # as if stopped while chunk 1 was being encoded
    again = build_latent_cache(vae, dataset, cache_dir=tmp_path, key=_key(vae), chunk_size=4)
    after = _stamps(tmp_path)
    assert {n: after[n] for n in after if n != chunk_name(1)} == {n: stamps[n] for n in stamps if n != chunk_name(1)}
    assert torch.equal(again.posterior(torch.arange(10))[0], first.posterior(torch.arange(10))[0])
    build_latent_cache(vae, dataset, cache_dir=tmp_path, key=_key(vae), chunk_size=4)
    assert _stamps(tmp_path) == after  # same key: reused as it is
    other = open_dataset("shapes", resolution=32, size=10, seed=1)
    for changed in (_key(vae, source="shapes:seed=1"), _key(vae, dtype="float16")):
        cache = build_latent_cache(vae, other, cache_dir=tmp_path, key=changed, chunk_size=4)
        assert cache.key == changed
        assert all(after[n][1] != s[1] for n, s in _stamps(tmp_path).items())
    with torch.no_grad():
        next(iter(vae.parameters())).add_(0.1)
    assert _key(vae) != _key(tiny_vae())  # new VAE weights: a new key


class SlowShapes(torch.utils.data.Dataset):
    def __init__(self):
        self.data = open_dataset("shapes", resolution=32, size=24)

    def __len__(self):
        return len(self.data)

    def __getitem__(self, index):
        time.sleep(0.1)
        return self.data[index]


def test_an_encode_killed_part_way_resumes_without_rewriting(tmp_path):
    vae = tiny_vae()
    vae.save_pretrained(tmp_path / "vae")
    script = (f"import sys; sys.path[:0] = [{str(REPO)!r}, {str(REPO / 'tests')!r}]\n"
              "from diffusers import AutoencoderKL\nfrom test_encode_shards import SlowShapes, _key\n"
              "from ldm.encode_shards import build_latent_cache\n"
              f"vae = AutoencoderKL.from_pretrained({str(tmp_path / 'vae')!r})\n"
              f"build_latent_cache(vae, SlowShapes(), cache_dir={str(tmp_path / 'c')!r}, key=_key(vae), chunk_size=4)\n")
    process = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 600  # the wait ends when chunk 1 appears; imports take ~100 s at load 8
    while not (tmp_path / "c" / chunk_name(1)).exists() and time.monotonic() < deadline:
        if process.poll() is not None:
            break  # the encode failed or finished early: the asserts below say which
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = _stamps(tmp_path / "c")
    assert chunk_name(0) in finished and chunk_name(5) not in finished
    assert not (tmp_path / "c" / MANIFEST).exists()
    vae = type(vae).from_pretrained(tmp_path / "vae")
    cache = build_latent_cache(vae, SlowShapes(), cache_dir=tmp_path / "c", key=_key(vae), chunk_size=4)
    after = _stamps(tmp_path / "c")
    assert len(cache) == 24 and all(after[name] == stamp for name, stamp in finished.items()
                                    if name.endswith(".safetensors"))
    assert not list((tmp_path / "c").glob("*.tmp"))
    reference = encode_dataset(vae, SlowShapes().data, batch_size=4)
    torch.testing.assert_close(cache.posterior(torch.arange(24))[0], reference.mean, rtol=1e-5, atol=1e-5)


def test_tar_shards_stream_one_chunk_each_and_skip_bad_samples(tmp_path):
    folder = _write_shards(tmp_path / "s", 3, 2)
    with tarfile.open(folder / "data-003.tar", "w") as tar:
        _add(tar, "00006.png", _png(6))
        _add(tar, "00006.txt", b"sample 6")
        _add(tar, "00007.png", b"not a png")
        _add(tar, "00007.txt", b"sample 7")
    vae, dataset = tiny_vae(), open_dataset(folder, resolution=32)
    cache = build_latent_cache(vae, dataset, cache_dir=tmp_path / "c", key=_key(vae, source=str(folder)),
                               num_workers=2, batch_size=4)
    assert cache.counts == [2, 2, 2, 1]
    assert read_skipped(tmp_path / "c") == {NOT_AN_IMAGE: 1}  # found in a worker, counted by the encoder
    assert list(cache.iter_captions()) == [f"sample {k}" for k in range(7)]
    reference = encode_dataset(vae, open_dataset(folder, resolution=32), batch_size=7)
    torch.testing.assert_close(cache.posterior(torch.arange(7))[0], reference.mean, rtol=1e-5, atol=1e-5)
    assert isinstance(cache, ShardedLatentCache)
