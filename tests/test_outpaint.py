"""pipelines/outpaint.py: the extended canvas and mask, margin checks, and an outpaint that keeps the original."""

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_components import sd_scheduler_config, tiny_text_encoder, tiny_tokenizer, tiny_unet, tiny_vae

from pipelines import InpaintPipeline
from pipelines.outpaint import check_margins, extend_canvas, outpaint
from pipelines.schedulers import make_scheduler


def test_canvas_repeats_edges_and_mask_marks_only_the_new_area():
    pixels = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    canvas, mask = extend_canvas(Image.fromarray(pixels), (2, 1, 3, 0))
    canvas, mask = np.asarray(canvas), np.asarray(mask)
    assert canvas.shape == (5, 11, 3) and mask.shape == (5, 11) and mask.dtype == np.uint8
    assert np.array_equal(canvas[1:, 2:8], pixels)
    assert np.array_equal(canvas[0, 2:8], pixels[0]) and np.array_equal(canvas[1:, 0], pixels[:, 0])
    assert np.array_equal(canvas[1:, 10], pixels[:, -1])
    assert (mask[1:, 2:8] == 0).all() and mask.sum() == 255 * (5 * 11 - 4 * 6)


@pytest.mark.parametrize("margins, message", [
    ((0, 0, 0, 0), "not all 0"), ((4, 0, -4, 0), ">= 0"), ((4, 2, 0, 0), "multiples of the VAE factor 4"),
])
def test_bad_margins_raise_one_sentence(margins, message):
    with pytest.raises(ValueError, match=message):
        check_margins(margins, 4)


def test_outpaint_keeps_the_original_latents_and_grows_the_image(tmp_path):
    tokenizer = tiny_tokenizer(tmp_path / "tokenizer")
    pipe = InpaintPipeline(vae=tiny_vae(), text_encoder=tiny_text_encoder(tokenizer), tokenizer=tokenizer,
                           unet=tiny_unet(), scheduler=make_scheduler("ddim", sd_scheduler_config()))
    pipe.set_progress_bar_config(disable=True)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    kwargs = dict(num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    latents = outpaint(pipe, "red", image, (8, 0, 4, 4), output_type="latent", **kwargs).images
    assert latents.shape == (1, 4, 9, 11)
    canvas, _ = extend_canvas(image, (8, 0, 4, 4))
    pixels = torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    with torch.no_grad():
        known = pipe.vae.encode(pixels).latent_dist.sample(torch.Generator().manual_seed(0))
    torch.testing.assert_close(latents[..., :8, 2:10], known[..., :8, 2:10] * pipe.vae.config.scaling_factor)
    assert outpaint(pipe, "red", image, (4, 4, 4, 4), **kwargs).images[0].size == (40, 40)
