"""ldm/data/buckets.py: kohya-style bucket sizes; each image goes to the bucket nearest its aspect ratio and
loses only what that bucket's rounding leaves over (checked on the pixels of a gradient image); under buckets an
image is too small only when it would be upscaled to fill its bucket."""
import math

import numpy as np
import pytest
from PIL import Image

from ldm.data import open_dataset
from ldm.data.buckets import BucketSpec, default_spec, resize_to_bucket
from ldm.data.images import TOO_SMALL, TOO_SMALL_FOR_BUCKET


def test_bucket_sizes_follow_the_rules():
    spec = BucketSpec(resolution=64, min_reso=32, max_reso=128, step=8)
    sizes = spec.sizes
    assert (64, 64) in sizes and (40, 96) in sizes and (96, 40) in sizes
    for width, height in sizes:
        assert width % 8 == 0 and height % 8 == 0 and 32 <= min(width, height) and max(width, height) <= 128
        assert width * height <= 64 * 64 and (height, width) in sizes
    assert default_spec(512, min_reso=None, max_reso=None, step=None) == BucketSpec(512, 256, 1024, 64)
    with pytest.raises(ValueError, match="--resolution 16 must lie between"):
        BucketSpec(resolution=16, min_reso=32, max_reso=128, step=8)


def _gradient(width, height):
    """Red = x / (width - 1), green = y / (height - 1), both in 0..255: a pixel says where it came from."""
    x = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height)[:, None].repeat(width, 1)
    return Image.fromarray(np.stack([x, y, np.zeros_like(x)], -1).round().astype(np.uint8), "RGB")


@pytest.mark.parametrize("size", [(256, 128), (128, 256), (200, 200), (300, 110), (90, 170), (160, 120)])
def test_each_image_keeps_all_but_its_buckets_rounding(size):
    spec = BucketSpec(resolution=64, min_reso=32, max_reso=128, step=8)
    width, height = size
    bucket = spec.nearest(width, height)
    mismatch = abs(math.log(bucket[0] / bucket[1]) - math.log(width / height))
    assert all(abs(math.log(w / h) - math.log(width / height)) >= mismatch for w, h in spec.sizes)
    out = np.asarray(resize_to_bucket(_gradient(width, height), bucket), dtype=np.float64)
    assert out.shape == (bucket[1], bucket[0], 3)
    _assert_cropped_only_by_rounding(out, width, height, bucket)
    square_kept = min(width, height) / max(width, height)
    kept_x, kept_y = _kept(out, width, height)
    assert min(kept_x, kept_y) >= square_kept - 0.04  # never more lost than a centre square would lose


def _kept(out, width, height):
    """The fraction of each axis of a `_gradient(width, height)` that survives in `out` (H, W, 3), read off the
    gradient at the first and last pixel."""
    kept_x = (out[:, -1, 0].mean() - out[:, 0, 0].mean()) / 255 * width / (width - 1)
    kept_y = (out[-1, :, 1].mean() - out[0, :, 1].mean()) / 255 * height / (height - 1)
    return kept_x, kept_y


def _assert_cropped_only_by_rounding(out, width, height, bucket):
    kept_x, kept_y = _kept(out, width, height)
    mismatch = abs(math.log(bucket[0] / bucket[1]) - math.log(width / height))
    expected = math.exp(-mismatch)  # the axis that is too long keeps ratio_bucket / ratio_image of itself
    assert min(kept_x, kept_y) == pytest.approx(expected, abs=0.04)
    assert max(kept_x, kept_y) == pytest.approx(1.0, abs=0.04)  # the other axis is not cut at all


def test_folder_items_come_at_their_bucket_sizes(tmp_path):
    for name, size in (("wide", (128, 64)), ("tall", (64, 128)), ("square", (96, 96))):
        _gradient(*size).save(tmp_path / f"{name}.png")
        (tmp_path / f"{name}.txt").write_text(f"a {name} scene")
    spec = default_spec(32, min_reso=None, max_reso=None, step=None)
    dataset = open_dataset(tmp_path, resolution=32, buckets=spec)
    shapes = {item["caption"]: tuple(item["pixel_values"].shape) for item in (dataset[i] for i in range(3))}
    assert shapes == {"a square scene": (3, 32, 32), "a tall scene": (3, 40, 24), "a wide scene": (3, 24, 40)}
    sizes = {"wide": (128, 64), "tall": (64, 128), "square": (96, 96)}
    for item in (dataset[i] for i in range(3)):  # through the whole data path: cropped only by the rounding
        width, height = sizes[item["caption"].split()[1]]
        pixels = ((item["pixel_values"] + 1) * 127.5).permute(1, 2, 0).double().numpy()
        _assert_cropped_only_by_rounding(pixels, width, height, spec.nearest(width, height))
    assert tuple(open_dataset(tmp_path, resolution=32)[0]["pixel_values"].shape) == (3, 32, 32)  # default


def _folder(root, sizes):
    root.mkdir(parents=True, exist_ok=True)
    for width, height in sizes:
        _gradient(width, height).save(root / f"{width}x{height}.png")
        (root / f"{width}x{height}.txt").write_text(f"{width} by {height}")
    return root


def test_min_size_under_buckets_rejects_only_what_its_bucket_would_upscale(tmp_path):
    """At resolution 64 (buckets 32..128 px, step 8) a 128x32 panorama fills the 128x32 bucket as it is: kept
    with buckets, pixel for pixel, though its shorter side is half the resolution; square crops still reject
    it. A 120x30 panorama (same bucket) and a 60x60 square (the 64x64 bucket) would need upscaling: rejected."""
    spec = default_spec(64, min_reso=None, max_reso=None, step=None)
    sizes = [(128, 32), (32, 128), (120, 30), (60, 60), (64, 64), (200, 90)]
    folder = _folder(tmp_path, sizes)
    expected_kept = []
    for width, height in sizes:  # the rule, independently: resize_to_bucket's scale would exceed 1
        bucket_w, bucket_h = spec.nearest(width, height)
        if max(bucket_w / width, bucket_h / height) <= 1:
            expected_kept.append(f"{width} by {height}")
    assert sorted(expected_kept) == ["128 by 32", "200 by 90", "32 by 128", "64 by 64"]
    bucketed = open_dataset(folder, resolution=64, buckets=spec)
    assert sorted(caption for _, caption in bucketed.records) == sorted(expected_kept)
    assert dict(bucketed.skipped) == {TOO_SMALL_FOR_BUCKET: 2}
    panorama = next(i for i, (_, caption) in enumerate(bucketed.records) if caption == "128 by 32")
    pixels = ((bucketed[panorama]["pixel_values"] + 1) * 127.5).round().permute(1, 2, 0).numpy()
    assert np.array_equal(pixels, np.asarray(_gradient(128, 32), dtype=np.float32))  # no resize, no crop
    square = open_dataset(folder, resolution=64)  # square crops: the shorter side must reach the resolution
    assert sorted(caption for _, caption in square.records) == ["200 by 90", "64 by 64"]
    assert dict(square.skipped) == {TOO_SMALL: 4}
