"""ldm/eval/emoji_reader.py and ldm/eval/tone_reader.py on real glyphs of the installed emoji font."""
import math

import numpy as np
import pytest
from PIL import Image, ImageFilter

from emoji_font import needs_font
from ldm.data import emoji as emoji_data

pytestmark = [needs_font, pytest.mark.filterwarnings("ignore::UserWarning")]
pytest.importorskip("emoji", reason="the emoji extra is not installed")

from ldm.eval.emoji_reader import EmojiReader, render_glyphs  # noqa: E402
from ldm.eval.tone_reader import NO_TONE, TONE_CLASSES, ToneReader  # noqa: E402

QUERIES = 200
FALSE_ALARM = 1e-9  # chance that a reader which only guesses passes a `well_above_chance` bound


def well_above_chance(chance: float, n: int) -> float:
    """Accuracy that a guessing reader (each of n readings right with probability `chance`, independently)
    reaches with probability below FALSE_ALARM, by Hoeffding's inequality: P(mean ≥ chance + t) ≤ exp(−2nt²)."""
    return chance + math.sqrt(math.log(1 / FALSE_ALARM) / (2 * n))


def blurred(pixels: np.ndarray) -> Image.Image:
    radius = pixels.shape[0] / 32
    return Image.fromarray((pixels * 255).round().astype(np.uint8)).filter(ImageFilter.GaussianBlur(radius))


@pytest.fixture(scope="module")
def glyphs():
    return render_glyphs(32)


@pytest.fixture(scope="module")
def reader(glyphs):
    return EmojiReader(glyphs)


@pytest.fixture(scope="module")
def queries(glyphs):
    return np.random.default_rng(0).choice(len(glyphs.sequences), QUERIES, replace=False)


def test_glyphs_are_the_data_sources_images(glyphs):
    """The reader compares with exactly the pixels the `emoji` data source trains on."""
    data = emoji_data.EmojiDataset(resolution=32, split="test", size=3)
    for item, (sequence, _) in zip((data[i] for i in range(3)), data.items):
        pixels = glyphs.pixels[glyphs.sequences.index(sequence)]
        expected = ((item["pixel_values"].permute(1, 2, 0).numpy() + 1) / 2)
        assert np.abs(pixels - expected).max() < 1 / 255 + 1e-6


def test_clean_glyphs_read_right(glyphs, reader, queries):
    """A real glyph is at distance 0 from itself, so only another emoji with an identical layout could tie; the
    reader must read every one of its group right (rank 1), far above chance."""
    read = reader.read([glyphs.pixels[i] for i in queries], [glyphs.sequences[i] for i in queries])
    assert all(r["rank"] == 1 and r["right"] for r in read)
    assert reader.chance == pytest.approx(1 / len(set(glyphs.groups))) and reader.chance < 0.001
    same_group = [emoji_data.emoji_group(glyphs.sequences[i]) == emoji_data.emoji_group(
        glyphs.sequences[glyphs.captions.index(r["nearest"])]) for i, r in zip(queries, read)]
    assert np.mean(same_group) >= well_above_chance(reader.chance, QUERIES)


def test_blurred_glyphs_read_well_above_chance(glyphs, reader, queries):
    read = reader.read([blurred(glyphs.pixels[i]) for i in queries], [glyphs.sequences[i] for i in queries])
    assert np.mean([r["right"] for r in read]) >= well_above_chance(reader.chance, QUERIES)


def test_a_wrong_caption_is_read_wrong(glyphs, reader, queries):
    """Each glyph read against another group's emoji (the next query's): its own group is nearer, so rank > 1."""
    layout = {g: reader.features[reader.glyph_of == g] for g in range(len(glyphs.sequences))}
    wrong = []
    for i, j in zip(queries, np.roll(queries, 1)):
        if glyphs.groups[i] != glyphs.groups[j] and not np.allclose(layout[i][4], layout[j][4]):
            wrong.append((i, j))
    read = reader.read([glyphs.pixels[i] for i, _ in wrong], [glyphs.sequences[j] for _, j in wrong])
    assert len(wrong) > QUERIES // 2 and not any(r["right"] for r in read)
    assert all(r["rank"] > 1 for r in read)


def test_a_shifted_glyph_still_reads_right(glyphs, reader, queries):
    from ldm.eval.emoji_reader import shift_images

    moved = shift_images(glyphs.pixels[queries], 1, -1)
    read = reader.read(list(moved), [glyphs.sequences[i] for i in queries])
    assert np.mean([r["right"] for r in read]) >= well_above_chance(reader.chance, QUERIES)


def test_unknown_emoji_is_a_one_line_error(glyphs, reader):
    with pytest.raises(ValueError, match="draws no glyph"):
        reader.read([glyphs.pixels[0]], ["not an emoji"])


@pytest.fixture(scope="module")
def tone_reader(glyphs):
    return ToneReader(glyphs)


def _one_tone_glyphs(glyphs, tone_reader):
    """(index, true tone class) of every one-tone and toneless glyph of the emoji the tone reader reads."""
    rows = []
    for index, sequence in enumerate(glyphs.sequences):
        tones = emoji_data.sequence_tones(sequence)
        if tone_reader.reads(sequence) and len(tones) <= 1:
            rows.append((index, tones[0] if tones else NO_TONE))
    return rows


def test_tone_reader_reads_all_five_tones_of_real_glyphs(glyphs, tone_reader):
    """Each glyph's skin colour is the reference of its own tone, so the clean confusion matrix is diagonal;
    every tone appears once per emoji read."""
    rows = _one_tone_glyphs(glyphs, tone_reader)
    assert len(tone_reader.masks) > 250  # most of the 329 emoji with skin tones have a readable skin mask
    counts = {tone: sum(t == tone for _, t in rows) for tone in TONE_CLASSES}
    assert set(counts.values()) == {len(tone_reader.masks)}
    for index, tone in rows:
        assert tone_reader.read(glyphs.pixels[index], glyphs.sequences[index]) == tone


def test_tone_reader_on_blurred_glyphs_beats_chance_per_tone(glyphs, tone_reader):
    rows = _one_tone_glyphs(glyphs, tone_reader)
    picked = [rows[k] for k in np.random.default_rng(1).choice(len(rows), 300, replace=False)]
    for tone in emoji_data.TONES:
        of_tone = [(i, t) for i, t in picked if t == tone]
        right = [tone_reader.read(blurred(glyphs.pixels[i]), glyphs.sequences[i]) == t for i, t in of_tone]
        assert np.mean(right) >= well_above_chance(1 / len(TONE_CLASSES), len(right)), tone


def test_skin_mask_is_where_the_tones_differ(glyphs, tone_reader):
    """Outside the mask the five tones of an emoji are (nearly) the same pixels; inside they differ."""
    group = emoji_data.emoji_group("\U0001f44d")  # thumbs up
    mask = tone_reader.masks[group]
    variants = np.stack([glyphs.pixels[glyphs.sequences.index("\U0001f44d" + m)] for m in emoji_data.TONES.values()])
    spread = variants.std(axis=0).mean(axis=-1)
    assert spread[mask].min() > 0.05 and np.median(spread[~mask]) < 0.01
    with pytest.raises(ValueError, match="five tones"):
        tone_reader.read(glyphs.pixels[0], "\U0001f600")  # grinning face: no skin tones
