"""ldm/eval/metrics.py against hand computations; ldm/eval/plot.py against the pixels its axes map to."""
import dataclasses
import itertools
import math
import struct
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from ldm.data import shapes
from ldm.eval import metrics, plot
from ldm.eval.attributes import read_scene


def obj(colour, shape, size="small", position="left"):
    return SimpleNamespace(colour=colour, shape=shape, size=size, position=position)


def scene(*objects, background="white"):
    return SimpleNamespace(background=background, objects=list(objects))


# --- adherence and attribute accuracy ---

def test_adherence_needs_every_stated_attribute():
    prompt = scene(obj("red", "circle", "small", "left"), obj("blue", "square", "large", "right"))
    same_swapped = scene(obj("blue", "square", "large", "right"), obj("red", "circle", "small", "left"))
    assert metrics.adherence(prompt, same_swapped)
    # right colours, shapes, sizes and positions as multisets, but attached to the wrong objects
    crossed = scene(obj("red", "square", "large", "right"), obj("blue", "circle", "small", "left"))
    assert not metrics.adherence(prompt, crossed)
    assert metrics.attribute_matches(prompt, crossed) == {
        "count": True, "colour": True, "shape": True, "size": True, "position": True, "background": True}
    assert not metrics.adherence(prompt, scene(*prompt.objects, background="black"))
    assert not metrics.adherence(prompt, scene(prompt.objects[0]))


def test_unstated_attributes_are_not_checked():
    prompt = scene(obj("red", "circle", size=None, position=None), background=None)
    read = scene(obj("red", "circle", "large", "right"), background="black")
    assert metrics.adherence(prompt, read)
    assert metrics.attribute_matches(prompt, read) == {"count": True, "colour": True, "shape": True}


def test_attribute_matches_by_hand():
    prompt = scene(obj("red", "circle", "small", "left"), obj("red", "square", "large", "right"))
    read = scene(obj("red", "circle", "small", "left"), obj("green", "square", "small", "right"),
                 obj("red", "triangle", "small", "top"))
    assert metrics.attribute_matches(prompt, read) == {
        "count": False, "colour": False, "shape": False, "size": False, "position": False, "background": True}
    read_two = scene(obj("red", "circle", "large", "left"), obj("red", "square", "small", "right"))
    assert metrics.attribute_matches(prompt, read_two) == {
        "count": True, "colour": True, "shape": True, "size": True, "position": True, "background": True}
    assert not metrics.adherence(prompt, read_two)  # the sizes are swapped between the objects


def test_prompt_statement_matches_what_the_canonical_prompt_says():
    for index in range(200):
        scene = shapes.scene_for_index(index, seed=3, split="test", max_objects=3)
        prompt, statement = shapes.canonical_prompt(scene), metrics.prompt_statement(scene)
        for truth, stated in zip(scene.objects, statement.objects):
            assert (stated.colour, stated.shape, stated.size) == (truth.colour, truth.shape, truth.size)
            phrase_in_prompt = shapes.POSITION_PHRASES[truth.position] in prompt
            assert (stated.position == truth.position) == phrase_in_prompt, prompt
            assert stated.position in (truth.position, None)
        assert statement.background == scene.background and scene.background in prompt


def test_simple_statement_checks_only_count_colour_and_shape():
    scene = shapes.scene_for_index(0, split="heldout", max_objects=1, simple=True)
    statement = metrics.prompt_statement(scene)
    (obj,) = scene.objects
    # the same colour and shape, but smaller, elsewhere and on another background: adherent
    moved = shapes.Scene((dataclasses.replace(obj, size="small", position="left"),),
                         next(b for b in shapes.BACKGROUNDS if b != scene.background))
    read = read_scene(shapes.render_scene(moved, 32))
    assert metrics.attribute_matches(statement, read) == {"count": True, "colour": True, "shape": True}
    assert metrics.adherence(statement, read)
    other_colour = next(c for c in shapes.COLOURS if c != obj.colour)
    recoloured = shapes.Scene((dataclasses.replace(obj, colour=other_colour),), scene.background)
    assert not metrics.adherence(statement, read_scene(shapes.render_scene(recoloured, 32)))
    two = shapes.Scene((dataclasses.replace(obj, size="small", position="left"),
                        dataclasses.replace(obj, size="small", position="right")), scene.background)
    assert not metrics.adherence(statement, read_scene(shapes.render_scene(two, 32)))  # count is checked


def test_readback_scores_renders_against_their_scenes():
    scenes = [shapes.scene_for_index(i, seed=1, split="test", max_objects=1) for i in range(12)]
    images = [shapes.render_scene(s, 32) for s in scenes]
    perfect = metrics.readback(images, scenes)
    assert perfect["adherence"] == {"rate": 1.0, "correct": 12, "total": 12}
    assert all(v["rate"] == 1.0 for v in perfect["attributes"].values())
    # give three images a scene with another background: exactly those three fail, on background only
    wrong_bg = {"white": "black", "grey": "white", "black": "grey"}
    altered = [shapes.Scene(s.objects, wrong_bg[s.background]) if i < 3 else s for i, s in enumerate(scenes)]
    result = metrics.readback([shapes.render_scene(s, 32) for s in altered], scenes)
    assert result["adherence"] == {"rate": 0.75, "correct": 9, "total": 12}
    assert result["attributes"]["background"]["correct"] == 9
    assert all(result["attributes"][name]["rate"] == 1.0 for name in ("colour", "shape", "size", "position"))


# --- diversity ---

def test_diversity_is_mean_pairwise_rms_distance():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, size=(6, 5, 3), dtype=np.uint8) for _ in range(4)]
    expected = []
    for a, b in itertools.combinations(images, 2):
        diff = a.astype(float) / 255 - b.astype(float) / 255
        expected.append(math.sqrt((diff ** 2).sum() / diff.size))
    assert metrics.diversity(images) == pytest.approx(sum(expected) / len(expected))
    pil = [Image.fromarray(a) for a in images]
    assert metrics.diversity(pil) == pytest.approx(sum(expected) / len(expected))


def test_diversity_extremes_and_errors():
    black, white = np.zeros((4, 4, 3), np.uint8), np.full((4, 4, 3), 255, np.uint8)
    assert metrics.diversity([black, black, black]) == 0.0
    assert metrics.diversity([black, white]) == pytest.approx(1.0)
    assert metrics.diversity([black, white, white]) == pytest.approx(2 / 3)  # pairs: 1, 1, 0
    with pytest.raises(ValueError):
        metrics.diversity([black])


# --- aggregation ---

def test_summarise_sweep_by_hand():
    rec = metrics.SampleRecord
    records = [
        rec(0, "seen", "p1", 0, True, {"count": True, "colour": True}, "grey"),
        rec(0, "seen", "p1", 1, False, {"count": True, "colour": False}, "grey"),
        rec(0, "seen", "p4", 0, True, {"count": True, "colour": True}, "white"),
        rec(0, "held_out", "p2", 0, False, {"count": False, "colour": True}),
        rec(2, "seen", "p1", 0, True, {"count": True, "colour": True}, "grey"),
    ]
    div = metrics.PromptDiversity
    diversities = [div(0, "seen", "p1", 0.2), div(0, "seen", "p3", 0.4), div(0, "held_out", "p2", 0.6)]
    w0, w2 = metrics.summarise_sweep(records, diversities, weights=[0, 2])
    assert (w0["w"], w0["guidance_scale"], w2["guidance_scale"]) == (0, 1, 3)
    assert w0["adherence"]["seen"] == {"rate": 2 / 3, "correct": 2, "total": 3}
    assert w0["adherence"]["held_out"] == {"rate": 0.0, "correct": 0, "total": 1}
    assert w0["attribute_accuracy"]["seen"]["colour"] == {"rate": 2 / 3, "correct": 2, "total": 3}
    assert w0["adherence_by_background"]["seen"] == {"grey": {"rate": 0.5, "correct": 1, "total": 2},
                                                     "white": {"rate": 1.0, "correct": 1, "total": 1}}
    assert w0["adherence_by_background"]["held_out"] == {}  # its record names no background
    assert w0["attribute_accuracy"]["seen"]["shape"] == {"rate": None, "correct": 0, "total": 0}
    assert w0["diversity"] == {"seen": pytest.approx(0.3), "held_out": pytest.approx(0.6),
                               "all": pytest.approx(0.4)}
    assert w2["adherence"]["held_out"]["rate"] is None and w2["diversity"]["all"] is None


# --- plot ---

def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _rgb(hex_colour):
    return tuple(int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))


def test_plot_writes_png_with_points_where_the_values_say(tmp_path):
    weights = [0, 1, 2, 4, 8]
    seen, held_out = [0.2, 0.5, 0.7, 0.9, 1.0], [0.0, 0.3, 0.55, 0.8, None]
    div = [0.18, 0.15, 0.1, 0.06, 0.05]  # axis top: nice_ceiling(0.18) = 0.2
    path = plot.plot_guidance_sweep(tmp_path / "sub" / "p.png", weights=weights, adherence_seen=seen,
                                    adherence_held_out=held_out, diversity=div, size=(800, 360))
    assert _png_size(path) == (800, 360)
    saved = np.asarray(Image.open(path).convert("RGB"))
    # The same figure, drawn again: its axes map data to pixels; every point's marker is in the saved PNG there.
    fig = plot.guidance_sweep_figure(weights=weights, adherence_seen=seen, adherence_held_out=held_out,
                                     diversity=div, size=(800, 360))
    fig.canvas.draw()
    left, right = fig.axes
    assert right.get_ylim()[1] == pytest.approx(0.2 * 1.03)
    height = saved.shape[0]
    series = [(left, seen, "seen"), (left, held_out, "held_out"), (right, div, "diversity")]
    for ax, values, key in series:
        for w, v in zip(weights, values):
            if v is None:
                continue
            px, py = ax.transData.transform((w, v))
            row, col = height - round(py), round(px)  # matplotlib's y grows upwards
            assert tuple(saved[row, col]) == _rgb(plot.SERIES_COLOURS[key]), (key, w, v)
    # and nothing of the held-out colour where its missing w = 8 point would be
    px, py = left.transData.transform((8, 0.5))
    patch = saved[height - round(py) - 3:height - round(py) + 4, round(px) - 3:round(px) + 4].reshape(-1, 3)
    assert not (patch == _rgb(plot.SERIES_COLOURS["held_out"])).all(axis=1).any()
    assert [t.get_text() for t in left.get_legend().get_texts()] == ["seen", "held-out"]


def test_nice_ceiling_and_bad_input(tmp_path):
    assert [plot.nice_ceiling(v) for v in (0.18, 0.2, 0.03, 0.26, 7.0, 0.0)] == \
        pytest.approx([0.2, 0.2, 0.05, 0.5, 10.0, 1.0])
    with pytest.raises(ValueError):
        plot.plot_guidance_sweep(tmp_path / "p.png", weights=[0, 1], adherence_seen=[0.1],
                                 adherence_held_out=[0.1, 0.2], diversity=[0.1, 0.2])
