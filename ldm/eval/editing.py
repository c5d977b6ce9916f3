"""Editing measures on the shapes data: edit targets, object-box masks, PSNR over a region, the seam step.

Pure numpy on images `(H, W, 3)` uint8 and masks `(H, W)` bool (True = repainted); no pipeline import.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ldm.data.shapes import COLOURS, HELD_OUT, SHAPES, Scene, ShapeObject, object_box


def edit_target(scene: Scene, kind: str, index: int) -> Scene:
    """`scene` with its first object given another colour (kind "colour") or shape ("shape"), the `index`-th
    choice (cycling) among those that keep the pair seen in training; size, position, background unchanged."""
    obj = scene.objects[0]
    if kind == "colour":
        options = [dataclasses.replace(obj, colour=c) for c in COLOURS if c != obj.colour]
    elif kind == "shape":
        options = [dataclasses.replace(obj, shape=s) for s in SHAPES if s != obj.shape]
    else:
        raise ValueError(f"edit kind must be 'colour' or 'shape', got {kind!r}.")
    options = [o for o in options if (o.colour, o.shape) not in HELD_OUT]
    return dataclasses.replace(scene, objects=(options[index % len(options)],) + scene.objects[1:])


def box_mask(obj: ShapeObject, resolution: int, *, margin: int, grid: int) -> np.ndarray:
    """`(R, R)` bool: the object's box grown by `margin` pixels, its edges snapped outwards to multiples of
    `grid` (the VAE factor: the latent blend repaints whole latent cells)."""
    x0, y0, x1, y1 = object_box(obj, resolution)
    lo = [max(0, int(np.floor((v - margin) / grid)) * grid) for v in (x0, y0)]
    hi = [min(resolution, int(np.ceil((v + margin) / grid)) * grid) for v in (x1, y1)]
    mask = np.zeros((resolution, resolution), dtype=bool)
    mask[lo[1] : hi[1], lo[0] : hi[0]] = True
    return mask


def masked_psnr(image: np.ndarray, reference: np.ndarray, region: np.ndarray) -> float:
    """PSNR in dB (peak 255) over the pixels where `region` is True; inf when they are identical there."""
    diff = image.astype(np.float64)[region] - reference.astype(np.float64)[region]
    mse = float(np.mean(diff ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def seam_step(image: np.ndarray, mask: np.ndarray) -> float:
    """RMS colour step (8-bit levels) between horizontally or vertically adjacent pixels on opposite sides
    of the mask border: the gradient energy a visible seam adds along it."""
    pixels = image.astype(np.float64)
    steps = []
    for axis in (0, 1):
        a = [slice(None)] * 2
        b = [slice(None)] * 2
        a[axis], b[axis] = slice(None, -1), slice(1, None)
        crossing = mask[tuple(a)] != mask[tuple(b)]
        steps.append((pixels[tuple(a)] - pixels[tuple(b)])[crossing])
    steps = np.concatenate(steps)
    return float(np.sqrt(np.mean(np.sum(steps ** 2, axis=-1)))) if len(steps) else 0.0


def kept_layout(init: Scene, read: Scene) -> bool:
    """True when one object is read at the init object's position and size, on the init background."""
    if len(read.objects) != 1 or read.background != init.background:
        return False
    read_obj, init_obj = read.objects[0], init.objects[0]
    return (read_obj.position, read_obj.size) == (init_obj.position, init_obj.size)
