"""ldm/data/transforms.py: every Pillow mode to RGB, EXIF orientation, resize/crop, caption-aware flip."""

import random

import numpy as np
import pytest
import torch
from PIL import Image

from ldm.data.transforms import (
    flip,
    image_to_item,
    prepare_image,
    resize_and_crop,
    swap_left_right,
    to_pil,
    to_rgb,
    to_tensor,
)


def _rgb(image):
    out = to_rgb(image)
    assert out.mode == "RGB"
    return np.asarray(out).astype(int)


def test_plain_modes_to_rgb():
    assert (_rgb(Image.new("L", (4, 4), 77)) == 77).all()
    assert (_rgb(Image.new("1", (4, 4), 1)) == 255).all()
    cmyk = _rgb(Image.new("CMYK", (4, 4), (0, 255, 255, 0)))  # pure magenta+yellow ink = red
    assert (cmyk[0, 0] == [255, 0, 0]).all()


def test_transparency_is_composited_on_white():
    rgba = Image.new("RGBA", (4, 4), (0, 0, 255, 0))
    rgba.putpixel((0, 0), (0, 0, 255, 255))
    rgba.putpixel((1, 0), (0, 0, 0, 128))
    out = _rgb(rgba)
    assert (out[1, 1] == 255).all() and (out[0, 0] == [0, 0, 255]).all()
    assert abs(out[0, 1, 0] - 127) <= 1  # half-transparent black over white = mid grey
    la = _rgb(Image.new("LA", (2, 2), (0, 0)))
    assert (la == 255).all()
    palette = Image.new("P", (2, 2), 1)
    palette.putpalette([255, 0, 0, 0, 255, 0])
    palette.info["transparency"] = 1
    assert (_rgb(palette) == 255).all()  # transparent green index → white, not green


def test_sixteen_bit_is_rescaled_not_clipped():
    values = np.array([[0, 32768], [65535, 1000]], dtype=np.uint16)
    sixteen = Image.fromarray(values)
    assert sixteen.mode == "I;16"
    out = _rgb(sixteen)
    expected = np.round(values / 65535 * 255)
    assert np.abs(out[..., 0] - expected).max() <= 1
    out32 = _rgb(Image.fromarray(values.astype(np.int32)).convert("I"))  # how 16-bit PNGs often open
    assert np.abs(out32[..., 0] - expected).max() <= 1


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (30, 20), (255, 0, 0))
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    image.info["exif"] = exif.tobytes()
    image.getexif()[0x0112] = 6
    assert prepare_image(image).size == (20, 30)


@pytest.mark.parametrize("size", [(100, 50), (50, 100), (64, 64)])
def test_resize_shorter_side_then_crop(size):
    image = Image.new("RGB", size, (0, 0, 0))
    # A white stripe at the exact middle survives a centre crop.
    image.paste((255, 255, 255), (size[0] // 2 - 2, size[1] // 2 - 2, size[0] // 2 + 2, size[1] // 2 + 2))
    out = resize_and_crop(image, 32, crop="center")
    assert out.size == (32, 32)
    assert np.asarray(out)[16, 16].min() > 200
    random.seed(0)
    crops = {resize_and_crop(image, 32, crop="random", rng=random.Random(s)).tobytes() for s in range(8)}
    assert len(crops) > 1 or size == (64, 64)
    with pytest.raises(ValueError, match="crop"):
        resize_and_crop(image, 32, crop="middle")


def test_flip_swaps_left_and_right_in_the_caption():
    assert swap_left_right("a red circle on the Left and a cube on the right") == (
        "a red circle on the Right and a cube on the left"
    )
    assert swap_left_right("leftover bright lights") == "leftover bright lights"
    image = Image.new("RGB", (4, 1))
    image.putpixel((0, 0), (255, 0, 0))
    flipped, caption = flip(image, "red on the left")
    assert flipped.getpixel((3, 0)) == (255, 0, 0) and caption == "red on the right"


def test_tensor_range_and_round_trip():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8))
    tensor = to_tensor(image)
    assert tensor.shape == (3, 8, 8) and tensor.dtype == torch.float32
    assert tensor.min() >= -1 and tensor.max() <= 1
    assert torch.allclose(
        tensor[:, 2, 3], torch.tensor(image.getpixel((3, 2)), dtype=torch.float32) / 127.5 - 1
    )
    assert to_pil(tensor).tobytes() == image.tobytes()


def test_image_to_item_with_random_flip_keeps_the_caption_true():
    image = Image.new("RGB", (64, 64), (255, 255, 255))
    image.paste((255, 0, 0), (0, 0, 32, 64))  # red on the left half
    random.seed(1)
    for _ in range(20):
        item = image_to_item(image, "red on the left", resolution=32, crop="center", random_flip=True)
        red_left = item["pixel_values"][1, :, :16].mean() < item["pixel_values"][1, :, 16:].mean()
        assert item["caption"] == ("red on the left" if red_left else "red on the right")
