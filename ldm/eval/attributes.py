"""The shapes attribute reader: background, objects (colour, shape, size, position) and count read back from
an image with classic vision (no learned weights), against the spec in `ldm.data.shapes`.

Steps: background = median border colour; per pixel, the palette colour whose background→colour line fits it
best and the coverage `alpha` ∈ [0, 1] along that line (anti-aliased edges and blur give fractional alpha);
objects = 4-connected components of confident pixels (alpha ≥ CORE_ALPHA) of one colour, grown into the
fractional pixels around them; then colour = nearest palette entry of the median core colour, size from the
soft extent (every shape spans its whole box), position = nearest slot to the box centre, and shape = the
nearest (L2 on alpha) of the `render_scene` templates of each shape at that slot and size, allowing a little
blur and a 1 px shift.
"""
from __future__ import annotations

import functools
import itertools

import numpy as np
from PIL import Image, ImageFilter

from ldm.data.shapes import (ALL_COLOURS, ALL_SHAPES, BACKGROUNDS, POSITIONS, SIZES, Scene, ShapeObject,
                             object_box, render_scene)

# The reader names every colour and shape the renderer can draw, the opt-in novel ones (pink, diamond) too.
COLOURS, SHAPES = ALL_COLOURS, ALL_SHAPES
PALETTE_NAMES = tuple(COLOURS)
PALETTE = np.array([COLOURS[name] for name in PALETTE_NAMES], dtype=np.float64)  # (K, 3)
# Same-coloured neighbours at 32 px touch through edge pixels of alpha 0.75; a higher bar keeps them apart.
CORE_ALPHA = 0.85
FRINGE_ALPHA = 0.1  # below this a pixel counts as background (noise tolerance)
FRINGE_STEPS = 2  # rings of fractional pixels an object may own: anti-aliasing needs 1, blurred samples more
# Ignore specks: a component must cover ≥ 30% of the smallest object (a small triangle, half its box).
MIN_AREA = 0.3 * 0.5 * min(SIZES.values()) ** 2  # fraction of the image area
TEMPLATE_COLOUR, TEMPLATE_BACKGROUND = "red", "black"  # any pair works: templates are converted to alpha
TEMPLATE_BLURS = (0.0, 0.5, 1.0)  # Gaussian radii (pixels) tried for each shape template


def _as_array(image) -> np.ndarray:
    """PIL image or (H, W, 3) array (uint8 in [0, 255] or float in [0, 1]) → float64 (H, W, 3) in [0, 255]."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float64)
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"read_scene needs an RGB image (H, W, 3), got an array of shape {array.shape}.")
    return array.astype(np.float64) if array.dtype == np.uint8 else array.astype(np.float64) * 255.0


def _nearest(colour: np.ndarray, table: dict) -> str:
    return min(table, key=lambda name: float(np.sum((np.asarray(table[name]) - colour) ** 2)))


def _coverage(pixels: np.ndarray, background: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel: index of the palette colour whose background→colour segment fits best, and alpha along it.

    pixels: (H, W, 3) in [0, 255]. Returns (classes (H, W) int, alpha (H, W) in [0, 1]).
    """
    offsets = pixels - background  # (H, W, 3)
    directions = PALETTE - background  # (K, 3)
    t = np.einsum("hwc,kc->hwk", offsets, directions) / np.sum(directions ** 2, axis=1)
    t = np.clip(t, 0.0, 1.0)
    residual = np.linalg.norm(offsets[:, :, None, :] - t[..., None] * directions, axis=-1)  # (H, W, K)
    classes = np.argmin(residual, axis=-1)
    alpha = np.take_along_axis(t, classes[..., None], axis=-1)[..., 0]
    return classes, alpha


def _label_components(mask: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """4-connected components of `mask` whose pixels share a class: labels (H, W) numbered 0..n-1, -1 outside.

    Min-label propagation with pointer jumping: every pixel takes the smallest label among itself and its
    linked neighbours, then the label of the pixel its label names, until nothing changes.
    """
    height, width = mask.shape
    big = height * width
    links_x = mask[:, :-1] & mask[:, 1:] & (classes[:, :-1] == classes[:, 1:])  # pixel ↔ right neighbour
    links_y = mask[:-1, :] & mask[1:, :] & (classes[:-1, :] == classes[1:, :])  # pixel ↔ lower neighbour
    labels = np.where(mask, np.arange(big).reshape(height, width), big)
    while True:
        updated = labels.copy()
        updated[:, :-1] = np.where(links_x, np.minimum(updated[:, :-1], labels[:, 1:]), updated[:, :-1])
        updated[:, 1:] = np.where(links_x, np.minimum(updated[:, 1:], labels[:, :-1]), updated[:, 1:])
        updated[:-1, :] = np.where(links_y, np.minimum(updated[:-1, :], labels[1:, :]), updated[:-1, :])
        updated[1:, :] = np.where(links_y, np.minimum(updated[1:, :], labels[:-1, :]), updated[1:, :])
        flat = np.append(updated.ravel(), big)
        updated = np.where(mask, flat[updated], big)  # jump: adopt the label of the pixel my label names
        if np.array_equal(updated, labels):
            break
        labels = updated
    _, dense = np.unique(labels, return_inverse=True)  # `big` (outside) sorts last, so objects get 0..n-1
    return np.where(mask, dense.reshape(height, width), -1)


def _attach_fringe(labels: np.ndarray, alpha: np.ndarray, steps: int = FRINGE_STEPS) -> np.ndarray:
    """Grow labels into fringe pixels (FRINGE_ALPHA < alpha < CORE_ALPHA), one 8-neighbour ring per step."""
    height, width = labels.shape
    fringe = (labels < 0) & (alpha > FRINGE_ALPHA)
    widened = labels.copy()
    for _ in range(steps):
        padded = np.pad(widened, 1, constant_values=-1)
        grown = widened.copy()
        for dy, dx in itertools.product((-1, 0, 1), repeat=2):
            neighbour = padded[1 + dy:1 + dy + height, 1 + dx:1 + dx + width]
            take = fringe & (grown < 0) & (neighbour >= 0)
            grown[take] = neighbour[take]
        widened = grown
    return widened


def _measure_box(weights: np.ndarray) -> tuple[float, float, float]:
    """weights: (h, w) alpha of one object inside its bounding box → (side, centre_x, centre_y) in pixels from
    the box's top-left corner. Soft extents (sum of the per-column / per-row maximum alpha) are exact for
    axis-aligned edges at any sub-pixel offset, and every shape spans its whole box in both directions."""
    columns, rows = weights.max(axis=0), weights.max(axis=1)
    soft_w, soft_h = columns.sum(), rows.sum()
    centre_x = float(np.sum(columns * (np.arange(len(columns)) + 0.5)) / soft_w)
    centre_y = float(np.sum(rows * (np.arange(len(rows)) + 0.5)) / soft_h)
    return float(max(soft_w, soft_h)), centre_x, centre_y


@functools.lru_cache(maxsize=1024)
def _template(shape: str, size: str, position: str, resolution: int, blur: float) -> np.ndarray:
    """Alpha (H + 2, W + 2) in [0, 1] of one object as `render_scene` draws it, optionally Gaussian-blurred
    (radius in pixels), with a one-pixel zero border."""
    probe = Scene(objects=(ShapeObject(shape, TEMPLATE_COLOUR, size, position),),
                  background=TEMPLATE_BACKGROUND)
    image = render_scene(probe, resolution)
    if blur > 0:
        image = image.filter(ImageFilter.GaussianBlur(blur))
    background = np.asarray(BACKGROUNDS[TEMPLATE_BACKGROUND], dtype=np.float64)
    direction = np.asarray(COLOURS[TEMPLATE_COLOUR], dtype=np.float64) - background
    offsets = np.asarray(image, dtype=np.float64) - background
    # zero-padded by one pixel so that every 1 px shift of the template is a slice of it
    return np.pad(np.clip(offsets @ direction / (direction @ direction), 0.0, 1.0), 1)


def _match_shape(observed: np.ndarray, size: str, position: str) -> str:
    """The shape whose rendered template (at this slot, blurred 0–1 px, shifted ≤ 1 px) is nearest in L2 to
    `observed` (H, W) alpha of this object alone; blur and shift absorb what a generator does to edges."""
    resolution = observed.shape[0]
    x0, y0, x1, y1 = object_box(ShapeObject(SHAPES[0], TEMPLATE_COLOUR, size, position), resolution)
    pad = 3  # window: the slot's box plus a margin for blur and shift
    rows = slice(max(int(y0) - pad, 0), min(int(np.ceil(y1)) + pad, resolution))
    cols = slice(max(int(x0) - pad, 0), min(int(np.ceil(x1)) + pad, resolution))
    window = observed[rows, cols]
    height, width = window.shape
    best, best_distance = SHAPES[0], np.inf
    for shape in SHAPES:
        for blur in TEMPLATE_BLURS:
            template = _template(shape, size, position, resolution, blur)
            for dy, dx in itertools.product((0, 1, 2), repeat=2):
                top, left = rows.start + dy, cols.start + dx
                shifted = template[top:top + height, left:left + width]
                distance = float(np.sum((window - shifted) ** 2))
                if distance < best_distance:
                    best, best_distance = shape, distance
    return best


def _read_object(pixels, alpha, core, region) -> ShapeObject:
    resolution = pixels.shape[0]
    ys, xs = np.nonzero(region)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    observed = np.where(region, alpha, 0.0)
    side, centre_x, centre_y = _measure_box(observed[y0:y1, x0:x1])
    solid = core & (alpha >= np.percentile(alpha[core], 50))  # the most confident half, away from edges
    colour = _nearest(np.median(pixels[solid], axis=0), COLOURS)
    # nearest box side on a log scale: the boundary between two sizes is their geometric mean
    size = min(SIZES, key=lambda name: abs(np.log(side / resolution / SIZES[name])))
    centre = np.array([(x0 + centre_x) / resolution, (y0 + centre_y) / resolution])
    position = min(POSITIONS, key=lambda name: float(np.sum((np.asarray(POSITIONS[name]) - centre) ** 2)))
    shape = _match_shape(observed, size, position)
    return ShapeObject(shape=shape, colour=colour, size=size, position=position)


def read_scene(image) -> Scene:
    """Read a shapes image back into a `Scene` (objects sorted by position name; count = len(objects)).

    image: PIL image or (H, W, 3) array (uint8 in [0, 255] or float in [0, 1]); square, any resolution ≥ 8.
    Components smaller than MIN_AREA of the image are ignored as specks.
    """
    pixels = _as_array(image)
    height, width, _ = pixels.shape
    if height != width or height < 8:
        raise ValueError(f"read_scene needs a square image of at least 8 px, got {width}x{height}.")
    border = np.concatenate([pixels[0], pixels[-1], pixels[1:-1, 0], pixels[1:-1, -1]])
    background = np.median(border, axis=0)
    classes, alpha = _coverage(pixels, background)
    core = alpha >= CORE_ALPHA
    labels = _attach_fringe(_label_components(core, classes), alpha)
    objects = []
    for label in range(labels.max() + 1):
        region = labels == label
        if alpha[region].sum() < MIN_AREA * height * width:
            continue
        objects.append(_read_object(pixels, alpha, core & region, region))
    objects.sort(key=lambda o: (o.position, o.colour, o.shape))
    return Scene(objects=tuple(objects), background=_nearest(background, BACKGROUNDS))
