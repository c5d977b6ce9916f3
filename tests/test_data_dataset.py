"""ldm/data/dataset.py: source parsing and the shapes dataset behind open_dataset."""

import random

import numpy as np
import pytest
import torch

from ldm.data import open_dataset, parse_source, shapes
from ldm.data.shapes import SPLITS, canonical_prompt, render_scene
from ldm.data.transforms import to_tensor


def test_parse_source():
    assert parse_source("shapes") == ("shapes", {})
    assert parse_source("shapes:objects=1,size=6000") == ("shapes", {"objects": 1, "size": 6000})
    assert parse_source("/data/my:folder") == ("/data/my:folder", {})
    with pytest.raises(ValueError, match="allowed: allpairs=N, novelall=N, novelcolour=N, novelshape=N, novelshare=N, objects=N"):
        parse_source("shapes:colour=red")


def test_shapes_items_match_the_ground_truth():
    dataset = open_dataset("shapes:objects=2,size=50", resolution=32, seed=3)
    assert len(dataset) == 50 and dataset.skipped == {}
    for i in range(0, 50, 7):
        item = dataset[i]
        assert item["pixel_values"].shape == (3, 32, 32) and item["pixel_values"].dtype == torch.float32
        assert torch.equal(item["pixel_values"], to_tensor(render_scene(dataset.scene(i), 32)))
        colours = {o.colour for o in dataset.scene(i).objects}
        assert all(c in item["caption"] for c in colours)
    again = open_dataset("shapes:objects=2,size=50", resolution=32, seed=3)
    assert (
        torch.equal(dataset[5]["pixel_values"], again[5]["pixel_values"])
        and dataset[5]["caption"] == again[5]["caption"]
    )
    with pytest.raises(IndexError):
        dataset[50]


def test_shapes_options_and_splits():
    assert max(len(open_dataset("shapes:objects=1", resolution=32).scene(i).objects) for i in range(50)) == 1
    assert max(len(open_dataset("shapes", resolution=32).scene(i).objects) for i in range(50)) == 3
    firsts = {s: open_dataset("shapes", resolution=32, split=s).scene(0) for s in SPLITS}
    assert len({canonical_prompt(s) for s in firsts.values()}) == 3
    by_seed = [
        [open_dataset(f"shapes:seed={k}", resolution=32).scene(i) for i in range(10)] for k in (0, 0, 1)
    ]
    assert by_seed[0] == by_seed[1] != by_seed[2]
    with pytest.raises(ValueError, match="objects"):
        open_dataset("shapes:objects=4", resolution=32)
    with pytest.raises(ValueError, match="split"):
        open_dataset("shapes", resolution=32, split="validation")


def test_shapes_simple_option():
    dataset = open_dataset("shapes:simple=1,size=20", resolution=32, split="heldout")
    for i in range(20):
        scene = dataset.scene(i)
        assert scene.simple and len(scene.objects) == 1 and scene.objects[0].position == "centre"
        assert torch.equal(dataset[i]["pixel_values"], to_tensor(render_scene(scene, 32)))
        assert canonical_prompt(scene) in dataset[i]["caption"]
    assert not open_dataset("shapes:simple=0", resolution=32).scene(0).simple
    with pytest.raises(ValueError, match="simple must be 0 or 1"):
        open_dataset("shapes:simple=2", resolution=32)
    with pytest.raises(ValueError, match="objects=3 does not apply"):
        open_dataset("shapes:simple=1,objects=3", resolution=32)


def test_shapes_allpairs_option_reaches_the_scenes():
    """allpairs=1 renders and captions held-out pairs in the train split; 0 is the default; 2 is refused."""
    dataset = open_dataset("shapes:objects=1,allpairs=1,size=300", resolution=32)
    scenes = [dataset.scene(i) for i in range(len(dataset))]
    held = [i for i, s in enumerate(scenes) if (s.objects[0].colour, s.objects[0].shape) in shapes.HELD_OUT]
    assert held, "300 draws over 24 pairs include the 4 held-out ones"
    for i in held[:5]:
        assert torch.equal(dataset[i]["pixel_values"], to_tensor(render_scene(scenes[i], 32)))
        obj = scenes[i].objects[0]
        assert f"{obj.colour} {obj.shape}" in dataset[i]["caption"]
    default = open_dataset("shapes:objects=1,allpairs=0,size=300", resolution=32)
    assert not any((default.scene(i).objects[0].colour, default.scene(i).objects[0].shape) in shapes.HELD_OUT
                   for i in range(300))
    with pytest.raises(ValueError, match="allpairs must be 0 or 1"):
        open_dataset("shapes:allpairs=2", resolution=32)


def test_shapes_random_flip_keeps_captions_true():
    random.seed(0)
    plain = open_dataset("shapes:objects=1,size=200", resolution=32)
    flipping = open_dataset("shapes:objects=1,size=200", resolution=32, random_flip=True)
    flips = 0
    for i in range(200):
        a, b = plain[i], flipping[i]
        if not ("left" in a["caption"] or "right" in a["caption"]):
            continue
        if a["caption"] != b["caption"]:
            flips += 1
            assert torch.equal(b["pixel_values"], a["pixel_values"].flip(-1))
            assert ("left" in a["caption"]) == ("right" in b["caption"])
        else:
            assert torch.equal(a["pixel_values"], b["pixel_values"])
    assert flips > 5


def test_dataloader_batches_and_speed_sanity():
    dataset = open_dataset("shapes", resolution=32)
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=8)))
    assert batch["pixel_values"].shape == (8, 3, 32, 32) and len(batch["caption"]) == 8
    assert np.isfinite(batch["pixel_values"].numpy()).all()
