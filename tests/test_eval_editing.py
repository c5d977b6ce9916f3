"""ldm/eval/editing.py: edit targets, box masks, region PSNR and the seam step against direct computations."""

import numpy as np
import pytest

from ldm.data.shapes import HELD_OUT, Scene, ShapeObject, object_box
from ldm.eval.editing import box_mask, edit_target, kept_layout, masked_psnr, seam_step

SCENE = Scene(objects=(ShapeObject("square", "red", "small", "left"),), background="grey")


def test_edit_targets_change_one_attribute_and_avoid_held_out_pairs():
    for kind, attribute in (("colour", "colour"), ("shape", "shape")):
        targets = {edit_target(SCENE, kind, i) for i in range(12)}
        for target in targets:
            old, new = SCENE.objects[0], target.objects[0]
            assert getattr(new, attribute) != getattr(old, attribute)
            assert (new.colour, new.shape) not in HELD_OUT and target.background == SCENE.background
            assert (new.size, new.position) == (old.size, old.position)
        assert len(targets) > 1
    with pytest.raises(ValueError, match="colour' or 'shape"):
        edit_target(SCENE, "size", 0)


def test_box_mask_covers_the_box_plus_margin_on_the_grid():
    mask = box_mask(SCENE.objects[0], 32, margin=2, grid=4)
    x0, y0, x1, y1 = object_box(SCENE.objects[0], 32)  # 4.48..11.52, 12.48..19.52
    rows, cols = np.nonzero(mask)
    assert (cols.min(), cols.max() + 1, rows.min(), rows.max() + 1) == (0, 16, 8, 24)
    assert cols.min() <= x0 - 2 and cols.max() + 1 >= x1 + 2 and mask.sum() == 16 * 16


def test_masked_psnr_and_seam_step_match_hand_values():
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    other = image.copy()
    other[:4] = 10
    region = np.zeros((8, 8), dtype=bool)
    region[4:] = True
    assert masked_psnr(other, image, region) == float("inf")
    assert masked_psnr(other, image, ~region) == pytest.approx(10 * np.log10(255 ** 2 / 100))
    # mask = lower half; the only crossing pairs are rows 3|4, 8 of them, each a step of 10 in 3 channels
    assert seam_step(other, region) == pytest.approx(np.sqrt(3 * 100))
    assert seam_step(image, region) == 0.0


def test_kept_layout_checks_position_size_and_background():
    moved = Scene(objects=(ShapeObject("circle", "blue", "small", "right"),), background="grey")
    same_place = Scene(objects=(ShapeObject("circle", "blue", "small", "left"),), background="grey")
    assert kept_layout(SCENE, same_place) and not kept_layout(SCENE, moved)
    assert not kept_layout(SCENE, Scene(objects=same_place.objects * 2, background="grey"))
