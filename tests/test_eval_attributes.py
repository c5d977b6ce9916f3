"""ldm/eval/attributes.py (reading scene attributes back from pixels) against ground-truth renders from ldm.data.shapes (the reference: the scene itself)."""
import collections
from collections import deque

import numpy as np
import pytest
from PIL import Image, ImageFilter

from ldm.data import shapes
from ldm.eval import attributes as reader
from ldm.eval.metrics import ATTRIBUTES, attribute_matches

TARGET = 0.98  # the bar: ≥ 98% correct per attribute on ground-truth renders


def accuracy(split, resolution, count, *, seed=11, noise=0.0, blur=0.0, novel=""):
    """Per attribute (count, colour, ..., background): the fraction of scenes read back right."""
    rng = np.random.default_rng(seed)
    right, total = collections.Counter(), collections.Counter()
    for index in range(count):
        scene = shapes.scene_for_index(index, seed=seed, split=split, max_objects=3, novel=novel)
        image = shapes.render_scene(scene, resolution)
        if blur:
            image = image.filter(ImageFilter.GaussianBlur(blur))
        pixels = np.asarray(image, dtype=np.float64)
        if noise:
            pixels = pixels + rng.normal(0.0, noise, pixels.shape)
        read = reader.read_scene(np.clip(pixels, 0, 255).astype(np.uint8))
        for name, ok in attribute_matches(scene, read).items():
            right[name] += ok
            total[name] += 1
    return {name: right[name] / total[name] for name in total}


@pytest.mark.parametrize("split", ["train", "test", "heldout"])
def test_reads_ground_truth_at_32px(split):
    scores = accuracy(split, 32, 300)
    assert set(scores) == set(ATTRIBUTES)
    assert min(scores.values()) >= TARGET, scores


@pytest.mark.parametrize("novel", ["colour", "shape", "both"])
@pytest.mark.parametrize("split", ["train", "heldout"])
def test_reads_the_novel_colour_and_shape_at_32px(novel, split):
    """The opt-in pink and diamond (ldm.data.shapes.NOVEL_*) read back like the rest of the palette."""
    scores = accuracy(split, 32, 60, seed=13, novel=novel)
    assert min(scores.values()) >= TARGET, scores


@pytest.mark.parametrize("split", ["train", "test", "heldout"])
def test_reads_ground_truth_at_64px(split):
    scores = accuracy(split, 64, 100, seed=12)
    assert min(scores.values()) >= TARGET, scores


@pytest.mark.slow
@pytest.mark.parametrize("split", ["train", "test", "heldout"])
def test_reads_300_scenes_at_64px(split):
    scores = accuracy(split, 64, 300, seed=13)
    assert min(scores.values()) >= TARGET, scores


def test_tolerates_blur_and_noise():
    """Generated 32 px images are soft and noisy: a 0.6 px Gaussian blur plus noise of 8 RGB levels."""
    scores = accuracy("test", 32, 150, seed=14, noise=8.0, blur=0.6)
    assert min(scores.values()) >= 0.95, scores


def test_blank_image_and_specks_read_as_no_objects():
    blank = shapes.render_scene(shapes.Scene(objects=(), background="grey"), 32)
    assert reader.read_scene(blank) == shapes.Scene(objects=(), background="grey")
    speckled = np.asarray(blank).copy()
    speckled[5, 5] = shapes.COLOURS["red"]  # one pixel: far below the smallest object
    assert reader.read_scene(speckled).objects == ()


def test_float_arrays_read_like_uint8():
    scene = shapes.scene_for_index(3, seed=1, split="heldout", max_objects=3)
    image = shapes.render_scene(scene, 32)
    as_float = np.asarray(image, dtype=np.float32) / 255.0
    assert reader.read_scene(as_float) == reader.read_scene(image) == reader.read_scene(np.asarray(image))


def test_bad_images_raise_one_line_errors():
    with pytest.raises(ValueError, match="square"):
        reader.read_scene(Image.new("RGB", (32, 16)))
    with pytest.raises(ValueError, match="RGB"):
        reader.read_scene(np.zeros((32, 32)))


def _bfs_components(mask, classes):
    """Reference labelling: breadth-first search over 4-neighbours of the same class."""
    height, width = mask.shape
    labels = -np.ones(mask.shape, dtype=int)
    count = 0
    for y in range(height):
        for x in range(width):
            if not mask[y, x] or labels[y, x] >= 0:
                continue
            labels[y, x] = count
            queue = deque([(y, x)])
            while queue:
                cy, cx = queue.popleft()
                for ny, nx in ((cy + 1, cx), (cy - 1, cx), (cy, cx + 1), (cy, cx - 1)):
                    if 0 <= ny < height and 0 <= nx < width and mask[ny, nx] and labels[ny, nx] < 0 \
                            and classes[ny, nx] == classes[cy, cx]:
                        labels[ny, nx] = count
                        queue.append((ny, nx))
            count += 1
    return labels


@pytest.mark.parametrize("seed", range(5))
def test_component_labels_match_breadth_first_search(seed):
    rng = np.random.default_rng(seed)
    mask = rng.random((17, 23)) < 0.55
    classes = rng.integers(0, 2, size=mask.shape)
    ours, reference = reader._label_components(mask, classes), _bfs_components(mask, classes)
    assert ours.max() == reference.max()
    # same partition: a one-to-one map between the two labellings
    pairs = set(zip(ours[mask].tolist(), reference[mask].tolist()))
    assert len(pairs) == reference.max() + 1 == len({a for a, _ in pairs})
    assert (ours[~mask] == -1).all()
