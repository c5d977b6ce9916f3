"""ldm/grid.py: layout, tile placement and captions."""

import numpy as np
import pytest
from PIL import Image, ImageFont

from ldm import grid
from ldm.grid import PADDING, make_grid


def _tiles(n, size=16):
    return [Image.new("RGB", (size, size), (10 * i, 200, 255 - 10 * i)) for i in range(n)]


def test_layout_without_captions_places_each_tile():
    tiles = _tiles(5)
    grid = make_grid(tiles, ncols=3)
    assert grid.size == (3 * 16 + 4 * PADDING, 2 * 16 + 3 * PADDING)
    for i, tile in enumerate(tiles):
        row, col = divmod(i, 3)
        x, y = PADDING + col * (16 + PADDING), PADDING + row * (16 + PADDING)
        assert grid.crop((x, y, x + 16, y + 16)).tobytes() == tile.tobytes()
    assert make_grid(_tiles(9)).size == make_grid(_tiles(9), ncols=3).size  # default: square-ish


def test_captions_are_drawn_under_the_tiles():
    tiles = _tiles(2, size=64)
    plain = make_grid(tiles, ncols=2)
    captioned = make_grid(
        tiles, captions=["a red circle", "a much longer caption that has to wrap " * 3], ncols=2
    )
    assert captioned.height > plain.height and captioned.width == plain.width
    text_band = np.asarray(captioned)[PADDING + 64 :, :].astype(int)
    dark = text_band.sum(-1) < 300
    half = captioned.width // 2
    assert dark[:, :half].any() and dark[:, half:].any()
    assert dark[:, half:].sum() > dark[:, :half].sum()  # the long caption wraps onto more lines


def test_bad_arguments():
    with pytest.raises(ValueError, match="at least one image"):
        make_grid([])
    with pytest.raises(ValueError, match="one caption per image"):
        make_grid(_tiles(2), captions=["one"])


def test_a_word_wider_than_its_tile_continues_on_the_next_line_instead_of_losing_letters():
    font = ImageFont.load_default()
    lines = grid._wrap("grinning face", 32, font)
    assert "".join(lines).replace(" ", "") == "grinningface"  # every letter shown, in order
    assert all(font.getlength(line) <= 32 for line in lines)
    long = grid._wrap("supercalifragilistic expialidocious words go on and on", 32, font)
    assert len(long) == grid.MAX_CAPTION_LINES and long[-1].endswith("...")  # still capped
