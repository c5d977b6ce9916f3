"""Prompt adherence and sample diversity for the shapes evaluation, and their aggregation per guidance weight.

A *scene* here is anything with `.background` (a name or None) and `.objects` (a sequence of objects
with `.colour`, `.shape`, `.size`, `.position`, each a name or None). `None` means "not stated" in a prompt
scene and is never checked. Both `ldm.data.shapes` scenes and `ldm.eval.attributes.ReadScene` fit.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from collections import Counter
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ldm.data.shapes import Scene
from ldm.eval.attributes import read_scene
from ldm.guidance import guidance_scale_from_weight

OBJECT_ATTRIBUTES = ("colour", "shape", "size", "position")
ATTRIBUTES = ("count",) + OBJECT_ATTRIBUTES + ("background",)
SPLITS = ("seen", "held_out")


def prompt_statement(scene: Scene) -> Scene:
    """What `ldm.data.shapes.canonical_prompt(scene)` states: everything, except that a repeat ("two blue
    squares ...") names no positions and a simple scene ("a red circle") names neither size, position nor
    background, so those become None (unchecked)."""
    if scene.simple:
        objects = tuple(dataclasses.replace(obj, size=None, position=None) for obj in scene.objects)
        return dataclasses.replace(scene, objects=objects, background=None)
    if not scene.is_repeat:
        return scene
    objects = tuple(dataclasses.replace(obj, position=None) for obj in scene.objects)
    return Scene(objects=objects, background=scene.background)


def attribute_matches(prompt_scene, read_scene) -> dict[str, bool]:
    """Per-attribute correctness of `read_scene` against what `prompt_scene` states.

    `count` compares the number of objects; an object attribute is right when the multiset of its stated
    values equals the multiset read back (so order does not matter); `background` compares names.
    Attributes the prompt leaves unstated (None everywhere) are absent from the result.
    """
    matches = {"count": len(prompt_scene.objects) == len(read_scene.objects)}
    for name in OBJECT_ATTRIBUTES:
        stated = [getattr(obj, name) for obj in prompt_scene.objects if getattr(obj, name) is not None]
        if not stated:
            continue
        read = Counter(getattr(obj, name) for obj in read_scene.objects)
        if len(stated) == len(prompt_scene.objects):
            matches[name] = Counter(stated) == read
        else:  # only some objects state it: those values must all be among the read ones
            matches[name] = not (Counter(stated) - read)
    if prompt_scene.background is not None:
        matches["background"] = prompt_scene.background == read_scene.background
    return matches


def _object_fits(prompt_obj, read_obj) -> bool:
    return all(getattr(prompt_obj, name) in (None, getattr(read_obj, name)) for name in OBJECT_ATTRIBUTES)


def adherence(prompt_scene, read_scene) -> bool:
    """True when every attribute the prompt states is right: same object count, a one-to-one pairing of prompt
    objects with read objects in which every stated attribute agrees, and the stated background."""
    if len(prompt_scene.objects) != len(read_scene.objects):
        return False
    if prompt_scene.background is not None and prompt_scene.background != read_scene.background:
        return False
    # scenes hold a handful of objects, so trying every pairing is cheap and exact
    return any(
        all(_object_fits(p, r) for p, r in zip(prompt_scene.objects, order))
        for order in itertools.permutations(read_scene.objects)
    )


def _as_float_array(image) -> np.ndarray:
    """PIL image or uint8 / float array (H, W, C) → float64 array (H, W, 3) in [0, 1]."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
    array = np.asarray(image)
    return array.astype(np.float64) / 255.0 if array.dtype == np.uint8 else array.astype(np.float64)


def diversity(images) -> float:
    """Mean pairwise RMS pixel distance between images of one prompt, in [0, 1].

    images: ≥ 2 same-sized PIL images or arrays (H, W, 3) (uint8 in [0, 255] or float in [0, 1]). For each
    pair the distance is ‖a − b‖₂ / √(H·W·3), i.e. the L2 distance normalised so it does not grow with
    resolution; 0 means identical images, 1 means black versus white everywhere.
    """
    arrays = [_as_float_array(image) for image in images]
    if len(arrays) < 2:
        raise ValueError(f"diversity needs at least 2 images of a prompt, got {len(arrays)}.")
    if len({a.shape for a in arrays}) != 1:
        raise ValueError("diversity needs images of one size.")
    distances = [math.sqrt(np.mean((a - b) ** 2)) for a, b in itertools.combinations(arrays, 2)]
    return float(np.mean(distances))


@dataclass
class SampleRecord:
    """One generated image, read back: its guidance weight, prompt split and what was right."""
    w: float
    split: str  # "seen" or "held_out"
    prompt: str
    seed: int
    adherent: bool
    attributes: dict  # attribute name → bool, as attribute_matches returns
    background: str | None = None  # the background the prompt states, for the per-background breakdown


@dataclass
class PromptDiversity:
    """Diversity of all the seeds of one prompt at one guidance weight."""
    w: float
    split: str
    prompt: str
    diversity: float


def _rate(flags: list[bool]) -> dict:
    correct = int(sum(flags))
    return {"rate": correct / len(flags) if flags else None, "correct": correct, "total": len(flags)}


def summarise_sweep(records: list[SampleRecord], diversities: list[PromptDiversity], *,
                    weights) -> list[dict]:
    """Aggregate per guidance weight w (one dict per w, in `weights` order).

    Each dict: `w`, `guidance_scale` (= w + 1), `adherence[split]` = {rate, correct, total},
    `attribute_accuracy[split][attribute]` = {rate, correct, total}, `adherence_by_background[split]
    [background]` = {rate, correct, total} over the records that name one, and `diversity[split]` /
    `diversity["all"]` = mean over prompts (None where no prompt had ≥ 2 images). Rates are None for an
    empty split.
    """
    summary = []
    for w in weights:
        at_w = [r for r in records if r.w == w]
        entry = {"w": w, "guidance_scale": guidance_scale_from_weight(w), "adherence": {},
                 "attribute_accuracy": {}, "adherence_by_background": {}, "diversity": {}}
        for split in SPLITS:
            in_split = [r for r in at_w if r.split == split]
            entry["adherence"][split] = _rate([r.adherent for r in in_split])
            entry["attribute_accuracy"][split] = {
                name: _rate([r.attributes[name] for r in in_split if name in r.attributes])
                for name in ATTRIBUTES
            }
            backgrounds = sorted({r.background for r in in_split if r.background is not None})
            entry["adherence_by_background"][split] = {
                background: _rate([r.adherent for r in in_split if r.background == background])
                for background in backgrounds
            }
        for split in SPLITS + ("all",):
            values = [d.diversity for d in diversities if d.w == w and split in (d.split, "all")]
            entry["diversity"][split] = float(np.mean(values)) if values else None
        summary.append(entry)
    return summary


def readback(images, scenes) -> dict:
    """How much of each ground-truth `scene` the reader finds in its `image` (e.g. a VAE reconstruction).

    Returns {"adherence": {rate, correct, total}, "attributes": {name: {rate, correct, total}}}, scored as a
    prompt naming every attribute of the scene would be. For VAE reconstructions this is the ceiling that
    stage 1 puts on stage 2's adherence: a latent the decoder cannot render readably cannot be sampled.
    """
    readings = [read_scene(image) for image in images]
    statements = [prompt_statement(scene) for scene in scenes]
    matches = [attribute_matches(s, r) for s, r in zip(statements, readings)]
    return {"adherence": _rate([adherence(s, r) for s, r in zip(statements, readings)]),
            "attributes": {name: _rate([m[name] for m in matches if name in m]) for name in ATTRIBUTES}}
