"""Aspect-ratio buckets (as kohya sd-scripts, OneTrainer and SimpleTuner train): sizes of about `resolution²`
pixels at many aspect ratios; each image is resized to cover the bucket nearest its aspect ratio and
centre-cropped only by what that bucket's rounding to `step` leaves over, instead of to a square.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from PIL import Image


@dataclass(frozen=True)
class BucketSpec:
    """Buckets of at most `resolution²` pixels, sides multiples of `step` in [min_reso, max_reso]
    (kohya's `--min_bucket_reso`, `--max_bucket_reso`, `--bucket_reso_steps`)."""

    resolution: int
    min_reso: int
    max_reso: int
    step: int

    def __post_init__(self):
        if self.step < 1 or self.min_reso < self.step:
            raise ValueError(f"--bucket-step must be at least 1 and at most --min-bucket-reso, got {self.step} "
                             f"and {self.min_reso}.")
        if not self.min_reso <= self.resolution <= self.max_reso:
            raise ValueError(f"--resolution {self.resolution} must lie between --min-bucket-reso {self.min_reso} "
                             f"and --max-bucket-reso {self.max_reso}.")

    @property
    def key(self) -> str:
        """What the latent cache is keyed on."""
        return f"{self.min_reso},{self.max_reso},{self.step}"

    @property
    def sizes(self) -> list[tuple[int, int]]:
        """Every bucket (width, height), sorted by aspect ratio; the square one always included."""
        max_area = self.resolution ** 2
        side = self.resolution // self.step * self.step
        sizes = {(side, side)}
        for width in range(self.min_reso // self.step * self.step, self.max_reso + 1, self.step):
            height = min(self.max_reso, max_area // width // self.step * self.step)
            if width >= self.min_reso and height >= self.min_reso:
                sizes.update({(width, height), (height, width)})
        return sorted(sizes, key=lambda size: size[0] / size[1])

    def too_small(self, width: int, height: int) -> bool:
        """The min-size rule under buckets: whether an image of `width` x `height` pixels (as its EXIF
        orientation turns it) would have to be upscaled to fill its bucket, i.e. is narrower or lower than
        `nearest(width, height)`, so that `resize_to_bucket` would scale it by max(bucket_w / width,
        bucket_h / height) > 1. A 512x128 panorama at resolution 256 fills the 512x128 bucket as it is."""
        bucket_w, bucket_h = self.nearest(width, height)
        return width < bucket_w or height < bucket_h

    def nearest(self, width: int, height: int) -> tuple[int, int]:
        """The bucket whose aspect ratio is nearest the image's (on a log scale, so 2:1 and 1:2 are alike)."""
        ratio = math.log(width / height)
        return min(self.sizes, key=lambda size: abs(math.log(size[0] / size[1]) - ratio))


def default_spec(resolution: int, *, min_reso: int | None, max_reso: int | None,
                 step: int | None) -> BucketSpec:
    """kohya's 512-px defaults (256, 1024, 64) scaled to `resolution`: half, double, an eighth (at least 8)."""
    return BucketSpec(resolution=resolution, min_reso=min_reso or resolution // 2,
                      max_reso=max_reso or 2 * resolution, step=step or max(8, resolution // 8))


def resize_to_bucket(image: Image.Image, bucket: tuple[int, int]) -> Image.Image:
    """Resize `image` (bicubic, antialiased) to just cover `bucket` (width, height), then centre-crop the
    excess, which is less than one `step` for an image whose aspect ratio lies within the buckets' range."""
    width, height = bucket
    scale = max(width / image.width, height / image.height)
    new_w, new_h = max(width, round(image.width * scale)), max(height, round(image.height * scale))
    image = image.resize((new_w, new_h), Image.Resampling.BICUBIC, reducing_gap=3.0)
    left, top = (new_w - width) // 2, (new_h - height) // 2
    return image.crop((left, top, left + width, top + height))


def bucket_spec(args) -> BucketSpec | None:
    """The spec of a command's --buckets options (`ldm.data.cli.BucketOptions` + `resolution`), or None."""
    if not args.buckets:
        return None
    return default_spec(args.resolution, min_reso=args.min_bucket_reso, max_reso=args.max_bucket_reso,
                        step=args.bucket_step)
