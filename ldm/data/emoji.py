"""Built-in `emoji` data: each Noto Color Emoji glyph the installed font draws, captioned with its CLDR name.

Needs the font (Debian/Ubuntu: `apt-get install fonts-noto-color-emoji`, or LDM_EMOJI_FONT=path.ttf) and
the `emoji` package (`pip install "ldm-t2i[emoji]"`). Flags, skin tones and joined (ZWJ) sequences need
Pillow's raqm layout. The split is by emoji group, i.e. the sequence with skin-tone modifiers and variation
selectors removed, so all skin-tone variants of one emoji land in the same split.

Held-out skin tones (`emoji:heldouttones=1`), for the composition test of `ldm-eval --task emoji`: every emoji
of the train split that comes in skin tones keeps one (emoji, tone) pair out of the train split, the tone
`TONES[crc32("tone:" + name) % 5]` of its name without tones (stable across runs and machines). The pair is
keyed by the name, not the code points, because two sequences can share a name ("men holding hands" is both
U+1F46C with one tone and a joined sequence with one tone per man). Every train sequence of that name that
carries that tone is dropped, also a two-person one where only one person has it, so no training caption names
the emoji with that tone; the model still sees the emoji in its other tones and the tone on other emoji. Split
"heldout" holds the held-out pairs' one-tone sequences ("thumbs up medium skin tone"), whatever the option.
"""

from __future__ import annotations

import logging
import random
import os
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, features

from .transforms import flip, resize_and_crop, to_tensor

logger = logging.getLogger(__name__)

DEFAULT_FONT = "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
FONT_SIZE = 109  # the only bitmap strike in Noto Color Emoji
CANVAS = 144  # glyphs are 136 x 128; a small white margin keeps them off the image edge
TEST_BUCKETS = 10  # one group in ten (by a stable hash) goes to the test split
SKIN_TONES = {chr(c) for c in range(0x1F3FB, 0x1F400)}
VARIATION_SELECTOR = "\ufe0f"
SPLITS = ("train", "test", "heldout")
# Fitzpatrick modifiers U+1F3FB..U+1F3FF in order, named as in CLDR captions ("... medium-dark skin tone").
TONES = {"light": "\U0001f3fb", "medium-light": "\U0001f3fc", "medium": "\U0001f3fd",
         "medium-dark": "\U0001f3fe", "dark": "\U0001f3ff"}


def emoji_group(sequence: str) -> str:
    """The emoji with skin tones and variation selectors removed: all its variants share one group."""
    return "".join(ch for ch in sequence if ch not in SKIN_TONES and ch != VARIATION_SELECTOR)


def emoji_split(sequence: str) -> str:
    """'test' for one group in TEST_BUCKETS (stable across runs and machines), else 'train'."""
    bucket = zlib.crc32(emoji_group(sequence).encode("utf-8")) % TEST_BUCKETS
    return "test" if bucket == 0 else "train"


def sequence_tones(sequence: str) -> tuple[str, ...]:
    """Names of the distinct skin tones in `sequence`, in TONES order; () for an emoji without one."""
    return tuple(name for name, modifier in TONES.items() if modifier in sequence)


def base_name(caption: str) -> str:
    """The caption without its skin-tone phrases: 'thumbs up medium-dark skin tone' → 'thumbs up'."""
    for name in TONES:  # " medium skin tone" is not inside " medium-dark skin tone", nor " dark" in "-dark"
        caption = caption.replace(f" {name} skin tone", "")
    return caption


def heldout_tone(name: str) -> str:
    """The tone held out for the emoji called `name` (a `base_name`) under heldouttones=1: a stable hash."""
    return list(TONES)[zlib.crc32(f"tone:{name}".encode("utf-8")) % len(TONES)]


def has_heldout_tone(sequence: str, caption: str) -> bool:
    """True for a train-split sequence that carries its emoji's held-out tone (alone or beside another)."""
    return emoji_split(sequence) == "train" and heldout_tone(base_name(caption)) in sequence_tones(sequence)


def in_split(sequence: str, caption: str, split: str, *, heldout_tones: bool = False) -> bool:
    """Whether (`sequence`, its `caption`) belongs to `split`: "test" by group hash; "train" the rest, less
    the held-out tone pairs when `heldout_tones`; "heldout" the one-tone sequences of the held-out pairs."""
    if split == "heldout":
        return has_heldout_tone(sequence, caption) and len(sequence_tones(sequence)) == 1
    if split == "train" and heldout_tones and has_heldout_tone(sequence, caption):
        return False
    return emoji_split(sequence) == split


def emoji_caption(cldr_name: str) -> str:
    """':thumbs_up_medium_skin_tone:' → 'thumbs up medium skin tone'."""
    return cldr_name.strip(":").replace("_", " ")


def font_path() -> Path:
    """The emoji font to use, or a one-line FileNotFoundError saying how to install it."""
    path = Path(os.environ.get("LDM_EMOJI_FONT", DEFAULT_FONT))
    if not path.is_file():
        raise FileNotFoundError(
            f"Emoji font not found at {path}; install it with `sudo apt-get install fonts-noto-color-emoji` "
            "or set LDM_EMOJI_FONT to a NotoColorEmoji.ttf."
        )
    return path


def _emoji_module():
    try:
        import emoji
    except ImportError:
        raise ImportError(
            'The emoji data set needs the `emoji` package: pip install "ldm-t2i[emoji]".'
        ) from None
    return emoji


def _load_font(path: Path) -> ImageFont.FreeTypeFont:
    if not features.check("raqm"):
        logger.warning("Pillow has no raqm layout: flags, skin tones and joined emoji will render as pieces.")
    return ImageFont.truetype(str(path), FONT_SIZE, layout_engine=ImageFont.Layout.RAQM)


def render_emoji(sequence: str, font: ImageFont.FreeTypeFont) -> Image.Image:
    """The glyph centred on a white CANVAS x CANVAS RGB image."""
    image = Image.new("RGB", (CANVAS, CANVAS), (255, 255, 255))
    ImageDraw.Draw(image).text(
        (CANVAS / 2, CANVAS / 2), sequence, font=font, embedded_color=True, anchor="mm"
    )
    return image


def _supported(sequence: str, font: ImageFont.FreeTypeFont, missing: np.ndarray) -> bool:
    # An unsupported sequence renders as the .notdef box, or as several glyphs side by side (too wide).
    if font.getlength(sequence) > CANVAS:
        return False
    return not np.array_equal(np.asarray(render_emoji(sequence, font)), missing)


def supported_emoji(font: ImageFont.FreeTypeFont) -> list[tuple[str, str]]:
    """(sequence, caption) of every fully-qualified emoji of an Emoji version the font draws, in fixed order.

    Fonts add whole Emoji versions at a time, so one probe glyph per version (its first emoji) decides the
    version; this takes ~20 renders instead of ~4,000.
    """
    emoji = _emoji_module()
    by_version: dict[float, list[str]] = {}
    for sequence, data in emoji.EMOJI_DATA.items():
        if data["status"] == emoji.STATUS["fully_qualified"]:
            by_version.setdefault(float(data["E"]), []).append(sequence)
    missing = np.asarray(render_emoji("\U000f0000", font))  # a private-use code point: the .notdef glyph
    kept: list[str] = []
    for version in sorted(by_version):
        sequences = sorted(by_version[version])
        if not all(_supported(s, font, missing) for s in sequences[:2]):
            break  # newer versions than the font knows
        kept.extend(sequences)
    return [(s, emoji_caption(emoji.EMOJI_DATA[s]["en"])) for s in sorted(kept)]


class EmojiDataset(torch.utils.data.Dataset):
    """Map-style emoji set: item i = {"pixel_values": (3, R, R) in [-1, 1], "caption": CLDR name}."""

    def __init__(
        self, *, resolution: int, split: str = "train", random_flip: bool = False, size: int | None = None,
        heldout_tones: bool = False,
    ):
        if split not in SPLITS:
            raise ValueError(f"Unknown emoji split {split!r}; expected one of {', '.join(SPLITS)}.")
        self.font_path = font_path()
        self.resolution, self.random_flip = resolution, random_flip
        self._font: ImageFont.FreeTypeFont | None = _load_font(self.font_path)
        self.heldout_tones = heldout_tones
        self.items = [item for item in supported_emoji(self._font)
                      if in_split(*item, split, heldout_tones=heldout_tones)][:size]
        self.skipped: dict[str, int] = {}
        if not self.items:
            raise ValueError(
                f"The emoji font at {self.font_path} draws none of the emoji in split {split!r}."
            )

    def __len__(self) -> int:
        return len(self.items)

    def __getstate__(self) -> dict:
        # Fonts do not pickle reliably into spawned DataLoader workers; each worker reloads its own.
        return {**self.__dict__, "_font": None}

    def __getitem__(self, index: int) -> dict:
        if self._font is None:
            self._font = _load_font(self.font_path)
        sequence, caption = self.items[index]
        image = resize_and_crop(render_emoji(sequence, self._font), self.resolution, crop="center")
        if self.random_flip and random.random() < 0.5:
            image, caption = flip(image, caption)
        return {"pixel_values": to_tensor(image), "caption": caption}
