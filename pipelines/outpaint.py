"""Outpainting: extend an image's canvas by margins, mask the new area white, and inpaint it.

The new area starts as the nearest edge pixels repeated outwards (not black): the VAE encodes the whole canvas,
and latent cells next to the old border then see a continuation of the background instead of a hard edge.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from pipelines.pipeline_inpaint import InpaintPipeline

Margins = tuple[int, int, int, int]  # left, top, right, bottom, in pixels


def check_margins(margins: Margins, factor: int) -> None:
    """One-sentence `ValueError` unless the four margins are >= 0 multiples of the VAE factor, not all 0."""
    if len(margins) != 4 or any(m < 0 for m in margins) or not any(margins):
        raise ValueError(f"outpaint margins must be four numbers >= 0 (left, top, right, bottom), not all 0, "
                         f"got {tuple(margins)}.")
    if any(m % factor for m in margins):
        raise ValueError(f"outpaint margins must be multiples of the VAE factor {factor}, got {tuple(margins)}.")


def extend_canvas(image: Image.Image, margins: Margins) -> tuple[Image.Image, Image.Image]:
    """(canvas, mask): `image` (RGB, W×H) padded by `margins` with its edge pixels repeated, size
    (W + left + right) × (H + top + bottom); mask mode "L", 255 on the new area, 0 on the original."""
    left, top, right, bottom = margins
    pixels = np.asarray(image.convert("RGB"))
    canvas = np.pad(pixels, ((top, bottom), (left, right), (0, 0)), mode="edge")
    mask = np.full(canvas.shape[:2], 255, dtype=np.uint8)
    mask[top : top + pixels.shape[0], left : left + pixels.shape[1]] = 0
    return Image.fromarray(canvas), Image.fromarray(mask, mode="L")


def outpaint(pipe: InpaintPipeline, prompt, image: Image.Image, margins: Margins, **kwargs):
    """Inpaint the area added by `margins` around `image`; kwargs go to `InpaintPipeline.__call__`.
    Returns its `ImagePipelineOutput`, images of the extended size."""
    check_margins(margins, pipe.vae_scale_factor)
    canvas, mask = extend_canvas(image, margins)
    return pipe(prompt, image=canvas, mask_image=mask, **kwargs)
