"""ldm/data/cli.py: `ldm-data check` counts, `ldm-data preview` grids, one-line errors."""

import json

import numpy as np
from PIL import Image

from ldm.data.cli import main
from ldm.data.images import NOT_AN_IMAGE, TRUNCATED, ZERO_BYTES


def _folder(tmp_path):
    for i in range(3):
        Image.new("RGB", (40, 40), (80 * i, 0, 0)).save(tmp_path / f"{i}.png")
        (tmp_path / f"{i}.txt").write_text(f"image {i}")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("hello")
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "cut.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "cut.png").read_bytes()[:3000])
    for name in ("empty", "text", "cut"):
        (tmp_path / f"{name}.txt").write_text("caption")
    return tmp_path


def test_check_json_counts_usable_and_skipped(tmp_path, capsys):
    assert main(["check", str(_folder(tmp_path)), "--json", "--resolution", "32"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report == {"usable": 3, "skipped": {ZERO_BYTES: 1, NOT_AN_IMAGE: 1, TRUNCATED: 1}}


def test_check_table_and_no_usable_sample(tmp_path, capsys):
    assert main(["check", str(_folder(tmp_path)), "--resolution", "32"]) == 0
    table = capsys.readouterr().out
    assert "usable" in table and "3" in table and ZERO_BYTES in table
    assert main(["check", str(tmp_path), "--json", "--resolution", "64"]) == 2  # every image is too small
    captured = capsys.readouterr()
    assert json.loads(captured.out)["usable"] == 0 and captured.err.startswith("error:")


def test_preview_writes_a_captioned_grid(tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert main(["preview", "shapes", "-n", "4", "--resolution", "32", "--out", str(out)]) == 0
    grid = Image.open(out)
    assert grid.width > 2 * 32 and grid.height > 2 * 32  # 2 x 2 tiles plus caption bands
    assert str(out) in capsys.readouterr().out


def test_errors_are_one_line_without_traceback(tmp_path, capsys):
    assert main(["preview", str(tmp_path / "missing"), "--out", str(tmp_path / "g.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1 and "Traceback" not in err


def test_check_reports_images_per_bucket(tmp_path, capsys):
    for i, size in enumerate([(128, 64), (130, 66), (64, 128), (96, 96)]):
        Image.new("RGB", size, (80 * i, 0, 0)).save(tmp_path / f"{i}.png")
        (tmp_path / f"{i}.txt").write_text(f"image {i}")
    assert main(["check", str(tmp_path), "--json", "--resolution", "32", "--buckets"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report == {"usable": 4, "skipped": {}, "buckets": {"24x40": 1, "32x32": 1, "40x24": 2}}
    assert main(["check", str(tmp_path), "--resolution", "32", "--buckets", "--bucket-step", "16"]) == 0
    assert "bucket 32x32  1" in capsys.readouterr().out.splitlines()
