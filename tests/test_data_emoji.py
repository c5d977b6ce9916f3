"""ldm/data/emoji.py: the emoji set renders real glyphs with CLDR captions and a group-wise split."""
import numpy as np
import pytest

from emoji_font import FONT, needs_font
from ldm.data import emoji as emoji_data
from ldm.data import open_dataset


def test_group_and_caption_helpers():
    thumbs = "\U0001f44d"
    assert emoji_data.emoji_group(thumbs + "\U0001f3fd") == thumbs
    assert emoji_data.emoji_caption(":thumbs_up_medium_skin_tone:") == "thumbs up medium skin tone"


def test_missing_font_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("LDM_EMOJI_FONT", str(tmp_path / "none.ttf"))
    with pytest.raises(FileNotFoundError, match="apt-get install fonts-noto-color-emoji"):
        open_dataset("emoji", resolution=32)


@needs_font
def test_emoji_dataset_items_splits_and_captions():
    pytest.importorskip("emoji", reason="the emoji extra is not installed")
    import emoji

    train = open_dataset("emoji", resolution=32)
    test = open_dataset("emoji", resolution=32, split="test")
    assert len(train) > 2000 and 0.05 < len(test) / (len(train) + len(test)) < 0.2
    train_groups = {emoji_data.emoji_group(s) for s, _ in train.items}
    assert not train_groups & {emoji_data.emoji_group(s) for s, _ in test.items}
    # Skin-tone variants share their base emoji's split.
    waving = "\U0001f44b"
    assert all(
        s in {x for x, _ in train.items} for s in [waving + chr(c) for c in range(0x1F3FB, 0x1F400)]
    ) or all(s in {x for x, _ in test.items} for s in [waving + chr(c) for c in range(0x1F3FB, 0x1F400)])
    index = next(i for i, (s, _) in enumerate(train.items) if s == "\U0001f600")
    item = train[index]
    assert (
        item["caption"]
        == emoji.EMOJI_DATA["\U0001f600"]["en"].strip(":").replace("_", " ")
        == "grinning face"
    )
    pixels = item["pixel_values"]
    assert pixels.shape == (3, 32, 32) and pixels.min() >= -1 and pixels.max() <= 1
    # A real coloured glyph on white: the grinning face is yellow in the centre, white at the corner.
    centre = ((pixels[:, 16, 16] + 1) * 127.5).numpy()
    assert centre[0] > 180 and centre[2] < 120 and np.allclose(pixels[:, 0, 0].numpy(), 1.0)


@needs_font
def test_flag_uses_raqm_layout():
    font = emoji_data._load_font(FONT)
    france = np.asarray(emoji_data.render_emoji("\U0001f1eb\U0001f1f7", font)).astype(int)
    # Blue, white and red bands of one flag glyph (two letter boxes would not look like this).
    row = france[emoji_data.CANVAS // 2]
    assert (row[:, 2] - row[:, 0] > 100).any() and (row[:, 0] - row[:, 2] > 100).any()
