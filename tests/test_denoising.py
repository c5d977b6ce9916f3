"""pipelines/denoising.py: the shared loop's contract (hook order, callback numbering, extra input channels)
and how images are encoded, checked against direct calls of the components."""

import torch
from tiny_components import (
    sd_scheduler_config,
    tiny_inpaint_unet,
    tiny_text_encoder,
    tiny_tokenizer,
    tiny_unet,
    tiny_vae,
)

from pipelines.denoising import DenoisingPipeline
from pipelines.schedulers import make_scheduler


def make_pipe(tmp_path, unet=None):
    tokenizer = tiny_tokenizer(tmp_path / "tokenizer")
    pipe = DenoisingPipeline(vae=tiny_vae(), text_encoder=tiny_text_encoder(tokenizer), tokenizer=tokenizer,
                             unet=unet or tiny_unet(), scheduler=make_scheduler("ddim", sd_scheduler_config()))
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler.set_timesteps(4)
    return pipe


def test_after_step_runs_between_the_step_and_the_callback(tmp_path):
    pipe = make_pipe(tmp_path)
    embeds = pipe.encode_prompt_embeds(["red"], None, 1, 3.0)
    events = []

    def after_step(i, t, latents):
        events.append(("after_step", i, int(t)))
        return torch.zeros_like(latents)  # what the callback must see

    def callback(step, t, latents):
        events.append(("callback", step, int(t)))
        assert latents.abs().max() == 0

    start = torch.randn(1, 4, 8, 8)
    with torch.inference_mode():
        out = pipe.denoise(start, embeds, 3.0, None, callback, indices=[2, 3], after_step=after_step,
                           first_callback_step=5)
    t = [int(x) for x in pipe.scheduler.timesteps]
    assert events == [("after_step", 2, t[2]), ("callback", 5, t[2]), ("after_step", 3, t[3]),
                      ("callback", 6, t[3])]
    assert out.abs().max() == 0


def test_extra_channels_are_concatenated_to_both_guidance_branches(tmp_path):
    pipe = make_pipe(tmp_path, unet=tiny_inpaint_unet())
    embeds = pipe.encode_prompt_embeds(["red"], None, 1, 3.0)
    latents, extra = torch.randn(1, 4, 8, 8), torch.randn(1, 5, 8, 8)
    inputs = []
    handle = pipe.unet.register_forward_pre_hook(lambda module, args: inputs.append(args[0].clone()))
    try:
        with torch.inference_mode():
            pipe.denoise(latents, embeds, 3.0, None, None, indices=[0], extra_channels=extra)
    finally:
        handle.remove()
    scaled = pipe.scheduler.scale_model_input(latents, pipe.scheduler.timesteps[0])
    expected = torch.cat([scaled, extra], dim=1).repeat(2, 1, 1, 1)  # [uncond, cond], same input
    torch.testing.assert_close(inputs[0], expected, rtol=0, atol=0)


def test_encode_images_draws_one_sample_per_generator(tmp_path):
    pipe = make_pipe(tmp_path)
    pixels = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.inference_mode():
        one = pipe.encode_images(pixels, torch.Generator().manual_seed(0), 2)
        each = pipe.encode_images(pixels, [torch.Generator().manual_seed(s) for s in (0, 1)], 2)
        posterior = pipe.vae.encode(pixels).latent_dist
    scale = pipe.vae.config.scaling_factor
    assert torch.equal(one[0], one[1])  # one image, one draw, repeated for the batch (as stock)
    torch.testing.assert_close(each[1], posterior.sample(torch.Generator().manual_seed(1))[0] * scale)
    assert not torch.allclose(each[0], each[1])
