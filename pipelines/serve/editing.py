"""Editing in `ldm-serve`: image-to-image, inpainting and outpainting requests, made as `ldm-generate` makes them.

A request's init image (and painted mask, or outpaint margins) arrive base64; `read_edit` checks them against
the server's limits (a `RequestError` naming the field, never a failed job), and `edit_inputs` turns them into
the `pipelines.edit_inputs.EditInputs` that `ldm-generate --image … [--mask-image … | --outpaint …]` builds from
files, so the pipeline arguments, the `--keep-unmasked` paste-back and the PNG metadata come from one place.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from pipelines.edit_inputs import EditInputs
from pipelines.outpaint import Margins, extend_canvas
from pipelines.pipeline_image_to_image import DEFAULT_STRENGTH
from pipelines.repaint import repaint_blocks
from pipelines.serve.checks import Limits, RequestError, check_range, decode_upload

UPLOADED = (
    "(uploaded)"  # what the PNG metadata names as the init image / mask file; their sha256s identify them
)
RESAMPLING_SAMPLERS = ("ddim", "ddpm")  # RePaint steps a block again: only stateless samplers allow it


@dataclass
class EditRequest:
    """The editing part of a request. `mode` is "img2img" without a mask, else "inpaint" (outpainting is
    inpainting of the margins, `pipelines.outpaint`)."""

    image: Image.Image  # RGB, as sent
    image_sha256: str  # of the bytes sent, as ldm-generate hashes --image
    mask: Image.Image | None = None  # "L", white = repaint, as sent
    mask_sha256: str | None = None
    outpaint: Margins | None = None  # left, top, right, bottom pixels
    strength: float = DEFAULT_STRENGTH  # of the schedule run: int(steps * strength) steps
    keep_unmasked: bool = False  # paste the original back outside the mask
    mask_blur: int = 0  # pixels of softening inside the mask's edge for the paste-back
    jump_length: int = 10  # RePaint (Lugmayr et al. 2022): steps per resampled block
    jump_n_sample: int = 1  # times each block is denoised; 1 = the plain blend

    @property
    def mode(self) -> str:
        return "img2img" if self.mask is None and self.outpaint is None else "inpaint"


def read_edit(body, *, limits: Limits, vae_factor: int, steps: int, sampler: str) -> EditRequest:
    """The checked edit of an img2img body (fields `init_images, mask, inpainting_mask_invert,
    denoising_strength, outpaint, keep_unmasked, mask_blur, repaint_jump_length, repaint_jump_n_sample, width,
    height`); every refusal is a `RequestError` naming the field, as `ldm-generate` refuses the same options.
    """
    if not body.init_images:
        raise RequestError("init_images", "init_images needs one base64 image.")
    init = decode_upload(body.init_images[0], "init_images", limits.max_size)
    edit = EditRequest(image=init.image.convert("RGB"), image_sha256=init.sha256)
    if body.mask and body.outpaint:
        raise RequestError("outpaint", "give mask or outpaint, not both (outpaint paints its own mask).")
    if body.mask:
        mask = decode_upload(body.mask, "mask", limits.max_size)
        edit.mask, edit.mask_sha256 = mask.image.convert("L"), mask.sha256
        if body.inpainting_mask_invert:
            edit.mask = edit.mask.point(lambda v: 255 - v)
    size = edit_size(edit.image, body.width, body.height, vae_factor)
    if body.outpaint:
        edit.outpaint = read_margins(body.outpaint, size, limits, vae_factor)
    painting = edit.mode == "inpaint"
    edit.strength = (
        (1.0 if painting else DEFAULT_STRENGTH)
        if body.denoising_strength is None
        else body.denoising_strength
    )
    check_range("denoising_strength", edit.strength, 0.0, 1.0)
    if int(steps * edit.strength) < 1:
        raise RequestError(
            "denoising_strength",
            f"denoising_strength {edit.strength} keeps no step of "
            f"{steps} steps (int(steps × strength) = 0); raise either.",
        )
    check_range("mask_blur", body.mask_blur, 0)
    check_range("repaint_jump_length", body.repaint_jump_length, 1)
    check_range("repaint_jump_n_sample", body.repaint_jump_n_sample, 1)
    if body.repaint_jump_n_sample > 1 and not (painting and sampler in RESAMPLING_SAMPLERS):
        raise RequestError(
            "repaint_jump_n_sample",
            "RePaint resampling (repaint_jump_n_sample > 1) needs a mask "
            "or outpaint and the DDIM or DDPM sampler.",
        )
    edit.keep_unmasked = painting and body.keep_unmasked
    edit.mask_blur = body.mask_blur if edit.keep_unmasked else 0  # it softens only the paste-back
    edit.jump_length, edit.jump_n_sample = body.repaint_jump_length, body.repaint_jump_n_sample
    return edit


def edit_size(image: Image.Image, width: int | None, height: int | None, vae_factor: int) -> tuple[int, int]:
    """(width, height) the init image is resized to: the request's (AUTOMATIC1111's "just resize"), else its own,
    which must then be multiples of the VAE factor (as `ldm-generate --image` requires)."""
    size = (width or image.width, height or image.height)
    if (width is None and size[0] % vae_factor) or (height is None and size[1] % vae_factor):
        raise RequestError(
            "init_images",
            f"init_images[0] is {image.width}×{image.height}; its sides must be "
            f"multiples of {vae_factor} (the VAE's factor), or send width and "
            "height to resize it.",
        )
    return size


def read_margins(values, size: tuple[int, int], limits: Limits, vae_factor: int) -> Margins:
    """[left, top, right, bottom] pixels: >= 0 multiples of the VAE factor, not all 0, the canvas within limits."""
    if len(values) != 4 or any(v < 0 or v % vae_factor for v in values) or not any(values):
        raise RequestError(
            "outpaint",
            f"outpaint takes [left, top, right, bottom] pixels, each >= 0 and a multiple "
            f"of {vae_factor} (the VAE's factor), not all 0; got {list(values)}.",
        )
    left, top, right, bottom = values
    canvas = (size[0] + left + right, size[1] + top + bottom)
    if max(canvas) > limits.max_size:
        raise RequestError(
            "outpaint",
            f"outpaint makes a {canvas[0]}×{canvas[1]} canvas; this server makes "
            f"images up to {limits.max_size} pixels a side (--max-size).",
        )
    return (left, top, right, bottom)


def edit_inputs(edit: EditRequest, size: tuple[int, int]) -> EditInputs:
    """What `ldm-generate` would read from files: the init image (and mask) resized to `size` = (width, height)
    when it differs, then for outpainting the canvas extended by the margins with its mask."""
    image, mask = edit.image, edit.mask
    if image.size != size:
        image = image.resize(size, Image.LANCZOS)
    if mask is not None and mask.size != size:
        mask = mask.resize(size, Image.NEAREST)
    if edit.outpaint is not None:
        image, mask = extend_canvas(image, edit.outpaint)
    return EditInputs(
        image=image,
        mask=mask,
        strength=edit.strength,
        image_sha256=edit.image_sha256,
        mask_sha256=edit.mask_sha256,
        margins=edit.outpaint,
        mask_blur=edit.mask_blur,
        keep_unmasked=edit.keep_unmasked,
        jump_length=edit.jump_length,
        jump_n_sample=edit.jump_n_sample,
    )


def unet_steps(edit: EditRequest | None, steps: int) -> int:
    """Sampler steps one image of a request takes (what its progress counts): all `steps` from noise;
    int(steps · strength) for an edit, each RePaint block run jump_n_sample times."""
    if edit is None:
        return steps
    kept = int(steps * edit.strength)
    return sum(
        len(block) for block in repaint_blocks(steps - kept, steps, edit.jump_length, edit.jump_n_sample)
    )
