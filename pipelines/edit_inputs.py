"""`ldm-generate`'s editing inputs: read and check the init image and mask, build the outpainting canvas, pick
the editing pipeline, record what reproduces an edit (sha256s, strength, margins) and paste the original back.

Every user mistake is a one-sentence `ValueError` (ldm-generate prints it on one line, exit status 2).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter, UnidentifiedImageError

from pipelines.outpaint import Margins, check_margins, extend_canvas
from pipelines.pipeline_image_to_image import DEFAULT_STRENGTH, ImageToImagePipeline
from pipelines.pipeline_inpaint import InpaintPipeline


def parse_margins(text: str) -> Margins:
    """"LEFT,TOP,RIGHT,BOTTOM" in pixels → a 4-tuple of ints."""
    try:
        margins = tuple(int(part) for part in text.split(","))
    except ValueError:
        margins = ()
    if len(margins) != 4:
        raise ValueError(f"--outpaint takes LEFT,TOP,RIGHT,BOTTOM in pixels, e.g. 0,0,16,0; got {text!r}.")
    check_margins(margins, factor=1)  # the VAE factor is checked once the model is loaded
    return margins


def check_edit_options(*, image: str | None, mask_image: str | None, strength: float | None, mask_blur: int,
                       keep_unmasked: bool, outpaint: str | None, jump_length: int, jump_n_sample: int) -> None:
    """One-sentence `ValueError` for an editing option that cannot apply (before any file is read)."""
    if image is None:
        given = [name for name, value in (("--mask-image", mask_image), ("--strength", strength),
                                          ("--outpaint", outpaint), ("--keep-unmasked", keep_unmasked)) if value]
        if given:
            raise ValueError(f"{given[0]} edits an image: give it with --image.")
    if strength is not None and not 0.0 < strength <= 1.0:
        raise ValueError(f"--strength must be in (0, 1], got {strength}.")
    if mask_image is not None and outpaint is not None:
        raise ValueError("give --mask-image or --outpaint, not both (--outpaint builds its own mask).")
    if outpaint is not None:
        parse_margins(outpaint)
    painting = mask_image is not None or outpaint is not None
    if keep_unmasked and not painting:
        raise ValueError("--keep-unmasked needs a mask: give --mask-image or --outpaint.")
    if mask_blur < 0:
        raise ValueError(f"--mask-blur must be >= 0 pixels, got {mask_blur}.")
    if mask_blur > 0 and not keep_unmasked:
        raise ValueError("--mask-blur softens the --keep-unmasked paste-back; add --keep-unmasked.")
    if jump_length < 1 or jump_n_sample < 1:
        raise ValueError(f"--repaint-jump-length and --repaint-jump-n-sample must be at least 1, got "
                         f"{jump_length} and {jump_n_sample}.")
    if jump_n_sample > 1 and not painting:
        raise ValueError("RePaint resampling (--repaint-jump-n-sample > 1) needs --mask-image or --outpaint.")


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_image(path: str | Path, what: str = "--image") -> Image.Image:
    """The file as a fully decoded PIL image; one-sentence `ValueError` if it is missing or not an image."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what} {path} does not exist.")
    try:
        with Image.open(path) as opened:
            opened.load()
            return opened.copy()
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(f"cannot read {what} {path} as an image: {reason}.") from None


def as_greyscale_mask(mask: Image.Image, path: Path) -> Image.Image:
    """Mode "L" mask; RGB(A) only when every pixel is grey (R = G = B), alpha ignored."""
    if mask.mode in ("1", "L", "LA", "I", "I;16", "F"):
        return mask.convert("L") if mask.mode != "LA" else mask.getchannel("L")
    rgb = np.asarray(mask.convert("RGB"), dtype=np.int16)
    if np.abs(rgb - rgb[..., :1]).max() > 0:
        raise ValueError(f"--mask-image {path} has colours; give a greyscale mask (white = repaint).")
    return Image.fromarray(rgb[..., 0].astype(np.uint8), mode="L")


@dataclass
class EditInputs:
    """What an edit starts from: the (possibly extended) image, its mask, and what the manifest records."""

    image: Image.Image  # RGB, the canvas the pipeline sees
    mask: Image.Image | None  # "L", white = repaint; None for image-to-image
    strength: float
    image_sha256: str
    mask_sha256: str | None = None
    margins: Margins | None = None
    mask_blur: int = 0
    keep_unmasked: bool = False
    jump_length: int = 10
    jump_n_sample: int = 1

    def pipeline(self, pipe, num_inference_steps: int):
        """The editing pipeline on `pipe`'s components (weights shared, nothing copied); one-sentence
        `ValueError` unless the model, sampler and steps fit these inputs."""
        factor = pipe.vae_scale_factor
        if self.margins is not None:
            check_margins(self.margins, factor)
        width, height = self.image.size
        if width % factor or height % factor:
            raise ValueError(f"--image is {width}x{height} pixels; both sides must be multiples of the VAE "
                             f"factor {factor} (crop or resize it).")
        if is_inpainting_model(pipe) and self.mask is None:
            raise ValueError("this model is an SD-inpainting model: give --mask-image or --outpaint.")
        if int(num_inference_steps * self.strength) < 1:
            raise ValueError(f"--strength {self.strength} keeps no step of --steps {num_inference_steps}; "
                             "raise one of them.")
        pipeline_class = ImageToImagePipeline if self.mask is None else InpaintPipeline
        edit = pipeline_class(**pipe.components)
        edit.set_progress_bar_config(disable=True)
        if self.mask is not None:
            edit.check_model_and_resampling(self.jump_length, self.jump_n_sample)
        return edit

    def pipeline_kwargs(self) -> dict:
        kwargs = {"image": self.image, "strength": self.strength}
        if self.mask is not None:
            kwargs.update(mask_image=self.mask, jump_length=self.jump_length,
                          jump_n_sample=self.jump_n_sample)
        return kwargs

    def manifest_fields(self, *, image_path: str, mask_path: str | None) -> dict:
        """The keys that reproduce this edit, added to every manifest row and PNG's metadata."""
        fields = {"init_image": image_path, "init_image_sha256": self.image_sha256, "strength": self.strength}
        if self.mask is not None:
            fields.update(mask_image=mask_path, mask_sha256=self.mask_sha256, outpaint=self.margins,
                          keep_unmasked=self.keep_unmasked, mask_blur=self.mask_blur,
                          repaint_jump_length=self.jump_length, repaint_jump_n_sample=self.jump_n_sample)
        return fields

    def finish(self, images: list[Image.Image]) -> list[Image.Image]:
        """With --keep-unmasked, paste the original pixels back wherever the mask keeps them."""
        if not self.keep_unmasked:
            return images
        weight = paste_weight(self.mask, self.mask_blur)[..., None]
        original = np.asarray(self.image, dtype=np.float32)
        pasted = [weight * np.asarray(im, np.float32) + (1 - weight) * original for im in images]
        return [Image.fromarray(np.rint(p).astype(np.uint8)) for p in pasted]


def is_inpainting_model(pipe) -> bool:
    """True when the U-Net takes latents + mask + masked-image latents (SD-inpainting layout)."""
    return pipe.unet.config.in_channels == 2 * pipe.vae.config.latent_channels + 1


def check_text_to_image_model(pipe) -> None:
    """An SD-inpainting model cannot draw from noise alone: one-sentence `ValueError`."""
    if is_inpainting_model(pipe):
        raise ValueError("this model is an SD-inpainting model: give --image with --mask-image or --outpaint.")


def paste_weight(mask: Image.Image, blur: int) -> np.ndarray:
    """Per-pixel weight `(H, W)` in [0, 1] of the generated image in the paste-back: the binarised mask, its
    edge softened by a Gaussian of radius `blur` inside the mask only, so kept pixels stay exact."""
    hard = (np.asarray(mask, dtype=np.float32) / 255.0 >= 0.5).astype(np.float32)
    if blur == 0:
        return hard
    blurred = Image.fromarray((hard * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(blur))
    blurred = np.asarray(blurred)
    return np.minimum(hard, blurred.astype(np.float32) / 255.0)


def read_edit_inputs(*, image: str, mask_image: str | None, strength: float | None, mask_blur: int,
                     keep_unmasked: bool, outpaint: str | None, jump_length: int, jump_n_sample: int) -> EditInputs:
    """Read the init image (and mask), build the outpainting canvas; default strength 0.8 for image-to-image,
    1.0 (start from noise in the masked area) for inpainting and outpainting."""
    init = read_image(image).convert("RGB")
    mask, mask_sha, margins = None, None, None
    if mask_image is not None:
        mask = as_greyscale_mask(read_image(mask_image, "--mask-image"), Path(mask_image))
        if mask.size != init.size:
            raise ValueError(f"--mask-image is {mask.size[0]}x{mask.size[1]} but --image is "
                             f"{init.size[0]}x{init.size[1]}; they must be the same size.")
        mask_sha = sha256_file(Path(mask_image))
    elif outpaint is not None:
        margins = parse_margins(outpaint)
        init, mask = extend_canvas(init, margins)
    default = DEFAULT_STRENGTH if mask is None else 1.0
    return EditInputs(
        image=init, mask=mask, strength=default if strength is None else strength,
        image_sha256=sha256_file(Path(image)), mask_sha256=mask_sha, margins=margins, mask_blur=mask_blur,
        keep_unmasked=keep_unmasked, jump_length=jump_length, jump_n_sample=jump_n_sample,
    )
