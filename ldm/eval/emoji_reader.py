"""The emoji retrieval reader: which emoji does an image show, read offline against the font's own glyphs.

An image is compared with every glyph the font draws (both splits: 3,773 glyphs in 1,904 groups, a group being an
emoji with all its skin tones, `ldm.data.emoji.emoji_group`) in a fixed feature space: the image's 8 x 8 colour
layout (the mean RGB of each of 64 blocks). Each glyph enters at 9 positions (shifted by -1, 0, +1 steps of
R/32 pixels each way), so a sample drawn a pixel off centre still finds its glyph. A group's distance is its
nearest glyph's; the prompt's emoji is read right when its group is nearer than every other group (rank 1).
Tones are the tone reader's job (`ldm.eval.tone_reader`), so all tones of an emoji count as that emoji here.

Chosen by measurement (`python benchmarks/emoji_reader.py --vae /work/runs/qs2/stage1/vae --resolutions 32`:
400 random glyphs of all 3,773, chance = 1 / 1,904 = 0.05%), top-1 at 32 px, in %:

| feature                     | clean | blur | jitter | shift <= 2 px | VAE round trip | all (VAE+jitter+shift) |
|-----------------------------|-------|------|--------|---------------|----------------|------------------------|
| all 32 x 32 pixels          | 100   | 99.8 | 100    | 59.0          | 39.0           | 14.5                   |
| 8 x 8 layout                | 100   | 99.5 | 96.8   | 83.2          | 43.0           | 17.5                   |
| 8 x 8 layout, 9 shifts: this| 100   | 99.5 | 96.2   | 99.2          | 40.5           | 29.5                   |

An 8 x 8 layout plus a 64-bin colour histogram of the non-white pixels, tried first (600 glyphs), read 99.8%
clean but 79.8% blurred, 58.7% jittered and 7.0% after the VAE: it rewards the right colours in the wrong
places. The VAE round trip is the shapes quickstart's stage-1 VAE, which never saw an emoji: a harsher loss of
detail and colour than an emoji-trained VAE (none could be trained on the loaded 2-core machine in time); 64 px
is not measured yet. A contrastive encoder was not needed for real glyphs under these degradations.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ldm.data import emoji as emoji_data
from ldm.data.transforms import resize_and_crop

LAYOUT = 8  # blocks per side of the colour layout: 4 x 4 pixels each at 32 px
SHIFTS = (-1, 0, 1)  # reference positions per axis, in steps of R / 32 pixels
QUERY_CHUNK = 256  # images per distance matrix: 256 x 33,957 float64 is 70 MB


@dataclass(frozen=True)
class Glyphs:
    """Reference glyphs at one resolution: `pixels` (N, R, R, 3) float32 in [0, 1], white background."""
    sequences: tuple[str, ...]
    captions: tuple[str, ...]
    groups: tuple[str, ...]  # emoji_group of each sequence
    pixels: np.ndarray


@functools.lru_cache(maxsize=4)
def render_glyphs(resolution: int) -> Glyphs:
    """Every glyph the installed font draws, rendered exactly as the `emoji` data source renders it."""
    font = emoji_data._load_font(emoji_data.font_path())
    items = emoji_data.supported_emoji(font)
    pixels = np.stack([np.asarray(resize_and_crop(emoji_data.render_emoji(s, font), resolution, crop="center"),
                                  dtype=np.float32) / 255 for s, _ in items])
    return Glyphs(tuple(s for s, _ in items), tuple(c for _, c in items),
                  tuple(emoji_data.emoji_group(s) for s, _ in items), pixels)


def as_array(image) -> np.ndarray:
    """PIL image or array (H, W, 3) (uint8, or float in [0, 1]) → float32 (H, W, 3) in [0, 1]."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float32) / 255
    array = np.asarray(image)
    return array.astype(np.float32) / 255 if array.dtype == np.uint8 else array.astype(np.float32)


def shift_images(pixels: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """(N, H, W, 3) moved by (dx, dy) pixels (right, down), the uncovered border filled with white."""
    out = np.ones_like(pixels)
    height, width = pixels.shape[1:3]
    source = pixels[:, max(0, -dy):height - max(0, dy), max(0, -dx):width - max(0, dx)]
    out[:, max(0, dy):max(0, dy) + source.shape[1], max(0, dx):max(0, dx) + source.shape[2]] = source
    return out


def layout_features(pixels: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) in [0, 1] → (N, LAYOUT * LAYOUT * 3): the mean colour of each block (area average)."""
    tensor = torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2)
    return F.adaptive_avg_pool2d(tensor, LAYOUT).flatten(1).numpy()


class EmojiReader:
    """Nearest-group retrieval over `glyphs` (see the module docstring for the feature space and its accuracy)."""

    def __init__(self, glyphs: Glyphs):
        self.glyphs = glyphs
        step = max(1, glyphs.pixels.shape[1] // 32)
        positions = [(dx * step, dy * step) for dx in SHIFTS for dy in SHIFTS]
        features = np.concatenate([layout_features(shift_images(glyphs.pixels, dx, dy))
                                   for dx, dy in positions])
        self.group_names = sorted(set(glyphs.groups))
        self._index = {group: i for i, group in enumerate(self.group_names)}
        group_of = np.tile([self._index[g] for g in glyphs.groups], len(positions))
        # Features sorted by group, so that one reduceat takes each group's nearest glyph.
        order = np.argsort(group_of, kind="stable")
        self.features = features[order].astype(np.float64)
        self._norms = (self.features ** 2).sum(1)[None]
        self.glyph_of = np.tile(np.arange(len(glyphs.sequences)), len(positions))[order]
        self._starts = np.flatnonzero(np.r_[True, np.diff(group_of[order]) != 0])

    @property
    def chance(self) -> float:
        """Probability that a random guess among the groups is right: 1 / number of groups."""
        return 1 / len(self.group_names)

    def group_distances(self, images) -> tuple[np.ndarray, np.ndarray]:
        """(B, G) squared feature distance from each image to each group's nearest glyph, and (B,) the
        index into `glyphs` of each image's nearest glyph overall. float64 and clipped at 0, so that an image
        equal to a glyph is at distance exactly 0 from it."""
        query = layout_features(np.stack([as_array(im) for im in images])).astype(np.float64)
        per_group, nearest = [], []
        for start in range(0, len(query), QUERY_CHUNK):
            part = query[start:start + QUERY_CHUNK]
            distances = np.maximum((part ** 2).sum(1)[:, None] - 2 * part @ self.features.T + self._norms, 0)
            per_group.append(np.minimum.reduceat(distances, self._starts, axis=1))
            nearest.append(self.glyph_of[distances.argmin(1)])
        return np.concatenate(per_group), np.concatenate(nearest)

    def read(self, images, sequences) -> list[dict]:
        """For image i and the emoji `sequences[i]` its prompt names: {"rank": 1 + the number of other groups
        strictly nearer than its own (1 = read right), "right": rank == 1, "nearest": caption of the nearest
        glyph}. Raises ValueError for a sequence the font does not draw."""
        missing = [s for s in sequences if emoji_data.emoji_group(s) not in self._index]
        if missing:
            raise ValueError(f"the emoji font draws no glyph for {missing[0]!r}.")
        per_group, nearest = self.group_distances(images)
        results = []
        for row, sequence in enumerate(sequences):
            own = per_group[row, self._index[emoji_data.emoji_group(sequence)]]
            rank = 1 + int((per_group[row] < own).sum())
            results.append({"rank": rank, "right": rank == 1,
                            "nearest": self.glyphs.captions[nearest[row]]})
        return results
