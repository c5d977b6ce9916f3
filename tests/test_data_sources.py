"""ldm/data/sources.py and images.py via open_dataset: folders, metadata, HF datasets, and every bad input."""

import io
import json
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from ldm.data import open_dataset
from ldm.data.images import (
    BOMB,
    EMPTY_CAPTION,
    NO_CAPTION,
    NOT_AN_IMAGE,
    NOT_UTF8,
    TOO_SMALL,
    TRUNCATED,
    ZERO_BYTES,
    NoUsableSamples,
)

COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]


def _png_bytes(colour, size=(40, 40), fmt="PNG"):
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, fmt)
    return buffer.getvalue()


def _write(folder, name, colour, caption, size=(40, 40)):
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_png_bytes(colour, size))
    if caption is not None:
        path.with_suffix(".txt").write_bytes(caption if isinstance(caption, bytes) else caption.encode())


def _bomb_png():
    """A valid PNG header claiming 100000 x 100000 pixels (over Pillow's limit) with a tiny body."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0"))
        + chunk(b"IEND", b"")
    )


def _colour_of(item):
    return tuple(int(v) for v in ((item["pixel_values"][:, 5, 5] + 1) * 127.5).round())


def test_folder_with_sidecar_captions_recursive(tmp_path):
    _write(tmp_path, "a.png", COLOURS[0], "a red thing")
    _write(tmp_path, "sub/deeper/b.png", COLOURS[1], "a green thing\n")
    (tmp_path / "c.jpg").write_bytes(_png_bytes(COLOURS[2], fmt="JPEG"))
    (tmp_path / "c.caption").write_text("a blue thing")
    dataset = open_dataset(tmp_path, resolution=32)
    assert len(dataset) == 2 and dict(dataset.skipped) == {NO_CAPTION: 1}
    items = [dataset[i] for i in range(2)]
    assert {i["caption"] for i in items} == {"a red thing", "a green thing"}
    for item in items:
        assert item["pixel_values"].shape == (3, 32, 32) and item["pixel_values"].dtype == torch.float32
        assert _colour_of(item) == COLOURS[0 if "red" in item["caption"] else 1]
    other_ext = open_dataset(tmp_path, resolution=32, caption_ext=".caption")
    assert len(other_ext) == 1 and other_ext[0]["caption"] == "a blue thing"


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_metadata_folder_with_custom_caption_column(tmp_path, fmt):
    rows = [{"file_name": f"img/{i}.png", "prompt": f"colour {i}"} for i in range(3)]
    for i in range(3):
        (tmp_path / "img").mkdir(exist_ok=True)
        (tmp_path / f"img/{i}.png").write_bytes(_png_bytes(COLOURS[i]))
    if fmt == "jsonl":
        (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    else:
        (tmp_path / "metadata.csv").write_text(
            "file_name,prompt\n" + "".join(f"{r['file_name']},{r['prompt']}\n" for r in rows)
        )
    dataset = open_dataset(tmp_path, resolution=32, caption_column="prompt")
    assert [dataset[i]["caption"] for i in range(3)] == ["colour 0", "colour 1", "colour 2"]
    assert [_colour_of(dataset[i]) for i in range(3)] == COLOURS[:3]
    with pytest.raises(ValueError, match="no caption column 'text'"):
        open_dataset(tmp_path, resolution=32)


def test_metadata_bad_rows_are_counted(tmp_path):
    (tmp_path / "ok.png").write_bytes(_png_bytes(COLOURS[0]))
    lines = [
        b'{"file_name": "ok.png", "text": "fine"}',
        b'{"file_name": "ok.png", "text": "  "}',
        b'{"file_name": "gone.png", "text": "no file"}',
        b'{"file_name": "ok.png", "text": "caf\xe9"}',
        b'{"file_name": "ok.png"}',
    ]
    (tmp_path / "metadata.jsonl").write_bytes(b"\n".join(lines))
    dataset = open_dataset(tmp_path, resolution=32)
    assert len(dataset) == 1
    assert dict(dataset.skipped) == {EMPTY_CAPTION: 1, "image file missing": 1, NOT_UTF8: 1, NO_CAPTION: 1}


def test_hf_save_to_disk_dataset(tmp_path):
    datasets = pytest.importorskip("datasets", reason="the datasets extra is not installed")
    images = [Image.new("RGB", (40, 40), c) for c in COLOURS[:3]]
    table = datasets.Dataset.from_dict({"image": images, "text": ["red", "", "blue"]})
    table = table.cast_column("image", datasets.Image())
    datasets.DatasetDict({"train": table}).save_to_disk(str(tmp_path / "hf"))
    dataset = open_dataset(tmp_path / "hf", resolution=32)
    assert len(dataset) == 2 and dict(dataset.skipped) == {EMPTY_CAPTION: 1}
    assert [(_colour_of(dataset[i]), dataset[i]["caption"]) for i in range(2)] == [
        (COLOURS[0], "red"),
        (COLOURS[2], "blue"),
    ]
    with pytest.raises(ValueError, match="no split 'test'"):
        open_dataset(tmp_path / "hf", resolution=32, split="test")


BAD_FILES = {
    ZERO_BYTES: lambda: b"",
    NOT_AN_IMAGE: lambda: b"this is a text file, not a png\n",
    TOO_SMALL: lambda: _png_bytes(COLOURS[0], size=(16, 40)),
    BOMB: _bomb_png,
}


@pytest.mark.parametrize("reason", list(BAD_FILES))
def test_bad_image_files_are_skipped_and_counted(tmp_path, reason):
    _write(tmp_path, "good.png", COLOURS[1], "good")
    (tmp_path / "bad.png").write_bytes(BAD_FILES[reason]())
    (tmp_path / "bad.txt").write_text("bad")
    dataset = open_dataset(tmp_path, resolution=32)
    assert len(dataset) == 1 and dict(dataset.skipped) == {reason: 1}
    assert dataset[0]["caption"] == "good"


def test_truncated_image_is_skipped_when_decoded(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, "PNG")
    (tmp_path / "a.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (tmp_path / "a.txt").write_text("truncated")
    _write(tmp_path, "b.png", COLOURS[2], "fine")
    dataset = open_dataset(tmp_path, resolution=32)
    assert len(dataset) == 2  # the header is fine, so indexing keeps it
    assert dataset[0]["caption"] == "fine"  # decoding fails: the next usable sample is served instead
    assert dict(dataset.skipped) == {TRUNCATED: 1}


@pytest.mark.parametrize(
    "caption,reason", [(None, NO_CAPTION), (" \n", EMPTY_CAPTION), (b"caf\xe9 cr\xe8me", NOT_UTF8)]
)
def test_bad_captions_are_skipped_and_counted(tmp_path, caption, reason):
    _write(tmp_path, "good.png", COLOURS[1], "good")
    _write(tmp_path, "bad.png", COLOURS[0], caption)
    dataset = open_dataset(tmp_path, resolution=32)
    assert len(dataset) == 1 and dict(dataset.skipped) == {reason: 1}


def test_source_without_usable_samples_fails_before_training(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "a.txt").write_text("an empty file")
    _write(tmp_path, "b.png", COLOURS[0], None)
    with pytest.raises(NoUsableSamples, match="no usable") as error:
        open_dataset(tmp_path, resolution=32)
    assert "\n" not in str(error.value) and error.value.skipped == {ZERO_BYTES: 1, NO_CAPTION: 1}
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images found"):
        open_dataset(tmp_path / "empty", resolution=32)


def test_mode_conversion_through_the_folder_source(tmp_path):
    rgba = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    rgba.save(tmp_path / "clear.png")
    (tmp_path / "clear.txt").write_text("nothing")
    Image.fromarray(np.full((40, 40), 65535, np.uint16)).save(tmp_path / "deep.png")
    (tmp_path / "deep.txt").write_text("white")
    dataset = open_dataset(tmp_path, resolution=32)
    assert all(_colour_of(dataset[i]) == (255, 255, 255) for i in range(2))


def test_bad_paths_and_options(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a built-in"):
        open_dataset(tmp_path / "nope", resolution=32)
    with pytest.raises(ValueError, match="crop"):
        open_dataset("shapes", resolution=32, crop="middle")
    _write(tmp_path, "a.png", COLOURS[0], "x")
    with pytest.raises(ValueError, match="no splits"):
        open_dataset(tmp_path, resolution=32, split="test")
