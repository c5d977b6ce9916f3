"""pipelines/pipeline_inpaint.py against stock StableDiffusionInpaintPipeline (4- and 9-channel U-Nets), saved
folders both ways, and the properties the blend and RePaint resampling must have."""

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline
from PIL import Image
from tiny_components import (
    sd_scheduler_config,
    tiny_inpaint_unet,
    tiny_text_encoder,
    tiny_tokenizer,
    tiny_unet,
    tiny_vae,
)

from pipelines import ImageToImagePipeline, InpaintPipeline
from pipelines.folder import load_pipeline, save_pipeline_folder
from pipelines.schedulers import make_scheduler

PROMPTS = ["a red circle on the left", "blue square"]
SCALING = 0.37  # not SD's 0.18215: proves the config value is the one used


@pytest.fixture(scope="module")
def components(tmp_path_factory):
    tokenizer = tiny_tokenizer(tmp_path_factory.mktemp("tokenizer"))
    vae = tiny_vae()
    vae.register_to_config(scaling_factor=SCALING)
    return dict(vae=vae, text_encoder=tiny_text_encoder(tokenizer), tokenizer=tokenizer, unet=tiny_unet())


@pytest.fixture(scope="module")
def init_image():
    pixels = np.random.default_rng(0).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def box_mask(top=6, bottom=22, left=5, right=19, size=32):
    """White box on black; the default is not aligned to the 4-pixel latent grid, so resizing matters."""
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[top:bottom, left:right] = 255
    return Image.fromarray(mask, mode="L")


def stock_inpaint(components, scheduler):
    pipe = StableDiffusionInpaintPipeline(**components, scheduler=scheduler, safety_checker=None,
                                          feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def ours(components, scheduler_name="ddim"):
    pipe = InpaintPipeline(**components, scheduler=make_scheduler(scheduler_name, sd_scheduler_config()))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def encoded(components, image, generator):
    """The image's scaled latents as stock draws them: a posterior sample from the generator."""
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    with torch.no_grad():
        return components["vae"].encode(pixels).latent_dist.sample(generator) * SCALING


@pytest.mark.parametrize("scheduler_name, strength, guidance_scale", [
    ("ddim", 1.0, 4.0), ("dpm++", 1.0, 1.0), ("euler", 0.75, 4.0), ("ddim", 0.5, 3.0),
])
def test_four_channel_blend_equals_stock(components, init_image, scheduler_name, strength, guidance_scale):
    """Stock's 4-channel path is the blend implemented here for deterministic samplers and one generator
    (see the module docstring for the two differences otherwise)."""
    mine = ours(components, scheduler_name)
    stock = stock_inpaint(components, make_scheduler(scheduler_name, sd_scheduler_config()))
    kwargs = dict(image=init_image, mask_image=box_mask(), strength=strength, num_inference_steps=4,
                  guidance_scale=guidance_scale, num_images_per_prompt=2, output_type="np",
                  negative_prompt=None if guidance_scale == 1.0 else ["green triangle", "on the right"])
    got = mine(PROMPTS, generator=torch.Generator().manual_seed(3), **kwargs).images
    want = stock(PROMPTS, generator=torch.Generator().manual_seed(3), **kwargs).images
    assert got.shape == want.shape == (4, 32, 32, 3)
    assert abs(got - want).max() <= 1e-4


def test_known_region_after_the_last_step_is_the_image_latents(components, init_image):
    for jump_n_sample in (1, 3):  # plain blend, and RePaint resampling
        latents = ours(components)("red", image=init_image, mask_image=box_mask(8, 24, 4, 20),
                                   num_inference_steps=4, generator=torch.Generator().manual_seed(1),
                                   output_type="latent", jump_length=2, jump_n_sample=jump_n_sample).images
        expected = encoded(components, init_image, torch.Generator().manual_seed(1))
        keep = torch.ones(1, 1, 8, 8, dtype=torch.bool)
        keep[..., 2:6, 1:5] = False  # the mask's box in latent cells
        torch.testing.assert_close(latents * keep, expected * keep, atol=1e-6, rtol=0)
        assert (latents - expected)[..., 2:6, 1:5].abs().min() > 0  # the box itself was regenerated


def test_repaint_with_one_sample_is_the_plain_blend_of_stock(components, init_image):
    kwargs = dict(image=init_image, mask_image=box_mask(), num_inference_steps=6, guidance_scale=3.0,
                  output_type="np")
    got = ours(components, "ddim")("red", generator=torch.Generator().manual_seed(2), jump_length=2,
                                   jump_n_sample=1, **kwargs).images
    stock = stock_inpaint(components, make_scheduler("ddim", sd_scheduler_config()))
    want = stock("red", generator=torch.Generator().manual_seed(2), **kwargs).images
    assert abs(got - want).max() <= 1e-4


def test_repaint_reruns_each_block_and_counts_every_step(components, init_image):
    pipe = ours(components)
    steps, calls = [], []
    handle = pipe.unet.register_forward_pre_hook(lambda module, args: calls.append(int(args[1])))
    kwargs = dict(image=init_image, mask_image=box_mask(), num_inference_steps=5, guidance_scale=1.0,
                  generator=torch.Generator().manual_seed(0), output_type="np")
    try:
        resampled = pipe("red", jump_length=2, jump_n_sample=3,
                         callback=lambda i, t, x: steps.append(i), **kwargs).images
    finally:
        handle.remove()
    pipe.scheduler.set_timesteps(5)
    t = [int(x) for x in pipe.scheduler.timesteps]
    assert calls == (t[0:2] * 3) + (t[2:4] * 3) + (t[4:5] * 3)
    assert steps == list(range(15))
    plain = pipe("red", **{**kwargs, "generator": torch.Generator().manual_seed(0)}).images
    assert abs(resampled - plain).max() > 1e-3  # the jumps changed the painted region


def test_nine_channel_folder_loads_and_equals_stock(components, init_image, tmp_path):
    """An SD-inpainting folder written by stock diffusers loads through our loader and runs like stock."""
    nine = {**components, "unet": tiny_inpaint_unet()}
    stock = stock_inpaint(nine, make_scheduler("ddim", sd_scheduler_config()))
    stock.save_pretrained(tmp_path / "sd-inpainting")
    loaded = load_pipeline(tmp_path / "sd-inpainting")
    mine = InpaintPipeline(**loaded.components)
    mine.set_progress_bar_config(disable=True)
    assert mine.is_inpainting_unet
    inputs = []
    handle = mine.unet.register_forward_pre_hook(lambda module, args: inputs.append(args[0].clone()))
    kwargs = dict(image=init_image, mask_image=box_mask(8, 24, 4, 20), num_inference_steps=3,
                  guidance_scale=3.0, output_type="np")
    try:
        got = mine(PROMPTS, generator=torch.Generator().manual_seed(4), **kwargs).images
    finally:
        handle.remove()
    want = stock(PROMPTS, generator=torch.Generator().manual_seed(4), **kwargs).images
    assert abs(got - want).max() <= 1e-4
    assert inputs[0].shape == (4, 9, 8, 8)
    expected_mask = torch.zeros(8, 8)
    expected_mask[2:6, 1:5] = 1
    assert torch.equal(inputs[0][:, 4], expected_mask.expand(4, 8, 8))


def test_stock_loads_our_folder_into_its_editing_pipelines(components, init_image, tmp_path):
    folder = save_pipeline_folder(tmp_path / "pipe", **components,
                                  scheduler=make_scheduler("ddim", sd_scheduler_config()))
    loaded = load_pipeline(folder)
    cases = [
        (StableDiffusionInpaintPipeline, InpaintPipeline, dict(mask_image=box_mask(), strength=1.0)),
        (StableDiffusionImg2ImgPipeline, ImageToImagePipeline, dict(strength=0.75)),
    ]
    for stock_class, our_class, extra in cases:
        stock = stock_class.from_pretrained(folder)
        mine = our_class(**loaded.components)
        kwargs = dict(image=init_image, num_inference_steps=2, guidance_scale=3.0, output_type="np", **extra)
        for pipe in (stock, mine):
            pipe.set_progress_bar_config(disable=True)
        got = mine("red circle", generator=torch.Generator().manual_seed(0), **kwargs).images
        want = stock("red circle", generator=torch.Generator().manual_seed(0), **kwargs).images
        assert abs(got - want).max() <= 1e-4, stock_class.__name__


@pytest.mark.parametrize("kwargs, message", [
    (dict(mask_image=box_mask(size=16)), r"mask_image must be one mask of the image's size \(32, 32\)"),
    (dict(jump_n_sample=2), "RePaint resampling needs the ddim or ddpm scheduler"),
    (dict(jump_length=0), "jump_length and jump_n_sample must be at least 1"),
    (dict(strength=0.0), r"strength must be in \(0, 1\]"),
    (dict(image=Image.new("RGB", (32, 30)), mask_image=Image.new("L", (32, 30))), "image height must be"),
])
def test_bad_input_raises_one_sentence(components, init_image, kwargs, message):
    pipe = ours(components, "dpm++")
    kwargs = {"prompt": "red", "image": init_image, "mask_image": box_mask(), "num_inference_steps": 2,
              **kwargs}
    with pytest.raises(ValueError, match=message) as info:
        pipe(**kwargs)
    assert "\n" not in str(info.value)


def test_nine_channel_unet_refuses_repaint(components, init_image):
    pipe = InpaintPipeline(**{**components, "unet": tiny_inpaint_unet()},
                           scheduler=make_scheduler("ddim", sd_scheduler_config()))
    with pytest.raises(ValueError, match="an SD-inpainting U-Net needs none"):
        pipe("red", image=init_image, mask_image=box_mask(), num_inference_steps=2, jump_n_sample=2)


def test_per_image_generators_make_images_independent_of_the_batch(components, init_image):
    """What ldm-generate's batch- and process-invariance rests on (stock encodes with the first generator)."""
    pipe = ours(components, "ddpm")  # ancestral: the generators are also used inside step()
    kwargs = dict(image=init_image, mask_image=box_mask(), num_inference_steps=3, strength=0.75,
                  output_type="np")
    pair = pipe(["red", "blue"], generator=[torch.Generator().manual_seed(s) for s in (5, 6)], **kwargs).images
    alone = pipe(["blue"], generator=[torch.Generator().manual_seed(6)], **kwargs).images
    assert abs(pair[1] - alone[0]).max() <= 1e-4
