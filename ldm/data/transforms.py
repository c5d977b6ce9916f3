"""EXIF orientation, any Pillow mode to RGB, shorter-side resize + crop, caption-aware flip."""

from __future__ import annotations

import random
import re

import numpy as np
import torch
from PIL import Image, ImageOps

WHITE = (255, 255, 255)
_LEFT_RIGHT = re.compile(r"\b(left|right)\b", re.IGNORECASE)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode → 8-bit RGB. Transparency composited on white; 16-bit and float scaled to 0..255."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # Pillow's convert() clips 16-bit values at 255; rescale instead (16-bit PNGs open as "I" or "I;16").
        values = np.asarray(image, dtype=np.float64)
        # "I;16*" is always 16-bit; 32-bit "I" holds 16-bit PNG data or 8-bit values, told apart by range.
        peak = 65535.0 if image.mode != "I" or values.max(initial=0) > 255 else 255.0
        image = Image.fromarray(np.clip(values / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    elif image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(values * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def prepare_image(image: Image.Image) -> Image.Image:
    """EXIF orientation applied, then RGB."""
    return to_rgb(ImageOps.exif_transpose(image))


def resize_and_crop(
    image: Image.Image, resolution: int, *, crop: str, rng: random.Random | None = None
) -> Image.Image:
    """Resize the shorter side to `resolution` (bicubic, antialiased), then a centre or random square crop."""
    width, height = image.size
    scale = resolution / min(width, height)
    new_w, new_h = max(resolution, round(width * scale)), max(resolution, round(height * scale))
    image = image.resize((new_w, new_h), Image.Resampling.BICUBIC, reducing_gap=3.0)
    if crop == "center":
        left, top = (new_w - resolution) // 2, (new_h - resolution) // 2
    elif crop == "random":
        rng = rng or random
        left, top = rng.randint(0, new_w - resolution), rng.randint(0, new_h - resolution)
    else:
        raise ValueError(f"crop must be 'center' or 'random', got {crop!r}.")
    return image.crop((left, top, left + resolution, top + resolution))


def swap_left_right(caption: str) -> str:
    """Swap the words left ↔ right (keeping their case), so a flipped image keeps a true caption."""

    def swap(match: re.Match) -> str:
        word = match.group(0)
        other = "right" if word.lower() == "left" else "left"
        return other.capitalize() if word[0].isupper() else other

    return _LEFT_RIGHT.sub(swap, caption)


def flip(image: Image.Image, caption: str) -> tuple[Image.Image, str]:
    """Horizontal flip of the image with "left"/"right" swapped in its caption."""
    return ImageOps.mirror(image), swap_left_right(caption)


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image → FloatTensor (3, H, W) in [-1, 1]."""
    array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(127.5).sub_(1.0)


def to_pil(pixel_values: torch.Tensor) -> Image.Image:
    """FloatTensor (3, H, W) in [-1, 1] → RGB PIL image (for previews)."""
    array = ((pixel_values.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array, "RGB")


def image_to_item(image: Image.Image, caption: str, *, resolution: int, crop: str, random_flip: bool,
                  buckets=None) -> dict:
    """The transform chain for one decoded sample → {"pixel_values": (3, R, R) in [-1, 1], "caption"}; with
    `buckets` (an `ldm.data.buckets.BucketSpec`), (3, H, W) of the bucket nearest the image's aspect ratio."""
    image = prepare_image(image)
    if buckets is not None:
        from .buckets import resize_to_bucket

        image = resize_to_bucket(image, buckets.nearest(*image.size))
    else:
        image = resize_and_crop(image, resolution, crop=crop)
    if random_flip and random.random() < 0.5:
        image, caption = flip(image, caption)
    return {"pixel_values": to_tensor(image), "caption": caption}
