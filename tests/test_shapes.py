"""ldm/data/shapes.py: the spec constants, determinism, split rules, caption truth and rendering geometry."""

import itertools
import math
import re

import numpy as np
import pytest

from ldm.data import shapes
from ldm.data.shapes import (
    BACKGROUNDS,
    COLOURS,
    HELD_OUT,
    POSITIONS,
    SHAPES,
    SIZES,
    Scene,
    ShapeObject,
    canonical_prompt,
    caption_scene,
    render_scene,
    scene_for_index,
)


def _scenes(split, n, max_objects=3, seed=0):
    return [scene_for_index(i, seed=seed, split=split, max_objects=max_objects) for i in range(n)]


def test_constants_cover_the_spec():
    assert len(COLOURS) >= 6 and len(SHAPES) >= 4 and set(SIZES) == {"small", "large"}
    assert set(POSITIONS) == {"left", "right", "top", "bottom", "centre"} and len(BACKGROUNDS) >= 3
    colours = [c for c, _ in HELD_OUT]
    shapes_ = [s for _, s in HELD_OUT]
    assert len(set(colours)) == len(colours) and len(set(shapes_)) == len(shapes_)
    assert all(c in COLOURS and s in SHAPES for c, s in HELD_OUT)


def test_every_colour_contrasts_with_every_background_and_other_colours():
    for colour, background in itertools.product(COLOURS.values(), BACKGROUNDS.values()):
        assert math.dist(colour, background) >= 100
    for a, b in itertools.combinations(COLOURS.values(), 2):
        assert math.dist(a, b) >= 100


def test_deterministic_by_seed_split_index():
    assert _scenes("train", 20) == _scenes("train", 20)
    assert _scenes("train", 20) != _scenes("train", 20, seed=1)
    assert _scenes("train", 20) != _scenes("test", 20)
    scene = scene_for_index(7)
    assert render_scene(scene, 32).tobytes() == render_scene(scene, 32).tobytes()
    assert caption_scene(scene, np.random.default_rng(3)) == caption_scene(scene, np.random.default_rng(3))


@pytest.mark.parametrize("split", ["train", "test"])
def test_train_and_test_never_contain_held_out_pairs(split):
    for scene in _scenes(split, 3000):
        assert not {(o.colour, o.shape) for o in scene.objects} & HELD_OUT


def test_heldout_scenes_all_contain_a_held_out_pair():
    scenes = _scenes("heldout", 500)
    assert all({(o.colour, o.shape) for o in s.objects} & HELD_OUT for s in scenes)
    assert {(s.objects[0].colour, s.objects[0].shape) for s in scenes} == set(HELD_OUT)


def test_scene_statistics_cover_all_attributes():
    scenes = _scenes("train", 1000)
    objects = [o for s in scenes for o in s.objects]
    assert {len(s.objects) for s in scenes} == {1, 2, 3}
    assert {o.colour for o in objects} == set(COLOURS) and {o.shape for o in objects} == set(SHAPES)
    assert {o.size for o in objects} == set(SIZES) and {o.position for o in objects} == set(POSITIONS)
    assert {s.background for s in scenes} == set(BACKGROUNDS)
    assert {len(s.objects) for s in _scenes("train", 200, max_objects=1)} == {1}


def test_objects_never_overlap_and_positions_are_distinct():
    for scene in _scenes("train", 500):
        assert len({o.position for o in scene.objects}) == len(scene.objects)
        for a, b in itertools.combinations(scene.objects, 2):
            (ax, ay), (bx, by) = POSITIONS[a.position], POSITIONS[b.position]
            # Boxes of side s_a, s_b centred at a, b are disjoint iff separated on one axis.
            reach = (SIZES[a.size] + SIZES[b.size]) / 2
            assert abs(ax - bx) >= reach or abs(ay - by) >= reach


def _words(text):
    return set(re.findall(r"[a-z]+", text))


PLURALS = {s + ("es" if s.endswith("s") else "s"): s for s in SHAPES}
POSITION_WORDS = {"left": "left", "right": "right", "top": "top", "bottom": "bottom", "centre": "centre"}


def _check_caption(caption, scene):
    words = _words(caption)
    objects = scene.objects
    named_shapes = {PLURALS.get(w, w) for w in words} & set(SHAPES)
    assert named_shapes == {o.shape for o in objects}, caption
    assert words & set(COLOURS) == {o.colour for o in objects}, caption
    assert words & set(SIZES) <= {o.size for o in objects}, caption
    assert words & set(POSITION_WORDS) <= {o.position for o in objects}, caption
    assert words & set(BACKGROUNDS) <= {scene.background}, caption
    if len(objects) == 1:
        assert not words & {"two", "three"}, caption
    elif scene.is_repeat:
        assert {"two": 2, "three": 3}[caption.split()[0]] == len(objects), caption


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_captions_are_true_of_their_scene(split):
    templates = set()
    for i, scene in enumerate(_scenes(split, 400)):
        caption = caption_scene(scene, np.random.default_rng(i))
        templates.add(caption.split()[0] + str("background" in caption) + str(len(scene.objects)))
        _check_caption(caption, scene)
    assert len(templates) >= 6  # several templates are in use


def test_canonical_prompt_names_every_attribute():
    for scene in _scenes("train", 200):
        prompt = canonical_prompt(scene)
        _check_caption(prompt, scene)
        words = _words(prompt)
        assert scene.background in words and {o.size for o in scene.objects} <= words
        if not scene.is_repeat:
            assert {o.position for o in scene.objects} <= words
    one = Scene((ShapeObject("circle", "red", "small", "left"),), "white")
    assert canonical_prompt(one) == "a small red circle on the left, on a white background"


@pytest.mark.parametrize("resolution", [32, 64, 128, 256])
def test_render_size_and_background(resolution):
    scene = scene_for_index(0)
    image = render_scene(scene, resolution)
    assert image.size == (resolution, resolution) and image.mode == "RGB"
    assert image.getpixel((0, 0)) == BACKGROUNDS[scene.background]


# Filled area of each shape as a fraction of its box, computed from the documented geometry.
AREAS = {
    "circle": math.pi / 4,
    "square": 1.0,
    "triangle": 0.5,
    "cross": 2 * shapes.CROSS_BAR - shapes.CROSS_BAR**2,
}


@pytest.mark.parametrize("shape", SHAPES)
def test_render_geometry_matches_the_documented_spec(shape):
    resolution = 128
    obj = ShapeObject(shape, "blue", "large", "right")
    pixels = np.asarray(render_scene(Scene((obj,), "white"), resolution)).astype(int)
    close = np.abs(pixels - np.array(COLOURS["blue"])).sum(-1) < 60
    side = SIZES["large"] * resolution
    assert abs(close.sum() / side**2 - AREAS[shape]) < 0.06
    cx, cy = (np.array(POSITIONS["right"]) * resolution).astype(int)
    assert close[cy, cx]  # every shape covers its centre
    ys, xs = np.nonzero(close)
    assert abs(xs.mean() - cx) < 2  # all shapes are left–right symmetric about the centre
    assert xs.min() >= cx - side / 2 - 1 and xs.max() <= cx + side / 2 + 1
    assert ys.min() >= cy - side / 2 - 1 and ys.max() <= cy + side / 2 + 1


def test_mirrored_scene_renders_as_the_flipped_image():
    scene = Scene(
        (ShapeObject("triangle", "green", "small", "left"), ShapeObject("cross", "cyan", "small", "top")),
        "grey",
    )
    flipped = np.asarray(render_scene(scene, 64))[:, ::-1]
    mirrored = np.asarray(render_scene(scene.mirrored(), 64))
    # Equal up to anti-aliasing at the edges (Pillow rasterises a sub-pixel differently when mirrored).
    difference = np.abs(flipped.astype(int) - mirrored.astype(int)).sum(-1)
    assert (difference > 30).mean() < 0.01
    assert [o.position for o in scene.mirrored().objects] == ["right", "top"]


def test_bad_arguments_raise_value_errors():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="split"):
        shapes.sample_scene(rng, split="validation")
    with pytest.raises(ValueError, match="objects must be 1, 2 or 3"):
        shapes.sample_scene(rng, max_objects=4)
    with pytest.raises(ValueError, match="resolution"):
        render_scene(scene_for_index(0), 4)


@pytest.mark.parametrize("split", ["train", "test", "heldout"])
def test_simple_variant_is_one_large_centred_object_named_by_colour_and_shape(split):
    scenes = [scene_for_index(i, split=split, max_objects=1, simple=True) for i in range(300)]
    for i, scene in enumerate(scenes):
        (obj,) = scene.objects
        assert scene.simple and (obj.size, obj.position) == ("large", "centre")
        assert ((obj.colour, obj.shape) in HELD_OUT) == (split == "heldout")
        caption = caption_scene(scene, np.random.default_rng(i))
        _check_caption(caption, scene)
        assert not _words(caption) & (set(SIZES) | set(POSITION_WORDS) | set(BACKGROUNDS)), caption
        assert canonical_prompt(scene) == f"{'an' if obj.colour[0] in 'aeiou' else 'a'} {obj.colour} {obj.shape}"
        # the same picture as the full variant's scene with the same attributes
        full = Scene(scene.objects, scene.background)
        assert render_scene(scene, 32).tobytes() == render_scene(full, 32).tobytes()
    assert {s.background for s in scenes} == set(BACKGROUNDS)
    pairs = {(s.objects[0].colour, s.objects[0].shape) for s in scenes}
    assert pairs == (set(HELD_OUT) if split == "heldout" else set(shapes.SEEN_PAIRS))
    templates = {caption_scene(scenes[0], np.random.default_rng(i)) for i in range(40)}
    assert len(templates) == len(shapes.SIMPLE_TEMPLATES)


def test_simple_variant_rejects_several_objects():
    with pytest.raises(ValueError, match="simple=1 draws one object"):
        scene_for_index(0, max_objects=2, simple=True)


@pytest.mark.parametrize("max_objects", [1, 3])
def test_all_pairs_adds_the_held_out_pairs_to_train_and_test_only(max_objects):
    """allpairs=1 (for a captionless stage-1 VAE): train and test draw every colour-shape pair, held-out
    ones included; the heldout split is the same scenes either way."""
    for split in ("train", "test"):
        scenes = [scene_for_index(i, split=split, max_objects=max_objects, all_pairs=True) for i in range(600)]
        pairs = {(o.colour, o.shape) for s in scenes for o in s.objects}
        assert pairs == set(itertools.product(shapes.COLOURS, shapes.SHAPES))
    default = [scene_for_index(i, split="train", max_objects=max_objects) for i in range(600)]
    assert not {(o.colour, o.shape) for s in default for o in s.objects} & HELD_OUT
    for i in range(100):
        assert scene_for_index(i, split="heldout", max_objects=max_objects, all_pairs=True) == \
            scene_for_index(i, split="heldout", max_objects=max_objects)


def test_novel_concept_is_opt_in_and_splits_its_pairs():
    """shapes:novelcolour=1 draws pink only on circle/square in train and only on the other shapes in heldout;
    novelshape=1 likewise diamonds by colour; both=pink diamonds; without the options nothing changes."""
    from ldm.data import open_dataset
    from ldm.data.shapes import NOVEL_COLOUR_SHAPES, NOVEL_SHAPE_COLOURS

    def first_pairs(source, split):
        data = open_dataset(source, resolution=32, split=split, size=60)
        return {(data.scene(i).objects[0].colour, data.scene(i).objects[0].shape) for i in range(60)}

    assert first_pairs("shapes:objects=1,novelcolour=1", "train") == {("pink", s) for s in NOVEL_COLOUR_SHAPES}
    assert first_pairs("shapes:objects=1,novelcolour=1", "heldout") == {("pink", "triangle"), ("pink", "cross")}
    shape_train = first_pairs("shapes:objects=1,novelshape=1", "train")
    assert shape_train == {(c, "diamond") for c in NOVEL_SHAPE_COLOURS}
    assert first_pairs("shapes:objects=1,novelshape=1", "heldout") == {
        (c, "diamond") for c in ("yellow", "purple", "cyan")}
    assert first_pairs("shapes:objects=1,novelcolour=1,novelshape=1", "test") == {("pink", "diamond")}
    plain = open_dataset("shapes:objects=1", resolution=32, size=60)
    assert all(plain.scene(i) == shapes.scene_for_index(i, max_objects=1) for i in range(60))
    assert not {o.colour for i in range(60) for o in plain.scene(i).objects} & {"pink"}
    with pytest.raises(ValueError, match="novelcolour must be 0 or 1"):
        open_dataset("shapes:novelcolour=2", resolution=32)
    everything = first_pairs("shapes:objects=1,novelall=1", "train") | first_pairs("shapes:objects=1,novelall=1",
                                                                                     "heldout")
    assert {"pink"} < {c for c, _ in everything} and {"diamond"} < {s for _, s in everything}
    assert len(everything) > 30  # of 7 x 5 pairs, in every split
    with pytest.raises(ValueError, match="novelall=1 already draws"):
        open_dataset("shapes:novelall=1,novelcolour=1", resolution=32)
    mixed = open_dataset("shapes:objects=1,novelcolour=1,novelshare=30", resolution=32, size=400)
    pink = sum(mixed.scene(i).objects[0].colour == "pink" for i in range(400))
    assert 0.2 < pink / 400 < 0.4  # about 30% new concept, the rest the base's own seen pairs
    assert all(mixed.scene(i).objects[0].colour == "pink" or (mixed.scene(i).objects[0].colour,
               mixed.scene(i).objects[0].shape) in shapes.SEEN_PAIRS for i in range(400))
