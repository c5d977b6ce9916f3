"""ldm/data/cache_command.py: `ldm-data cache` under `accelerate launch` with 2 CPU processes builds the cache
one process builds; a sample that fails to decode in a worker is counted; user mistakes are one-line errors."""
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from launching import launch_two_processes
from test_skip_counts import write_folder_with_bad_images
from tiny_components import tiny_vae

from ldm.data.cli import main
from ldm.data.images import TRUNCATED
from ldm.latent_shards import ShardedLatentCache, chunk_name
from ldm.skip_counts import read_skipped

REPO = Path(__file__).resolve().parents[1]


def _cache_args(vae, out, *extra):
    return ["cache", "shapes:size=12", "--resolution", "32", "--vae", str(vae), "--out", str(out),
            "--chunk-size", "4", "--batch-size", "3", "--dtype", "float32", *extra]


@pytest.mark.slow
def test_two_processes_build_the_one_process_cache(tmp_path, capsys):
    tiny_vae().save_pretrained(tmp_path / "vae")
    result = launch_two_processes(["-m", "ldm.data.cli", *_cache_args(tmp_path / "vae", tmp_path / "two")],
                                  cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "process 1: 1 of its 1 latent-cache chunks to encode" in result.stderr  # chunk 1 of 0, 1, 2
    assert main(_cache_args(tmp_path / "vae", tmp_path / "one", "--workers", "0")) == 0
    assert capsys.readouterr().out.startswith(f"wrote {tmp_path / 'one'}: 12 images in 3 chunks")
    one, two = ShardedLatentCache(tmp_path / "one"), ShardedLatentCache(tmp_path / "two")
    assert one.key == two.key and one.counts == two.counts == [4, 4, 4]
    for chunk in range(3):
        a, b = (load_file(str(root / chunk_name(chunk))) for root in (tmp_path / "one", tmp_path / "two"))
        assert a.keys() == b.keys()
        for name in a:  # the encoder's threads may sum in another order: equal within float tolerance
            torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("extra, words", [(("--workers", "-1"), "--workers must be"),
                                          (("--chunk-size", "0"), "--chunk-size must be")])
def test_bad_options_are_one_line_errors(tmp_path, capsys, extra, words):
    assert main(_cache_args(tmp_path / "vae", tmp_path / "out", *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and words in err[0]


def test_missing_vae_is_a_one_line_error(tmp_path, capsys):
    assert main(_cache_args(tmp_path / "no_vae", tmp_path / "out")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "no_vae" in err[-1] and "Traceback" not in "".join(err)


def test_an_image_that_fails_to_decode_in_a_worker_is_counted(tmp_path, capsys):
    """A truncated PNG passes the header probe and fails only in a DataLoader worker (--workers 2): the count
    is 1, in the summary line and in skipped.json, and the cache holds the other images."""
    folder = write_folder_with_bad_images(tmp_path / "data", good=4, truncated_at=(2,))
    tiny_vae().save_pretrained(tmp_path / "vae")
    argv = ["cache", str(folder), "--resolution", "32", "--vae", str(tmp_path / "vae"), "--out", str(tmp_path / "c"),
            "--chunk-size", "2", "--batch-size", "2", "--workers", "2"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"wrote {tmp_path / 'c'}: 4 images in 3 chunks" in out and f"skipped 1 images: {TRUNCATED}: 1" in out
    assert read_skipped(tmp_path / "c") == {TRUNCATED: 1}
    assert list(ShardedLatentCache(tmp_path / "c").iter_captions()) == [f"image {k}" for k in (0, 1, 3, 4)]
