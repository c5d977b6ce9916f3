"""`ImageToImagePipeline`: SDEdit — noise an image's latents part of the way and denoise them under a prompt.

Meng et al. 2021, "SDEdit" (https://arxiv.org/abs/2108.01073): with strength s the image's latents are noised
to the timestep at fraction s of the sampler's schedule and the last int(steps · s) steps are run. Small s keeps
the layout and changes details; s = 1 starts from the last timestep, where almost nothing of the image is left
(sqrt(ᾱ_T) of it: 0.07 for SD's scaled-linear schedule at T = 981). On the same components, seed, scheduler
and steps it gives the images of stock `diffusers.StableDiffusionImg2ImgPipeline`.
"""

from __future__ import annotations

import torch
from diffusers import ImagePipelineOutput

from pipelines.denoising import DEFAULT_GUIDANCE_SCALE, Callback, DenoisingPipeline

DEFAULT_STRENGTH = 0.8  # stock diffusers' default: the layout survives, colours and shapes may change


class ImageToImagePipeline(DenoisingPipeline):
    """Image + prompt → image, with components `vae`, `text_encoder`, `tokenizer`, `unet`, `scheduler`."""

    @torch.inference_mode()
    def __call__(
        self,
        prompt: str | list[str],
        image,
        strength: float = DEFAULT_STRENGTH,
        negative_prompt: str | list[str] | None = None,
        num_inference_steps: int = 25,
        guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        callback: Callback | None = None,
    ) -> ImagePipelineOutput:
        """Edit `image` into `len(prompt) · num_images_per_prompt` images of the same size.

        image: a PIL image (or a list of one per output image, or a diffusers-style tensor `(B, 3, H, W)` in
        [0, 1]); H and W multiples of the VAE factor. strength in (0, 1]; int(num_inference_steps · strength)
        steps run. generator: one, or one per image (each image then depends only on its own generator).
        callback(step, timestep, latents) runs after every scheduler step, step counting from 0.
        """
        # 1. Check inputs
        prompts, negative_prompts = self.as_lists(prompt, negative_prompt)
        self.check_common_inputs(prompts, negative_prompts, num_inference_steps, guidance_scale,
                                 num_images_per_prompt, output_type)
        self.check_strength(strength, num_inference_steps)
        if self.unet.config.in_channels != self.vae.config.latent_channels:
            raise ValueError(f"the U-Net takes {self.unet.config.in_channels} input channels (an SD-inpainting "
                             "model?); image-to-image needs an ordinary one, or use InpaintPipeline with a mask.")
        pixel_values = self.prepare_image(image)
        batch_size = len(prompts) * num_images_per_prompt
        self.check_generators(generator, batch_size)
        if pixel_values.shape[0] not in (1, batch_size):
            raise ValueError(f"got {pixel_values.shape[0]} images for {batch_size} outputs; pass 1, or 1 each.")

        # 2. Encode prompt: [uncond, cond] when guiding
        prompt_embeds = self.encode_prompt_embeds(prompts, negative_prompts, num_images_per_prompt,
                                                  guidance_scale)

        # 3. Timesteps: the last int(steps · strength) of the sampler's schedule
        start = self.set_timesteps_for_strength(num_inference_steps, strength)
        timesteps = self.scheduler.timesteps

        # 4. Prepare latents: encode the image, noise it to the first timestep that runs
        image_latents = self.encode_images(pixel_values, generator, batch_size)
        noise = self.draw_noise(image_latents.shape, generator)
        first = timesteps[start : start + 1].repeat(batch_size)
        latents = self.scheduler.add_noise(image_latents, noise, first)

        # 5. Denoising loop
        latents = self.denoise(latents, prompt_embeds, guidance_scale, generator, callback,
                               indices=range(start, len(timesteps)))

        # 6. Decode
        images = self.decode(latents, output_type)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=images)
