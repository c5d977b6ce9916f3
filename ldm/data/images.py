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
BOMB = "decompression bomb"
NO_CAPTION = "missing caption"
EMPTY_CAPTION = "empty caption"
NOT_UTF8 = "caption not UTF-8"
CORRUPT_TAR = "corrupt tar member"
MISSING_IMAGE = "image file missing"


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


def probe_image(source: str | Path | bytes, *, min_size: int) -> tuple[int, int]:
    """Read only the header; returns (width, height) or raises BadSample (empty, junk, bomb, too small)."""
    image = _open(source)
    width, height = image.size
    image.close()
    if min(width, height) < min_size:
        raise BadSample(TOO_SMALL, f"{width}x{height} < {min_size}")
    return width, height


def decode_image(source: str | Path | bytes, *, min_size: int) -> Image.Image:
    """Fully decode an image (pixels loaded, file closed); raises BadSample for every kind of bad input."""
    probe_image(source, min_size=min_size)
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
