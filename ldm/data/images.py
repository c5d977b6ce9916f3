"""Safe image and caption decoding: each way a sample can be bad becomes a `BadSample` with a short reason."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")

# Skip reasons, shared by every source so `skipped` and `ldm-data check` count them under the same names.
ZERO_BYTES = "zero-byte file"
NOT_AN_IMAGE = "not an image"
TRUNCATED = "truncated or corrupt image"
TOO_SMALL = "smaller than resolution"
TOO_SMALL_FOR_BUCKET = "smaller than its bucket"  # with --buckets: would be upscaled to fill its bucket
BOMB = "decompression bomb"
NO_CAPTION = "missing caption"
EMPTY_CAPTION = "empty caption"
NOT_UTF8 = "caption not UTF-8"
CORRUPT_TAR = "corrupt tar member"
MISSING_IMAGE = "image file missing"

EXIF_ORIENTATION = 0x0112  # the EXIF tag that says how the stored pixels are turned


SKIPPED_KEY = "skipped"  # an item {SKIPPED_KEY: reason} stands for a sample that failed to decode


def skip_marker(reason: str) -> dict[str, str]:
    """What a data set hands back, instead of an item, for a sample it could not decode (DataLoader workers
    cannot count into the main process's `skipped`, so the process that consumes the items counts these)."""
    return {SKIPPED_KEY: reason}


class BadSample(Exception):
    """A sample that cannot be used; `reason` is one of the constants above."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class NoUsableSamples(ValueError):
    """A source in which no sample survived the checks; `skipped` holds the reasons (reason → count)."""

    def __init__(self, message: str, skipped: dict[str, int]):
        super().__init__(message)
        self.skipped = dict(skipped)


def _open(source: str | Path | bytes) -> Image.Image:
    """Image.open on a path or bytes, with bombs (over Image.MAX_IMAGE_PIXELS) and junk as BadSample."""
    if isinstance(source, bytes):
        if not source:
            raise BadSample(ZERO_BYTES)
        fp = io.BytesIO(source)
    else:
        if Path(source).stat().st_size == 0:
            raise BadSample(ZERO_BYTES, str(source))
        fp = source
    try:
        # Pillow only warns between 1x and 2x the limit; we refuse anything over it.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(fp)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise BadSample(BOMB, str(err)) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise BadSample(NOT_AN_IMAGE, str(err)) from None
    return image


def _oriented(image: Image.Image) -> tuple[int, int]:
    """(width, height) after the EXIF orientation, which `transforms.prepare_image` applies before bucketing:
    orientations 5 to 8 turn the image a quarter."""
    try:
        orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    except (OSError, SyntaxError, ValueError):  # a broken EXIF block: decoding will judge the file
        orientation = 1
    return image.size[::-1] if orientation in (5, 6, 7, 8) else image.size


def probe_image(source: str | Path | bytes, *, min_size: int, buckets=None) -> tuple[int, int]:
    """Read only the header; returns (width, height) or raises BadSample (empty, junk, bomb, too small).

    Too small, square crops (`buckets` None): the shorter side is below `min_size`, so the crop would upscale.
    With `buckets` (an `ldm.data.buckets.BucketSpec`): the image, as oriented, would have to be upscaled to
    fill the bucket nearest its aspect ratio (`BucketSpec.too_small`), whatever its shorter side."""
    image = _open(source)
    width, height = image.size
    oriented = _oriented(image)
    image.close()
    if buckets is not None:
        if buckets.too_small(*oriented):
            bucket = "x".join(map(str, buckets.nearest(*oriented)))
            raise BadSample(TOO_SMALL_FOR_BUCKET, f"{oriented[0]}x{oriented[1]} < bucket {bucket}")
    elif min(width, height) < min_size:
        raise BadSample(TOO_SMALL, f"{width}x{height} < {min_size}")
    return width, height


def decode_image(source: str | Path | bytes, *, min_size: int, buckets=None) -> Image.Image:
    """Fully decode an image (pixels loaded, file closed); raises BadSample for every kind of bad input
    (too small: see `probe_image`)."""
    probe_image(source, min_size=min_size, buckets=buckets)
    image = _open(source)
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as err:
        raise BadSample(TRUNCATED, str(err)) from None
    return image


def decode_caption(data: bytes | str | None) -> str:
    """Caption from bytes (strict UTF-8, BOM allowed) or str, whitespace collapsed; BadSample if unusable."""
    if data is None:
        raise BadSample(NO_CAPTION)
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise BadSample(NOT_UTF8) from None
    if not isinstance(data, str):
        raise BadSample(NO_CAPTION, f"caption is {type(data).__name__}, not text")
    caption = " ".join(data.split())  # one line: newlines and runs of spaces collapse
    if not caption:
        raise BadSample(EMPTY_CAPTION)
    return caption
