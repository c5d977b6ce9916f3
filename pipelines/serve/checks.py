"""What every request is checked against: the server's limits, and the 422 error that names the bad field.

A value the server refuses raises `RequestError(field, message)`; the app answers it as FastAPI answers a wrong
type, `{"detail": [{"loc": ["body", FIELD], "msg": …}]}`, so clients read both the same way.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError


@dataclass
class Limits:
    """What one request may ask for (the server's --max-* flags)."""

    max_size: int = 1024
    max_steps: int = 150
    max_images: int = 8


class RequestError(ValueError):
    """A value the server refuses: becomes a 422 naming `field`."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field

    def detail(self) -> list[dict]:
        return [{"loc": ["body", self.field], "msg": str(self), "type": "value_error"}]


def check_range(field: str, value, low, high=None, why: str = "") -> None:
    if value < low or (high is not None and value > high):
        bound = f"at least {low}" if high is None else f"between {low} and {high}"
        raise RequestError(field, f"{field} must be {bound}{why}, got {value}.")


@dataclass
class Upload:
    """A decoded image of a request, with the sha256 of the bytes sent (what `ldm-generate` hashes of a file)."""

    image: Image.Image
    sha256: str


def decode_upload(text: str, field: str, max_size: int) -> Upload:
    """A base64 image (optionally a `data:image/…;base64,` URL), or a RequestError naming `field`."""
    payload = text.split(",", 1)[1] if text.startswith("data:") else text
    try:
        raw = base64.b64decode(payload, validate=True)
        image = Image.open(io.BytesIO(raw))
        image.load()
    except (binascii.Error, ValueError):
        raise RequestError(field, f"{field} is not valid base64.") from None
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError):
        raise RequestError(field, f"{field} is base64 but not an image PIL can read (send a PNG).") from None
    if max(image.size) > max_size:
        raise RequestError(
            field,
            f"{field} is {image.width}×{image.height}; this server takes images up to "
            f"{max_size} pixels a side (--max-size).",
        )
    return Upload(image, hashlib.sha256(raw).hexdigest())

