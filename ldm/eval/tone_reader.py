"""The skin-tone reader: which skin tone an image of a given emoji shows, read from that emoji's skin pixels.

Where the skin is comes from the font itself: the pixels in which the emoji's five one-tone glyphs differ
(standard deviation of RGB across them above `SKIN_STD`) are its skin; everything else (outline, clothes, hair,
background) is the same in all five. A tone is read as the class whose glyph's median skin colour is nearest (in
RGB) to the median colour of the image's pixels under that mask: one of the five tones of `ldm.data.emoji.TONES`
or "none", the toneless yellow emoji, so a sample that ignores the tone words is read as wrong rather than as
whichever tone happens to be nearest yellow. The median, not the mean, so that a sample drawn a pixel off the
glyph's outline still reads its skin; the mask is eroded by R/32 px (`core`) for the same reason.

Measured on real glyphs at 32 px (`benchmarks/emoji_reader.py`, all 1,932 one-tone and toneless glyphs of the
322 emoji with a readable skin, chance 1/6): 100% clean (a diagonal confusion matrix), 84.3% blurred, 84.5%
colour-jittered, 79.6% shifted by up to 2 px, 42.6% after the shapes VAE's round trip (which turns most yellow
into "light"/"medium-light"); neighbouring tones are the usual confusion. 64 px is not measured yet.
"""
from __future__ import annotations

import numpy as np

from ldm.data import emoji as emoji_data
from ldm.eval.emoji_reader import Glyphs, as_array

NO_TONE = "none"  # the class of the toneless, yellow emoji
TONE_CLASSES = (NO_TONE,) + tuple(emoji_data.TONES)
SKIN_STD = 0.05  # RGB std (in [0, 1]) across the five tones above which a pixel is skin
MIN_SKIN_PIXELS = 4  # fewer skin pixels than this at the resolution: the tone of that emoji is not read


def core(mask: np.ndarray, *, steps: int) -> np.ndarray:
    """`mask` (H, W) bool eroded `steps` times (a pixel stays when it and its 4 neighbours are in the mask), or
    `mask` itself where that would leave fewer than MIN_SKIN_PIXELS: the core of the skin, whose colour survives
    blur and a shift by a pixel, where the rim mixes with the outline."""
    eroded = mask
    for _ in range(steps):
        padded = np.pad(eroded, 1)
        eroded = (padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2]
                  & padded[1:-1, 2:])
    return eroded if eroded.sum() >= MIN_SKIN_PIXELS else mask


class ToneReader:
    """Reads the skin tone of images of emoji that come in five tones (one skin mask per emoji group)."""

    def __init__(self, glyphs: Glyphs):
        mask_steps = glyphs.pixels.shape[1] // 32  # erosion steps: 1 px at 32 px, 2 at 64
        by_group: dict[str, dict[str, int]] = {}
        for index, sequence in enumerate(glyphs.sequences):
            tones = emoji_data.sequence_tones(sequence)
            if len(tones) <= 1:  # two-tone glyphs (one tone per person) have no single answer
                by_group.setdefault(glyphs.groups[index], {})[tones[0] if tones else NO_TONE] = index
        self.masks: dict[str, np.ndarray] = {}  # group → (R, R) bool skin mask
        self.references: dict[str, dict[str, np.ndarray]] = {}  # group → tone class → (3,) median skin RGB
        for group, variants in by_group.items():
            if not all(tone in variants for tone in emoji_data.TONES):
                continue
            toned = glyphs.pixels[[variants[tone] for tone in emoji_data.TONES]]  # (5, R, R, 3)
            mask = core(toned.std(axis=0).mean(axis=-1) > SKIN_STD, steps=max(1, mask_steps))
            if mask.sum() >= MIN_SKIN_PIXELS:
                self.masks[group] = mask
                self.references[group] = {tone: np.median(glyphs.pixels[i][mask], axis=0)
                                          for tone, i in variants.items()}

    def reads(self, sequence: str) -> bool:
        """Whether the tone of `sequence`'s emoji can be read (it comes in five tones, with enough skin)."""
        return emoji_data.emoji_group(sequence) in self.masks

    def skin_colour(self, image, sequence: str) -> np.ndarray:
        """(3,) median RGB in [0, 1] of `image`'s pixels under the skin mask of `sequence`'s emoji."""
        group = emoji_data.emoji_group(sequence)
        if group not in self.masks:
            raise ValueError(f"no skin-tone mask for {sequence!r}: it does not come in five tones.")
        return np.median(as_array(image)[self.masks[group]], axis=0)

    def read(self, image, sequence: str) -> str:
        """The tone class ("none" or a name of `ldm.data.emoji.TONES`) whose skin colour for `sequence`'s emoji is
        nearest to the image's; `image` (R, R) as the glyphs the reader was built with."""
        colour = self.skin_colour(image, sequence)
        references = self.references[emoji_data.emoji_group(sequence)]
        return min(references, key=lambda tone: float(((references[tone] - colour) ** 2).sum()))
