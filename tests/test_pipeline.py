"""pipelines/pipeline_text_to_image.py against stock StableDiffusionPipeline and the CFG formula."""

import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline
from tiny_components import tiny_text_encoder, tiny_tokenizer, tiny_unet, tiny_vae

from pipelines import TextToImagePipeline
from pipelines.schedulers import make_scheduler

# What SD 1.x ships (steps_offset 1, no x0 clipping), so stock does not rewrite the config on load.
SD_SCHEDULER = DDIMScheduler(
    beta_schedule="scaled_linear",
    beta_start=0.00085,
    beta_end=0.012,
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
)
PROMPTS = ["a red circle on the left", "blue square"]


@pytest.fixture(scope="module")
def components(tmp_path_factory):
    tokenizer = tiny_tokenizer(tmp_path_factory.mktemp("tokenizer"))
    vae = tiny_vae()
    vae.register_to_config(scaling_factor=0.37)  # not SD's 0.18215: proves the config value is the one used
    return dict(vae=vae, text_encoder=tiny_text_encoder(tokenizer), tokenizer=tokenizer, unet=tiny_unet())


def make_pair(components, scheduler_name):
    ours = TextToImagePipeline(**components, scheduler=make_scheduler(scheduler_name, SD_SCHEDULER.config))
    stock = StableDiffusionPipeline(
        **components,
        scheduler=make_scheduler(scheduler_name, SD_SCHEDULER.config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False
    )
    for pipe in (ours, stock):
        pipe.set_progress_bar_config(disable=True)
    return ours, stock


@pytest.mark.parametrize("scheduler_name", ["ddim", "dpm++", "euler-a"])
@pytest.mark.parametrize("guidance_scale", [1.0, 4.0])
def test_same_images_as_stock(components, scheduler_name, guidance_scale):
    ours, stock = make_pair(components, scheduler_name)
    kwargs = dict(
        num_inference_steps=4,
        guidance_scale=guidance_scale,
        num_images_per_prompt=2,
        output_type="np",
        negative_prompt=None if guidance_scale == 1.0 else ["green triangle", "on the right"],
    )
    mine = ours(PROMPTS, generator=torch.Generator().manual_seed(3), **kwargs).images
    theirs = stock(PROMPTS, generator=torch.Generator().manual_seed(3), **kwargs).images
    assert mine.shape == theirs.shape == (4, 32, 32, 3)
    assert abs(mine - theirs).max() <= 1e-4


def test_guided_step_equals_formula_on_two_separate_unet_calls(components):
    """One DDIM step (deterministic) from given latents, recomputed by hand from two U-Net calls."""
    ours, _ = make_pair(components, "ddim")
    latents = torch.randn(1, 4, 8, 8)
    guidance_scale = 3.0
    got = ours(
        "red circle",
        latents=latents,
        num_inference_steps=1,
        guidance_scale=guidance_scale,
        output_type="latent",
    ).images

    tokenizer, text_encoder, unet = components["tokenizer"], components["text_encoder"], components["unet"]

    def embed(text):
        ids = tokenizer(
            [text], padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt"
        ).input_ids
        return text_encoder(ids)[0]

    scheduler = make_scheduler("ddim", SD_SCHEDULER.config)
    scheduler.set_timesteps(1)
    t = scheduler.timesteps[0]
    with torch.no_grad():
        eps_cond = unet(latents, t, encoder_hidden_states=embed("red circle")).sample
        eps_uncond = unet(latents, t, encoder_hidden_states=embed("")).sample
    w = guidance_scale - 1
    expected = scheduler.step((w + 1) * eps_cond - w * eps_uncond, t, latents).prev_sample
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_unconditional_branch_skipped_at_guidance_one(components):
    ours, _ = make_pair(components, "ddim")
    batch_sizes = []
    handle = ours.unet.register_forward_pre_hook(lambda module, args: batch_sizes.append(args[0].shape[0]))
    try:
        ours(PROMPTS, num_inference_steps=2, guidance_scale=1.0, output_type="latent")
        ours(PROMPTS, num_inference_steps=2, guidance_scale=2.0, output_type="latent")
    finally:
        handle.remove()
    assert batch_sizes == [2, 2, 4, 4]  # one U-Net call per step; [uncond, cond] only when guiding


def test_latent_output_decodes_with_config_scaling_factor(components):
    ours, _ = make_pair(components, "ddim")
    kwargs = dict(num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    latents = ours("red", output_type="latent", **kwargs).images
    images = ours(
        "red", output_type="pt", generator=torch.Generator().manual_seed(0), num_inference_steps=2
    ).images
    with torch.no_grad():
        decoded = components["vae"].decode(latents / 0.37).sample
    torch.testing.assert_close(images, (decoded / 2 + 0.5).clamp(0, 1), atol=1e-5, rtol=1e-5)


def test_size_defaults_to_unet_sample_size_times_vae_factor(components):
    ours, _ = make_pair(components, "ddim")
    assert ours.vae_scale_factor == 4 and ours.default_size == 32
    steps = []
    image = ours(
        "red", num_inference_steps=2, height=16, width=24, callback=lambda i, t, x: steps.append(x.shape)
    )
    assert image.images[0].size == (24, 16)
    assert steps == [(1, 4, 4, 6)] * 2


def test_per_image_generators_make_images_independent_of_the_batch(components):
    ours, _ = make_pair(components, "euler-a")  # ancestral: the generators are also used inside step()
    kwargs = dict(num_inference_steps=3, output_type="np")
    pair = ours(
        ["red", "blue"], generator=[torch.Generator().manual_seed(s) for s in (5, 6)], **kwargs
    ).images
    alone = ours(["blue"], generator=[torch.Generator().manual_seed(6)], **kwargs).images
    assert abs(pair[1] - alone[0]).max() <= 1e-4


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(height=30), "multiple of the VAE factor 4"),
        (dict(width=0), "positive multiple"),
        (dict(num_inference_steps=0), "at least 1"),
        (dict(guidance_scale=-1.0), ">= 0"),
        (dict(prompt=[]), "non-empty"),
        (dict(negative_prompt=["a", "b"]), "negative_prompt has 2 entries"),
        (dict(output_type="jpeg"), "output_type"),
        (dict(generator=[torch.Generator()] * 3), "3 generators for 1 images"),
    ],
)
def test_bad_input_raises_one_sentence(components, kwargs, message):
    ours, _ = make_pair(components, "ddim")
    kwargs = {"prompt": "red", "num_inference_steps": 1, **kwargs}
    with pytest.raises(ValueError, match=message) as info:
        ours(**kwargs)
    assert "\n" not in str(info.value)
