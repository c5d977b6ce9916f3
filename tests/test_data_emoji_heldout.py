"""ldm/data/emoji.py's held-out skin tones (emoji:heldouttones=1): the pairs never reach a training caption."""
import re
from collections import Counter

import pytest

from emoji_font import needs_font
from ldm.data import emoji as emoji_data
from ldm.data import open_dataset

pytestmark = needs_font


def test_tone_helpers():
    thumbs = "\U0001f44d"
    assert emoji_data.sequence_tones(thumbs) == ()
    assert emoji_data.sequence_tones(thumbs + emoji_data.TONES["medium-dark"]) == ("medium-dark",)
    couple = "\U0001f9d1\U0001f3ff\u200d\U0001f91d\u200d\U0001f9d1\U0001f3fb"  # people holding hands, two tones
    assert emoji_data.sequence_tones(couple) == ("light", "dark")
    assert emoji_data.base_name("men holding hands dark skin tone medium-dark skin tone") == "men holding hands"
    assert emoji_data.heldout_tone("thumbs up") in emoji_data.TONES
    assert set(Counter(emoji_data.heldout_tone(f"emoji {k}") for k in range(100))) == set(emoji_data.TONES)


@pytest.fixture(scope="module")
def splits():
    pytest.importorskip("emoji", reason="the emoji extra is not installed")
    return {name: open_dataset(f"emoji:heldouttones={flag}", resolution=16, split=split).items
            for name, flag, split in [("train", 1, "train"), ("all_train", 0, "train"), ("heldout", 0, "heldout")]}


TONE_PHRASE = re.compile(r" ((?:medium-)?(?:light|dark)|medium) skin tone")


def _names_tone(caption: str, base: str, tone: str) -> bool:
    """An independent reading of a caption: with its "X skin tone" phrases taken out it is the emoji's name,
    and one of those phrases names `tone` ("dark" is not read out of "medium-dark")."""
    return TONE_PHRASE.sub("", caption) == base and tone in TONE_PHRASE.findall(caption)


def test_heldout_pairs_never_appear_in_training_captions(splits):
    train_captions = [caption for _, caption in splits["train"]]
    assert len(splits["heldout"]) >= 250  # one held-out pair per toned train emoji (300 with the Debian font)
    for sequence, caption in splits["heldout"]:
        (tone,) = emoji_data.sequence_tones(sequence)
        base = TONE_PHRASE.sub("", caption)
        assert _names_tone(caption, base, tone)
        assert not any(_names_tone(c, base, tone) for c in train_captions if c.startswith(base)), caption


def test_model_still_sees_the_emoji_and_the_tone(splits):
    """Composition needs both parts seen: every held-out emoji in other tones, every tone on other emoji."""
    train_pairs = {(TONE_PHRASE.sub("", c), t) for c in [c for _, c in splits["train"]]
                   for t in TONE_PHRASE.findall(c)}
    for sequence, caption in splits["heldout"]:
        name, (tone,) = TONE_PHRASE.sub("", caption), emoji_data.sequence_tones(sequence)
        assert sum(n == name for n, _ in train_pairs) == len(emoji_data.TONES) - 1
        assert sum(t == tone for _, t in train_pairs) > 100


def test_option_off_keeps_the_old_train_split(splits):
    held_out = {s for s, _ in splits["heldout"]}
    assert held_out <= {s for s, _ in splits["all_train"]}
    removed = set(splits["all_train"]) - set(splits["train"])
    assert held_out <= {s for s, _ in removed} and not set(splits["train"]) - set(splits["all_train"])
    assert all(emoji_data.has_heldout_tone(s, c) for s, c in removed)


def test_bad_option_is_a_one_line_error():
    with pytest.raises(ValueError, match="heldouttones must be 0 or 1"):
        open_dataset("emoji:heldouttones=2", resolution=16)
