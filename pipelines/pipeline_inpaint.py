"""`InpaintPipeline`: repaint the white part of a mask under a prompt, keeping the rest of the image.

Two kinds of U-Net, told apart by `unet.config.in_channels`:
- an ordinary 4-channel text-to-image U-Net (any model trained here): after every scheduler step the known
  region is replaced by the image's own latents noised to the level just reached (the "blend" of
  Lugmayr et al. 2022 §4.1 and of stock diffusers), and, optionally, RePaint resampling (`jump_length`,
  `jump_n_sample`, `pipelines.repaint`) diffuses blocks of steps back and denoises them again so the new region
  agrees with the known one at the seam;
- a 9-channel SD-inpainting U-Net: the mask and the masked image's latents are concatenated to its input and
  the model keeps the known region itself (Rombach et al. 2022, §4.5).

On the same components, seed, scheduler and steps it gives the images of stock
`diffusers.StableDiffusionInpaintPipeline`, with two differences, both to keep an image independent of the
others in its batch and of the kind of sampler: with one generator per image, each image's latents are encoded
with its own generator (stock encodes the image once, with the first); and with a 4-channel U-Net the masked
image is not encoded at all (stock encodes it and never uses it, which moves ancestral samplers' noise).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import ImagePipelineOutput
from diffusers.image_processor import VaeImageProcessor

from pipelines.denoising import DEFAULT_GUIDANCE_SCALE, AfterStep, Callback, DenoisingPipeline
from pipelines.repaint import STATELESS_SCHEDULERS, jump_back, level_alpha_bar, repaint_blocks

DEFAULT_JUMP_LENGTH = 10  # RePaint's j = 10 (paper §4.2); resampling is off until jump_n_sample > 1


class InpaintPipeline(DenoisingPipeline):
    """Image + mask + prompt → image, with components `vae`, `text_encoder`, `tokenizer`, `unet`, `scheduler`."""

    def __init__(self, vae, text_encoder, tokenizer, unet, scheduler):
        super().__init__(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                         scheduler=scheduler)
        # Masks are read as stock diffusers reads them: greyscale, [0, 1], binarised at 0.5 (white = repaint).
        self.mask_processor = VaeImageProcessor(
            vae_scale_factor=self.vae_scale_factor, do_normalize=False, do_binarize=True,
            do_convert_grayscale=True,
        )

    @property
    def is_inpainting_unet(self) -> bool:
        """True for an SD-inpainting U-Net: latents + mask + masked-image latents as input channels."""
        return self.unet.config.in_channels == 2 * self.vae.config.latent_channels + 1

    def check_model_and_resampling(self, jump_length: int, jump_n_sample: int) -> None:
        latent_channels = self.vae.config.latent_channels
        if self.unet.config.in_channels not in (latent_channels, 2 * latent_channels + 1):
            raise ValueError(f"the U-Net takes {self.unet.config.in_channels} input channels; inpainting needs "
                             f"{latent_channels} or {2 * latent_channels + 1}.")
        if jump_length < 1 or jump_n_sample < 1:
            raise ValueError(
                f"jump_length and jump_n_sample must be at least 1, got {jump_length}, {jump_n_sample}."
            )
        if jump_n_sample > 1 and self.is_inpainting_unet:
            raise ValueError("RePaint resampling is for ordinary U-Nets; an SD-inpainting U-Net needs none.")
        if jump_n_sample > 1 and not isinstance(self.scheduler, STATELESS_SCHEDULERS):
            raise ValueError(f"RePaint resampling needs the ddim or ddpm scheduler (steps that can be rerun), "
                             f"got {type(self.scheduler).__name__}.")

    @torch.inference_mode()
    def __call__(
        self,
        prompt: str | list[str],
        image,
        mask_image,
        strength: float = 1.0,
        negative_prompt: str | list[str] | None = None,
        num_inference_steps: int = 25,
        guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        callback: Callback | None = None,
        jump_length: int = DEFAULT_JUMP_LENGTH,
        jump_n_sample: int = 1,
    ) -> ImagePipelineOutput:
        """Inpaint `image` where `mask_image` is white, into `len(prompt) · num_images_per_prompt` images.

        image: PIL image (or a diffusers-style tensor `(1, 3, H, W)` in [0, 1]); mask_image: PIL image of the
        same size (greyscale-able; >= 0.5 repaints) or a tensor `(1, 1, H, W)` in [0, 1]. strength < 1 starts
        from the image noised part way (4-channel U-Net), 1 from pure noise. jump_n_sample > 1 turns on RePaint
        resampling in blocks of jump_length steps (ddim or ddpm only). callback(step, timestep, latents) runs
        after every U-Net step, counting from 0 through every resampled block.
        """
        # 1. Check inputs
        prompts, negative_prompts = self.as_lists(prompt, negative_prompt)
        self.check_common_inputs(prompts, negative_prompts, num_inference_steps, guidance_scale,
                                 num_images_per_prompt, output_type)
        self.check_strength(strength, num_inference_steps)
        self.check_model_and_resampling(jump_length, jump_n_sample)
        pixel_values, mask = self.prepare_image_and_mask(image, mask_image)
        batch_size = len(prompts) * num_images_per_prompt
        self.check_generators(generator, batch_size)

        # 2. Encode prompt: [uncond, cond] when guiding
        prompt_embeds = self.encode_prompt_embeds(prompts, negative_prompts, num_images_per_prompt,
                                                  guidance_scale)

        # 3. Timesteps: the last int(steps · strength) of the sampler's schedule
        start = self.set_timesteps_for_strength(num_inference_steps, strength)

        # 4. Prepare latents: pure noise at strength 1, else the image noised to the first timestep
        image_latents = None
        if not self.is_inpainting_unet or strength < 1.0:
            image_latents = self.encode_images(pixel_values, generator, batch_size)
        noise = self.draw_noise((batch_size, self.vae.config.latent_channels, *self.latent_size(mask)), generator)
        if strength == 1.0:
            latents = noise * self.scheduler.init_noise_sigma
        else:
            first = self.scheduler.timesteps[start : start + 1].repeat(batch_size)
            latents = self.scheduler.add_noise(image_latents, noise, first)

        # 5. Prepare the mask at latent resolution (and, for a 9-channel U-Net, the masked image's latents)
        latent_mask, extra_channels = self.prepare_mask_latents(mask, pixel_values, generator, batch_size)

        # 6. Denoising loop: the model keeps the known region (9 channels), or the blend does (4 channels)
        blend = None
        if not self.is_inpainting_unet:
            blend = self.known_region_blend(image_latents, noise, latent_mask)
        latents = self.denoise_with_resampling(
            latents, prompt_embeds, guidance_scale, generator, callback, start=start, after_step=blend,
            extra_channels=extra_channels, jump_length=jump_length, jump_n_sample=jump_n_sample,
        )

        # 7. Decode
        images = self.decode(latents, output_type)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=images)

    def prepare_image_and_mask(self, image, mask_image) -> tuple[torch.Tensor, torch.Tensor]:
        """Image `(1, 3, H, W)` in [-1, 1] and binarised mask `(1, 1, H, W)` in {0, 1}; one-sentence
        `ValueError` unless they are one image and one mask of the same size."""
        pixel_values = self.prepare_image(image)
        mask = self.prepare_image(mask_image, self.mask_processor)
        if mask.shape[-2:] != pixel_values.shape[-2:] or pixel_values.shape[0] != 1 or mask.shape[0] != 1:
            raise ValueError(f"mask_image must be one mask of the image's size {tuple(pixel_values.shape[-2:])}, "
                             f"got {tuple(mask.shape[-2:])}.")
        return pixel_values, mask

    def latent_size(self, mask: torch.Tensor) -> tuple[int, int]:
        return tuple(s // self.vae_scale_factor for s in mask.shape[-2:])

    def prepare_mask_latents(self, mask, pixel_values, generator, batch_size: int):
        """(latent_mask `(B, 1, h, w)`, extra_channels `(B, 1 + C, h, w)` or None): the mask resized nearest
        (a latent cell is repainted or kept as a whole), and for an SD-inpainting U-Net the mask with the masked
        image's latents, drawn after the starting noise as stock draws them."""
        latent_mask = F.interpolate(mask, size=self.latent_size(mask))
        latent_mask = latent_mask.to(device=self.device, dtype=self.unet.dtype).repeat(batch_size, 1, 1, 1)
        if not self.is_inpainting_unet:
            return latent_mask, None
        masked_latents = self.encode_images(pixel_values * (mask < 0.5), generator, batch_size)
        return latent_mask, torch.cat([latent_mask, masked_latents], dim=1)

    def known_region_blend(self, image_latents: torch.Tensor, noise: torch.Tensor,
                           latent_mask: torch.Tensor) -> AfterStep:
        """after_step hook: outside the mask, the image's latents noised (with the starting noise) to the level
        the step just reached; clean latents after the last step. Tensors `(B, C, h, w)`, mask `(B, 1, h, w)`."""
        timesteps = self.scheduler.timesteps

        def blend(index: int, timestep, latents: torch.Tensor) -> torch.Tensor:
            known = image_latents
            if index + 1 < len(timesteps):
                known = self.scheduler.add_noise(image_latents, noise, timesteps[index + 1 : index + 2])
            return (1 - latent_mask) * known + latent_mask * latents

        return blend

    def denoise_with_resampling(self, latents, prompt_embeds, guidance_scale, generator, callback, *,
                                start: int, after_step, extra_channels, jump_length: int,
                                jump_n_sample: int) -> torch.Tensor:
        """`denoise` over the steps from `start`, with RePaint's jumps back between repeats of a block
        (`pipelines.repaint.repaint_blocks`); jump_n_sample = 1 is the plain loop. latents `(B, C, h, w)`."""
        blocks = repaint_blocks(start, len(self.scheduler.timesteps), jump_length, jump_n_sample)
        steps_done = 0
        for n, block in enumerate(blocks):
            if n > 0 and blocks[n - 1] == block:
                latents = jump_back(
                    latents, level_alpha_bar(self.scheduler, block.stop),
                    level_alpha_bar(self.scheduler, block.start), self.draw_noise(latents.shape, generator),
                )
            latents = self.denoise(latents, prompt_embeds, guidance_scale, generator, callback, indices=block,
                                   extra_channels=extra_channels, after_step=after_step,
                                   first_callback_step=steps_done)
            steps_done += len(block)
        return latents
