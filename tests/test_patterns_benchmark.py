"""benchmarks/patterns.py: the captioned pattern folder keeps its held-out pairs out, and its reader reads
every render back, blurred too; a picture of one colour reads as nothing."""
import importlib.util
import itertools
import random
from pathlib import Path

import pytest
from PIL import Image, ImageFilter

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("patterns", REPO / "benchmarks" / "patterns.py")
patterns = importlib.util.module_from_spec(spec)
spec.loader.exec_module(patterns)


@pytest.mark.parametrize("pattern", patterns.PATTERNS)
def test_reader_reads_every_colour_pair_period_and_a_random_phase_clean_and_blurred(pattern):
    rng = random.Random(pattern)
    for fg, bg in itertools.permutations(patterns.COLOURS, 2):
        for period in patterns.PERIODS:
            phase = (rng.randrange(period), rng.randrange(period))
            image = patterns.render(pattern, fg, bg, resolution=32, period=period, phase=phase)
            expected = {"pattern": pattern, "fg": fg, "bg": bg}
            assert patterns.read(image) == expected
            assert patterns.read(image.filter(ImageFilter.GaussianBlur(0.7))) == expected


def test_one_colour_reads_as_nothing_and_a_wrong_caption_does_not_match():
    assert patterns.read(Image.new("RGB", (32, 32), patterns.COLOURS["navy"])) is None
    image = patterns.render("polka dots", "gold", "navy", resolution=32, period=8, phase=(1, 2))
    assert patterns.read(image) != {"pattern": "vertical stripes", "fg": "gold", "bg": "navy"}


def test_folder_has_captions_for_its_images_and_no_held_out_pair(tmp_path):
    patterns.make_folder(tmp_path, size=60, resolution=32, seed=3)
    images = sorted(tmp_path.glob("*.png"))
    assert len(images) == 60
    for path in images:
        caption = path.with_suffix(".txt").read_text().strip()
        read = patterns.read(Image.open(path))
        assert caption == patterns.caption(read["pattern"], read["fg"], read["bg"])
        assert (read["pattern"], read["fg"]) not in patterns.HELD_OUT
    held_out = patterns.prompt_set("held_out", count=8)
    assert {(p, fg) for p, fg, _ in held_out} == set(patterns.HELD_OUT) and all(fg != bg for _, fg, bg in held_out)
