"""Image grids with optional captions: the one grid writer every script in the project uses."""

from __future__ import annotations

import math

from PIL import Image, ImageDraw, ImageFont

PADDING = 4  # pixels between tiles, so neighbouring images do not blur into each other
LINE_HEIGHT = 12  # Pillow's default bitmap font is ~11 px tall
MAX_CAPTION_LINES = 4  # long captions are cut with "..." so one caption cannot stretch the whole grid


def _wrap(caption: str, width_px: int, font: ImageFont.ImageFont) -> list[str]:
    """Greedy word wrap by measured pixel width; a word wider than a line continues on the next line(s) instead
    of losing its end ("grinning" under a 32 px tile was shown as "grinni")."""
    lines: list[str] = []
    for word in caption.split():
        candidate = f"{lines[-1]} {word}" if lines else word
        if lines and font.getlength(candidate) <= width_px:
            lines[-1] = candidate
        else:
            lines.extend(_split_word(word, width_px, font))
    lines = lines or [""]
    if len(lines) > MAX_CAPTION_LINES:
        lines = lines[:MAX_CAPTION_LINES]
        lines[-1] = _fit(lines[-1] + "...", width_px, font, suffix="...")
    return lines


def _split_word(word: str, width_px: int, font: ImageFont.ImageFont) -> list[str]:
    """`word` in pieces that each fit `width_px` (at least one character each), in order."""
    pieces = []
    while word:
        end = len(word)
        while end > 1 and font.getlength(word[:end]) > width_px:
            end -= 1
        pieces.append(word[:end])
        word = word[end:]
    return pieces


def _fit(text: str, width_px: int, font: ImageFont.ImageFont, suffix: str = "") -> str:
    while len(text) > len(suffix) + 1 and font.getlength(text) > width_px:
        text = text[: -len(suffix) - 1] + suffix if suffix else text[:-1]
    return text


def make_grid(
    images: list[Image.Image], *, captions: list[str] | None = None, ncols: int | None = None
) -> Image.Image:
    """Tile `images` (any sizes, laid out in cells of the largest) into one RGB image on white.

    ncols defaults to ceil(sqrt(len(images))); captions (one per image) are wrapped under each tile.
    """
    if not images:
        raise ValueError("make_grid needs at least one image.")
    if captions is not None and len(captions) != len(images):
        raise ValueError(
            f"Got {len(captions)} captions for {len(images)} images; pass one caption per image."
        )
    ncols = ncols or math.ceil(math.sqrt(len(images)))
    if ncols < 1:
        raise ValueError(f"ncols must be at least 1, got {ncols}.")
    nrows = math.ceil(len(images) / ncols)
    cell_w = max(im.width for im in images)
    cell_h = max(im.height for im in images)
    font = ImageFont.load_default()
    wrapped = [_wrap(c, cell_w, font) for c in captions] if captions is not None else None
    text_h = LINE_HEIGHT * max(len(w) for w in wrapped) + 2 if wrapped else 0
    grid = Image.new(
        "RGB",
        (ncols * cell_w + (ncols + 1) * PADDING, nrows * (cell_h + text_h) + (nrows + 1) * PADDING),
        (255, 255, 255),
    )
    draw = ImageDraw.Draw(grid)
    for i, image in enumerate(images):
        row, col = divmod(i, ncols)
        x = PADDING + col * (cell_w + PADDING)
        y = PADDING + row * (cell_h + text_h + PADDING)
        grid.paste(image.convert("RGB"), (x, y))
        for k, line in enumerate(wrapped[i] if wrapped else []):
            draw.text((x, y + cell_h + 1 + k * LINE_HEIGHT), line, fill=(0, 0, 0), font=font)
    return grid
