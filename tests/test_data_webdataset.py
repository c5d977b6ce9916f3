"""ldm/data/webdataset.py: shards streamed without duplicates or gaps; bad members counted."""

import io
import tarfile

import pytest
import torch
from PIL import Image

from ldm.data import open_dataset
from ldm.data.images import CORRUPT_TAR, NO_CAPTION, NOT_AN_IMAGE
from ldm.data.webdataset import expand_shards


def _png(value):
    buffer = io.BytesIO()
    Image.new("RGB", (36, 36), (value, 0, 0)).save(buffer, "PNG")
    return buffer.getvalue()


def _add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _write_shards(folder, n_shards, per_shard):
    """Sample k has a red value and caption both encoding k, so every item says which sample it is."""
    folder.mkdir(exist_ok=True)
    for s in range(n_shards):
        with tarfile.open(folder / f"data-{s:03d}.tar", "w") as tar:
            for j in range(per_shard):
                k = s * per_shard + j
                _add(tar, f"{k:05d}.png", _png(k))
                _add(tar, f"{k:05d}.txt", f"sample {k}".encode())
    return folder


def _ids(dataset, num_workers=0):
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=num_workers)
    return sorted(int(item["caption"].split()[1]) for item in loader)


def test_shard_specs(tmp_path):
    folder = _write_shards(tmp_path / "s", 3, 2)
    assert len(expand_shards(str(folder))) == 3
    assert len(expand_shards(str(folder / "data-{000..002}.tar"))) == 3
    assert len(expand_shards(str(folder / "data-00[01].tar"))) == 2
    with pytest.raises(FileNotFoundError, match="missing"):
        expand_shards(str(folder / "data-{000..005}.tar"))


def test_items_and_pixels_match_their_captions(tmp_path):
    folder = _write_shards(tmp_path / "s", 2, 3)
    dataset = open_dataset(folder / "data-000.tar", resolution=32)
    items = list(dataset)
    assert [i["caption"] for i in items] == ["sample 0", "sample 1", "sample 2"]
    for k, item in enumerate(items):
        assert item["pixel_values"].shape == (3, 32, 32)
        assert round(float((item["pixel_values"][0].mean() + 1) * 127.5)) == k


@pytest.mark.parametrize("n_shards,per_shard", [(4, 3), (1, 10)])
def test_two_workers_no_duplicates_no_gaps(tmp_path, n_shards, per_shard):
    dataset = open_dataset(_write_shards(tmp_path / "s", n_shards, per_shard), resolution=32)
    assert _ids(dataset, num_workers=2) == list(range(n_shards * per_shard))


@pytest.mark.parametrize("n_shards", [5, 2])
def test_ranks_times_workers_partition_the_stream(tmp_path, monkeypatch, n_shards):
    """Simulate 2 processes x 2 workers: the four consumers together see every sample exactly once."""
    dataset = open_dataset(_write_shards(tmp_path / "s", n_shards, 3), resolution=32)
    seen = []
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
    for rank in range(2):
        monkeypatch.setattr(torch.distributed, "get_rank", lambda rank=rank: rank)
        seen += _ids(dataset, num_workers=2)
    assert sorted(seen) == list(range(n_shards * 3))


def test_corrupt_members_and_truncated_shard(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    with tarfile.open(folder / "a.tar", "w") as tar:
        _add(tar, "0.png", _png(0))
        _add(tar, "0.txt", b"good zero")
        _add(tar, "1.png", b"garbage bytes, not an image")
        _add(tar, "1.txt", b"bad image")
        _add(tar, "2.png", _png(2))
        _add(tar, "3.png", _png(3))
        _add(tar, "3.txt", b"good three")
    with tarfile.open(folder / "b.tar", "w") as tar:
        for k in range(4, 8):
            _add(tar, f"{k}.png", _png(k))
            _add(tar, f"{k}.txt", f"good {k}".encode())
    with tarfile.open(folder / "b.tar") as tar:
        cut = tar.getmember("5.png").offset_data + 50
    (folder / "b.tar").write_bytes((folder / "b.tar").read_bytes()[:cut])  # cut inside 5.png
    dataset = open_dataset(folder, resolution=32)
    captions = [item["caption"] for item in dataset]
    assert captions[:2] == ["good zero", "good three"]
    assert captions == ["good zero", "good three", "good 4"]  # 5 is cut, so the shard ends there
    assert dict(dataset.skipped) == {NOT_AN_IMAGE: 1, NO_CAPTION: 1, CORRUPT_TAR: 1}


def test_shards_without_pairs_fail_before_training(tmp_path):
    folder = tmp_path / "s"
    folder.mkdir()
    with tarfile.open(folder / "a.tar", "w") as tar:
        _add(tar, "0.png", _png(0))
    with pytest.raises(ValueError, match="No tar shard"):
        open_dataset(folder, resolution=32)
