"""pipelines/pipeline_image_to_image.py against stock StableDiffusionImg2ImgPipeline and SDEdit's start."""

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionImg2ImgPipeline
from PIL import Image
from tiny_components import (
    sd_scheduler_config,
    tiny_inpaint_unet,
    tiny_text_encoder,
    tiny_tokenizer,
    tiny_unet,
    tiny_vae,
)

from pipelines import ImageToImagePipeline
from pipelines.schedulers import make_scheduler

PROMPTS = ["a red circle on the left", "blue square"]


@pytest.fixture(scope="module")
def components(tmp_path_factory):
    tokenizer = tiny_tokenizer(tmp_path_factory.mktemp("tokenizer"))
    vae = tiny_vae()
    vae.register_to_config(scaling_factor=0.37)  # not SD's 0.18215: proves the config value is the one used
    return dict(vae=vae, text_encoder=tiny_text_encoder(tokenizer), tokenizer=tokenizer, unet=tiny_unet())


@pytest.fixture(scope="module")
def init_image():
    pixels = np.random.default_rng(0).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def make_pair(components, scheduler_name):
    config = sd_scheduler_config()
    ours = ImageToImagePipeline(**components, scheduler=make_scheduler(scheduler_name, config))
    stock = StableDiffusionImg2ImgPipeline(
        **components, scheduler=make_scheduler(scheduler_name, config),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    for pipe in (ours, stock):
        pipe.set_progress_bar_config(disable=True)
    return ours, stock


@pytest.mark.parametrize("scheduler_name, strength, guidance_scale", [
    ("ddim", 0.5, 4.0), ("dpm++", 0.75, 4.0), ("euler-a", 0.6, 1.0), ("ddim", 1.0, 3.0),
])
def test_same_images_as_stock(components, init_image, scheduler_name, strength, guidance_scale):
    ours, stock = make_pair(components, scheduler_name)
    kwargs = dict(
        image=init_image, strength=strength, num_inference_steps=4, guidance_scale=guidance_scale,
        num_images_per_prompt=2, output_type="np",
        negative_prompt=None if guidance_scale == 1.0 else ["green triangle", "on the right"],
    )
    mine = ours(PROMPTS, generator=torch.Generator().manual_seed(3), **kwargs).images
    theirs = stock(PROMPTS, generator=torch.Generator().manual_seed(3), **kwargs).images
    assert mine.shape == theirs.shape == (4, 32, 32, 3)
    assert abs(mine - theirs).max() <= 1e-4


def test_per_image_generators_match_stock_and_ignore_the_batch(components, init_image):
    ours, stock = make_pair(components, "euler-a")  # ancestral: the generators are also used inside step()
    kwargs = dict(image=init_image, strength=0.75, num_inference_steps=4, guidance_scale=3.0, output_type="np")
    seeds = lambda *s: [torch.Generator().manual_seed(k) for k in s]  # noqa: E731
    pair = ours(["red", "blue"], generator=seeds(5, 6), **kwargs).images
    assert abs(pair - stock(["red", "blue"], generator=seeds(5, 6), **kwargs).images).max() <= 1e-4
    alone = ours(["blue"], generator=seeds(6), **kwargs).images
    assert abs(pair[1] - alone[0]).max() <= 1e-4


def test_steps_run_are_the_last_strength_fraction_of_the_schedule(components, init_image):
    ours, _ = make_pair(components, "ddim")
    seen = []
    ours("red", image=init_image, strength=0.5, num_inference_steps=10,
         callback=lambda i, t, x: seen.append((i, int(t))))
    full = make_scheduler("ddim", sd_scheduler_config())
    full.set_timesteps(10)
    assert seen == list(enumerate(int(t) for t in full.timesteps[5:]))


def test_start_latents_are_the_image_latents_noised_to_the_first_timestep(components, init_image):
    """DDIM at eta 0 with one step left from strength 1/steps: recompute the start from the VAE and noise."""
    ours, _ = make_pair(components, "ddim")
    starts = []
    handle = ours.unet.register_forward_pre_hook(lambda module, args: starts.append(args[0].clone()))
    try:
        ours("red", image=init_image, strength=0.25, num_inference_steps=4, guidance_scale=1.0,
             generator=torch.Generator().manual_seed(0), output_type="latent")
    finally:
        handle.remove()
    generator = torch.Generator().manual_seed(0)
    pixels = torch.from_numpy(np.asarray(init_image, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    with torch.no_grad():
        latents = components["vae"].encode(pixels).latent_dist.sample(generator) * 0.37
    noise = torch.randn(latents.shape, generator=generator)
    scheduler = make_scheduler("ddim", sd_scheduler_config())
    scheduler.set_timesteps(4)
    alpha_bar = scheduler.alphas_cumprod[scheduler.timesteps[3]]
    expected = alpha_bar.sqrt() * latents + (1 - alpha_bar).sqrt() * noise
    assert len(starts) == 1
    torch.testing.assert_close(starts[0], expected, atol=1e-5, rtol=1e-4)


def test_an_inpainting_unet_is_refused_with_one_sentence(components, init_image):
    pipe = ImageToImagePipeline(**{**components, "unet": tiny_inpaint_unet()},
                                scheduler=make_scheduler("ddim", sd_scheduler_config()))
    with pytest.raises(ValueError, match="takes 9 input channels"):
        pipe("red", image=init_image, num_inference_steps=2)


@pytest.mark.parametrize("kwargs, message", [
    (dict(strength=0.0), r"strength must be in \(0, 1\]"),
    (dict(strength=1.5), r"strength must be in \(0, 1\]"),
    (dict(strength=0.1, num_inference_steps=4), "keeps no step of 4"),
    (dict(image=Image.new("RGB", (30, 32))), "image width must be a positive multiple of the VAE factor 4"),
    (dict(image="init.png"), "image must be a PIL image"),
    (dict(generator=[torch.Generator()] * 2), "2 generators for 1 images"),
])
def test_bad_input_raises_one_sentence(components, init_image, kwargs, message):
    ours, _ = make_pair(components, "ddim")
    kwargs = {"prompt": "red", "image": init_image, "num_inference_steps": 2, **kwargs}
    with pytest.raises(ValueError, match=message) as info:
        ours(**kwargs)
    assert "\n" not in str(info.value)
