"""`TextToImagePipeline`: prompt → image with classifier-free guidance, a drop-in for stock Stable Diffusion.

It loads any diffusers SD-1.x/2.x folder (unused components such as a safety checker are ignored) and, on the
same components, seed, scheduler and steps, gives the same images as `diffusers.StableDiffusionPipeline`.
Prompt encoding, the denoising loop and decoding live in `pipelines.denoising.DenoisingPipeline`.
"""

from __future__ import annotations

import torch
from diffusers import ImagePipelineOutput

from pipelines.denoising import DEFAULT_GUIDANCE_SCALE, OUTPUT_TYPES, Callback, DenoisingPipeline

__all__ = ["TextToImagePipeline", "DEFAULT_GUIDANCE_SCALE", "OUTPUT_TYPES"]


class TextToImagePipeline(DenoisingPipeline):
    """Text-to-image latent diffusion sampler with components `vae`, `text_encoder`, `tokenizer`, `unet`,
    `scheduler` (any diffusers scheduler; see `pipelines.schedulers.make_scheduler` for samplers by name)."""

    def check_inputs(
        self,
        prompts: list[str],
        negative_prompts: list[str] | None,
        height: int,
        width: int,
        num_inference_steps: int,
        guidance_scale: float,
        num_images_per_prompt: int,
        output_type: str,
    ) -> None:
        """Raise a one-sentence `ValueError` for any argument the pipeline cannot honour."""
        self.check_common_inputs(prompts, negative_prompts, num_inference_steps, guidance_scale,
                                 num_images_per_prompt, output_type)
        self.check_size(height, width)

    def prepare_latents(self, batch_size: int, height: int, width: int, generator,
                        latents: torch.Tensor | None) -> torch.Tensor:
        """Initial noise `(B, C, height/f, width/f)` in the U-Net's dtype, times the initial sigma."""
        factor = self.vae_scale_factor
        shape = (batch_size, self.unet.config.in_channels, height // factor, width // factor)
        self.check_generators(generator, batch_size)
        if latents is None:
            latents = self.draw_noise(shape, generator)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}.")
        latents = latents.to(device=self.device, dtype=self.unet.dtype)
        return latents * self.scheduler.init_noise_sigma

    # inference_mode (not just no_grad) also skips autograd's version counting: ~10% faster at batch 1 on CPU.
    @torch.inference_mode()
    def __call__(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        num_inference_steps: int = 25,
        guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        height: int | None = None,
        width: int | None = None,
        output_type: str = "pil",
        callback: Callback | None = None,
        latents: torch.Tensor | None = None,
    ) -> ImagePipelineOutput:
        """Sample `len(prompt) · num_images_per_prompt` images.

        guidance_scale = w + 1 in ε̄ = (w+1)·ε(x, y) − w·ε(x); at <= 1 only ε(x, y) is computed.
        generator: one, or a list with one per image (each image then depends only on its own generator).
        callback(step, timestep, latents) runs after every scheduler step.
        Returned tensors are inference tensors: `.clone()` them before using them where autograd records.
        """
        # 1. Check inputs
        prompts, negative_prompts = self.as_lists(prompt, negative_prompt)
        height = self.default_size if height is None else height
        width = self.default_size if width is None else width
        self.check_inputs(prompts, negative_prompts, height, width, num_inference_steps, guidance_scale,
                          num_images_per_prompt, output_type)

        # 2. Encode prompt: [uncond, cond] when guiding
        prompt_embeds = self.encode_prompt_embeds(prompts, negative_prompts, num_images_per_prompt,
                                                  guidance_scale)

        # 3. Timesteps
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)

        # 4. Prepare latents
        batch_size = len(prompts) * num_images_per_prompt
        latents = self.prepare_latents(batch_size, height, width, generator, latents)

        # 5. Denoising loop (a guidance-distilled U-Net gets w as timestep_cond instead of [uncond, cond])
        latents = self.denoise(latents, prompt_embeds, guidance_scale, generator, callback)

        # 6. Decode
        images = self.decode(latents, output_type)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=images)
