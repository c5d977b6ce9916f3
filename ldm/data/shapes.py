"""Built-in `shapes` data: procedural scenes with ground-truth attributes and held-out colour–shape pairs.

This module is the single spec shared by the renderer and the evaluation reader (`ldm.eval`), which
imports the constants below and never copies them.

Geometry (all in fractions of the image side, so it holds at every resolution):
- an object occupies a square box of side `SIZES[size]`, centred at `POSITIONS[position]` (x right, y down);
- circle: the disc inscribed in the box; square: the whole box; triangle: apex at the top-centre of the box,
  base along its bottom edge; cross: a plus sign of two bars `CROSS_BAR` x box side thick spanning the box;
- objects in one scene never overlap (their boxes are disjoint) and sit at distinct positions.

The `simple` variant (`shapes:simple=1`) is the baseline notes' kind of data: one large object in the centre,
on any background, with captions that name only its colour and shape ("an image of a red circle").

Splits, deterministic by (seed, split, index) through `numpy.random.default_rng([seed, split_id, index])`:
- "train": never contains a `HELD_OUT` colour–shape pair;
- "test": the same distribution as train (seen pairs only), drawn from a disjoint random stream;
- "heldout": every scene contains at least one `HELD_OUT` pair (measures compositional generalisation).

`all_pairs` (`shapes:allpairs=1`) draws train and test objects from every colour–shape pair, the held-out
ones included. It is for a stage-1 VAE, which sees no captions: an autoencoder is a generic image codec
(Stable Diffusion's was trained on images far beyond its captioned data), and one trained without the held-out
pairs cannot reconstruct them (docs/experiments.md, point 1), which would cap stage 2 before it has composed anything.
Stage 2 must never use it: its held-out figures mean the text-conditioned model has not seen those pairs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw

# Six hues far apart on the colour wheel; an earlier baseline confused orange / red / yellow, so no orange.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 230),
    "yellow": (245, 215, 0),
    "purple": (140, 40, 200),
    "cyan": (0, 200, 220),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
# Box side as a fraction of the image side: small objects stay >= 7 px even at 32 px.
SIZES: dict[str, float] = {"small": 0.22, "large": 0.40}
# Object centre (x, y) as fractions of the image side.
POSITIONS: dict[str, tuple[float, float]] = {
    "left": (0.25, 0.5),
    "right": (0.75, 0.5),
    "top": (0.5, 0.25),
    "bottom": (0.5, 0.75),
    "centre": (0.5, 0.5),
}
# Neutral backgrounds: every object colour is at least ~100 RGB units (Euclidean) from each of them.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (255, 255, 255),
    "grey": (128, 128, 128),
    "black": (0, 0, 0),
}
# Colour–shape pairs the train split never shows; each colour and each shape appears at most once, so every
# held-out colour and shape is still seen in training, just never together.
HELD_OUT: frozenset[tuple[str, str]] = frozenset(
    {("red", "circle"), ("green", "square"), ("blue", "triangle"), ("yellow", "cross")}
)
# A concept the default data never draws, opt-in (`shapes:novelcolour=1`, `novelshape=1`), for teaching a trained
# model something new (LoRA): a colour ≥ 130 RGB units from every colour and background above, and a shape.
NOVEL_COLOURS: dict[str, tuple[int, int, int]] = {"pink": (255, 110, 180)}
NOVEL_SHAPES: tuple[str, ...] = ("diamond",)
NOVEL_COLOUR_SHAPES = ("circle", "square")  # train/test draw pink only on these; heldout on the other shapes
NOVEL_SHAPE_COLOURS = ("red", "green", "blue")  # train/test draw diamonds only in these; heldout in the others
NOVEL_KINDS = ("", "colour", "shape", "both", "all")
ALL_COLOURS: dict[str, tuple[int, int, int]] = {**COLOURS, **NOVEL_COLOURS}  # what the reader can name
ALL_SHAPES: tuple[str, ...] = SHAPES + NOVEL_SHAPES
SPLITS: dict[str, int] = {"train": 0, "test": 1, "heldout": 2}
DEFAULT_MAX_OBJECTS = 3  # the issue asks for one to three objects; "shapes:objects=1" gives single objects
CROSS_BAR = 1 / 3  # bar thickness of the cross, as a fraction of its box
SUPERSAMPLE = 4  # draw at 4x and downsample with a box filter for anti-aliased edges
NUMBER_WORDS = {2: "two", 3: "three"}
POSITION_PHRASES = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "centre": "in the centre",
}
SEEN_PAIRS: tuple[tuple[str, str], ...] = tuple(
    (c, s) for c in COLOURS for s in SHAPES if (c, s) not in HELD_OUT
)
ALL_PAIRS: tuple[tuple[str, str], ...] = tuple((c, s) for c in COLOURS for s in SHAPES)


@dataclass(frozen=True)
class ShapeObject:
    """One object: names are keys of SHAPES / COLOURS / SIZES / POSITIONS."""

    shape: str
    colour: str
    size: str
    position: str


@dataclass(frozen=True)
class Scene:
    """Ground truth of one image: 1–3 objects on a background (a key of BACKGROUNDS).

    `simple`: a scene of the simple variant, whose captions name only the object's colour and shape.
    """

    objects: tuple[ShapeObject, ...]
    background: str
    simple: bool = False

    @property
    def is_repeat(self) -> bool:
        """True when all objects share shape, colour and size (captioned with a count: "two blue squares")."""
        first = self.objects[0]
        return len(self.objects) > 1 and all(
            (o.shape, o.colour, o.size) == (first.shape, first.colour, first.size) for o in self.objects
        )

    def mirrored(self) -> Scene:
        """The scene flipped left↔right (all shapes are mirror-symmetric, so only positions change)."""
        swap = {"left": "right", "right": "left"}
        objects = tuple(replace(o, position=swap.get(o.position, o.position)) for o in self.objects)
        return replace(self, objects=objects)


def object_box(obj: ShapeObject, resolution: float) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) of the object's box in pixels of a `resolution`-sided image."""
    cx, cy = POSITIONS[obj.position]
    half = SIZES[obj.size] / 2
    return (
        (cx - half) * resolution,
        (cy - half) * resolution,
        (cx + half) * resolution,
        (cy + half) * resolution,
    )


def _boxes_disjoint(objects: list[ShapeObject]) -> bool:
    boxes = [object_box(o, 1.0) for o in objects]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            if a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]:
                return False
    return True


def _draw_object(draw: ImageDraw.ImageDraw, obj: ShapeObject, side: int) -> None:
    x0, y0, x1, y1 = object_box(obj, side)
    fill = ALL_COLOURS[obj.colour]
    if obj.shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif obj.shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=fill)
    elif obj.shape == "triangle":
        draw.polygon([((x0 + x1) / 2, y0), (x0, y1), (x1, y1)], fill=fill)
    elif obj.shape == "cross":
        bar = (x1 - x0) * CROSS_BAR / 2
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        draw.rectangle((cx - bar, y0, cx + bar, y1), fill=fill)
        draw.rectangle((x0, cy - bar, x1, cy + bar), fill=fill)
    elif obj.shape == "diamond":  # the box's inscribed square turned 45°: corners at its edge midpoints
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=fill)
    else:
        raise ValueError(f"Unknown shape {obj.shape!r}; expected one of {', '.join(SHAPES)}.")


def render_scene(scene: Scene, resolution: int) -> Image.Image:
    """Render `scene` as an RGB image of `resolution` x `resolution` (any size >= 8), anti-aliased."""
    if resolution < 8:
        raise ValueError(f"resolution must be at least 8 pixels, got {resolution}.")
    side = resolution * SUPERSAMPLE
    image = Image.new("RGB", (side, side), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        _draw_object(draw, obj, side)
    return image.reduce(SUPERSAMPLE)  # box-filter average of each SUPERSAMPLE x SUPERSAMPLE block


def novel_pairs(novel: str, split: str) -> tuple[tuple[str, str], ...]:
    """The colour–shape pairs a `novel` draw uses in `split`: "colour" → pink on NOVEL_COLOUR_SHAPES (train,
    test) or on the other shapes (heldout); "shape" → diamonds in NOVEL_SHAPE_COLOURS or the other colours;
    "both" → pink diamonds in every split; "all" → every colour on every shape, the novel ones too, in every split
    (the data of a stage-1 VAE that can draw anything the renderer can, as a general-purpose VAE like SD's can)."""
    if novel == "both":
        return (("pink", "diamond"),)
    if novel == "all":
        return tuple((c, s) for c in ALL_COLOURS for s in ALL_SHAPES)
    if novel == "colour":
        shapes = [s for s in SHAPES if (s in NOVEL_COLOUR_SHAPES) != (split == "heldout")]
        return tuple(("pink", s) for s in shapes)
    if novel == "shape":
        colours = [c for c in COLOURS if (c in NOVEL_SHAPE_COLOURS) != (split == "heldout")]
        return tuple((c, "diamond") for c in colours)
    raise ValueError(f"novel must be one of {', '.join(map(repr, NOVEL_KINDS))}, got {novel!r}.")


def _pair(rng: np.random.Generator, split: str, all_pairs: bool = False, novel: str = "") -> tuple[str, str]:
    if novel:
        pairs = novel_pairs(novel, split)
    elif split == "heldout":
        pairs = sorted(HELD_OUT)
    else:
        pairs = ALL_PAIRS if all_pairs else SEEN_PAIRS
    return pairs[rng.integers(len(pairs))]


def _positions(rng: np.random.Generator, n: int, size: str) -> list[str]:
    """n distinct positions whose boxes at `size` do not overlap (large ones fit only opposite pairs)."""
    names = list(POSITIONS)
    while True:
        chosen = [names[i] for i in rng.choice(len(names), size=n, replace=False)]
        if _boxes_disjoint([ShapeObject("square", "red", size, p) for p in chosen]):
            return chosen


def check_variant(*, max_objects: int, simple: bool) -> None:
    """Raise ValueError unless max_objects is 1..3, and 1 for the simple variant."""
    if not 1 <= max_objects <= 3:
        raise ValueError(f"shapes objects must be 1, 2 or 3, got {max_objects}.")
    if simple and max_objects != 1:
        raise ValueError(f"shapes simple=1 draws one object per image; objects={max_objects} does not apply.")


def sample_scene(
    rng: np.random.Generator, *, split: str = "train", max_objects: int = DEFAULT_MAX_OBJECTS,
    simple: bool = False, all_pairs: bool = False, novel: str = "", novel_share: float = 1.0,
) -> Scene:
    """Draw one scene for `split` with 1..max_objects objects (max_objects in 1..3).

    Multi-object scenes are either repeats ("two blue squares": same colour, shape and size) or distinct
    colour–shape pairs at distinct positions; in "heldout" the first object is a held-out pair and the
    others are seen pairs, in "train"/"test" all are seen pairs (any pair with `all_pairs`). `simple`
    (max_objects must be 1): one large object in the centre. `novel` ("colour", "shape", "both", "all"): the first
    object's pair comes from `novel_pairs(novel, split)` instead, in a `novel_share` of the scenes (the others
    are ordinary scenes of `split`: prior-preservation data that keeps what the model knew).
    """
    if novel and novel_share < 1.0 and rng.random() >= novel_share:  # drawn only then: streams stay as they were
        novel = ""
    if split not in SPLITS:
        raise ValueError(f"Unknown shapes split {split!r}; expected one of {', '.join(SPLITS)}.")
    check_variant(max_objects=max_objects, simple=simple)
    background = list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
    if simple:
        colour, shape = _pair(rng, split, all_pairs, novel)
        return Scene(objects=(ShapeObject(shape, colour, "large", "centre"),), background=background, simple=True)
    n = int(rng.integers(1, max_objects + 1))
    # Three large objects never fit without overlap, so three objects are always small.
    size = "small" if n == 3 else list(SIZES)[rng.integers(len(SIZES))]
    positions = _positions(rng, n, size)
    colour, shape = _pair(rng, split, all_pairs, novel)
    if n == 1 or rng.random() < 0.5:
        objects = [ShapeObject(shape, colour, size, p) for p in positions]
    else:
        pairs = [(colour, shape)]
        while len(pairs) < n:
            pair = _pair(rng, "train", all_pairs and split != "heldout")
            if pair not in pairs:
                pairs.append(pair)
        objects = [ShapeObject(s, c, size, p) for (c, s), p in zip(pairs, positions)]
    return Scene(objects=tuple(objects), background=background)


def scene_for_index(
    index: int, *, seed: int = 0, split: str = "train", max_objects: int = DEFAULT_MAX_OBJECTS,
    simple: bool = False, all_pairs: bool = False, novel: str = "", novel_share: float = 1.0,
) -> Scene:
    """The scene at `index` of a split: a pure function of (seed, split, index, max_objects, simple,
    all_pairs, novel, novel_share)."""
    rng = np.random.default_rng([seed, SPLITS[split], index])
    return sample_scene(rng, split=split, max_objects=max_objects, simple=simple, all_pairs=all_pairs,
                        novel=novel, novel_share=novel_share)


def _plural(shape: str) -> str:
    return shape + ("es" if shape.endswith("s") else "s")


def _article(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _describe(obj: ShapeObject, *, size: bool, position: bool) -> str:
    words = ([obj.size] if size else []) + [obj.colour, obj.shape]
    text = _article(" ".join(words))
    return f"{text} {POSITION_PHRASES[obj.position]}" if position else text


def _background_phrase(scene: Scene) -> str:
    return f"on {_article(scene.background)} background"


def _repeat_caption(scene: Scene, *, size: bool, background: bool) -> str:
    first = scene.objects[0]
    words = (
        [NUMBER_WORDS[len(scene.objects)]]
        + ([first.size] if size else [])
        + [first.colour, _plural(first.shape)]
    )
    text = " ".join(words)
    return f"{text} {_background_phrase(scene)}" if background else text


# Caption templates of the simple variant: colour and shape only, as in the baseline notes' data.
SIMPLE_TEMPLATES = ("{}", "an image of {}", "a picture of {}", "a drawing of {}")


def canonical_prompt(scene: Scene) -> str:
    """One deterministic caption naming every attribute its variant's captions name (the evaluation
    prompts): all of them, or colour and shape for a simple scene."""
    if scene.simple:
        return _describe(scene.objects[0], size=False, position=False)
    if scene.is_repeat:
        return _repeat_caption(scene, size=True, background=True)
    parts = [_describe(o, size=True, position=True) for o in scene.objects]
    return f"{' and '.join(parts)}, {_background_phrase(scene)}"


def caption_scene(scene: Scene, rng: np.random.Generator) -> str:
    """A caption from one of several templates; every attribute word it contains is true of the scene.

    Colour and shape are always named; size, position and background appear depending on the template
    (never for a simple scene).
    """
    if scene.simple:
        template = SIMPLE_TEMPLATES[int(rng.integers(len(SIMPLE_TEMPLATES)))]
        return template.format(canonical_prompt(scene))
    template = int(rng.integers(5))
    if template == 0:
        return canonical_prompt(scene)
    if scene.is_repeat:
        return _repeat_caption(scene, size=template in (1, 2), background=template in (2, 3))
    if template == 4 and len(scene.objects) == 1:
        return f"an image of {_describe(scene.objects[0], size=False, position=False)}"
    parts = [
        _describe(o, size=template == 1, position=template in (1, 2) or len(scene.objects) > 1)
        for o in scene.objects
    ]
    text = " and ".join(parts)
    separator = ", " if len(parts) > 1 else " "  # keeps "... on the right, on a white background" readable
    return f"{text}{separator}{_background_phrase(scene)}" if template == 3 else text
