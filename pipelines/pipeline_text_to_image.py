"""`TextToImagePipeline`: prompt → image with classifier-free guidance, a drop-in for stock Stable Diffusion.

It loads any diffusers SD-1.x/2.x folder (unused components such as a safety checker are ignored) and, on the
same components, seed, scheduler and steps, gives the same images as `diffusers.StableDiffusionPipeline`.
"""

from __future__ import annotations

import inspect
from typing import Callable

import torch
from diffusers import AutoencoderKL, DiffusionPipeline, ImagePipelineOutput, UNet2DConditionModel
from diffusers.image_processor import VaeImageProcessor
from diffusers.schedulers import KarrasDiffusionSchedulers
from diffusers.utils.torch_utils import randn_tensor
from transformers import CLIPTextModel, CLIPTokenizer

from ldm.conditioning import encode_prompt, null_prompt_embeds
from ldm.distill import timestep_condition, uses_guidance_embedding
from ldm.guidance import apply_guidance, cfg_batch, do_guidance

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
DEFAULT_GUIDANCE_SCALE = 4.0  # w = 3: sharp, prompt-faithful images from small models without over-saturation


class TextToImagePipeline(DiffusionPipeline):
    """Text-to-image latent diffusion sampler with components `vae`, `text_encoder`, `tokenizer`, `unet`,
    `scheduler` (any diffusers scheduler; see `pipelines.schedulers.make_scheduler` for samplers by name)."""

    model_cpu_offload_seq = "text_encoder->unet->vae"

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: UNet2DConditionModel,
        scheduler: KarrasDiffusionSchedulers,
    ):
        super().__init__()
        self.register_modules(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler
        )
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell along each side: 2 ** (number of VAE down blocks - 1)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def default_size(self) -> int:
        """Image side in pixels the U-Net was trained at: `unet.config.sample_size` latent cells."""
        return self.unet.config.sample_size * self.vae_scale_factor

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
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError("prompt must be a non-empty string or a non-empty list of strings.")
        if negative_prompts is not None and len(negative_prompts) != len(prompts):
            raise ValueError(
                f"negative_prompt has {len(negative_prompts)} entries but prompt has {len(prompts)}."
            )
        factor = self.vae_scale_factor
        for name, size in (("height", height), ("width", width)):
            if size <= 0 or size % factor != 0:
                raise ValueError(
                    f"{name} must be a positive multiple of the VAE factor {factor}, got {size}."
                )
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be at least 1, got {num_inference_steps}.")
        if guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0, got {guidance_scale}.")
        if num_images_per_prompt < 1:
            raise ValueError(f"num_images_per_prompt must be at least 1, got {num_images_per_prompt}.")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {', '.join(OUTPUT_TYPES)}, got {output_type!r}.")

    @torch.inference_mode()
    def encode(
        self,
        prompts: list[str],
        negative_prompts: list[str] | None,
        num_images_per_prompt: int,
        guidance: bool,
    ) -> torch.Tensor:
        """Text conditioning for the U-Net: `(N, L, D)`, or `(2N, L, D)` as `[uncond, cond]` when guiding,
        with N = len(prompts) · num_images_per_prompt (images of one prompt are adjacent)."""
        prompt_embeds = encode_prompt(self.text_encoder, self.tokenizer, prompts)
        prompt_embeds = prompt_embeds.repeat_interleave(num_images_per_prompt, dim=0)
        if not guidance:
            return prompt_embeds
        if negative_prompts is None:
            # The empty prompt is the null condition the model saw under conditioning dropout; encode it once.
            uncond = null_prompt_embeds(self.text_encoder, self.tokenizer).expand_as(prompt_embeds)
        else:
            uncond = encode_prompt(self.text_encoder, self.tokenizer, negative_prompts)
            uncond = uncond.repeat_interleave(num_images_per_prompt, dim=0)
        return cfg_batch(uncond, prompt_embeds)

    def prepare_latents(self, batch_size: int, height: int, width: int, generator,
                        latents: torch.Tensor | None) -> torch.Tensor:
        """Initial noise `(B, C, height/f, width/f)` in the U-Net's dtype, times the initial sigma."""
        factor = self.vae_scale_factor
        shape = (batch_size, self.unet.config.in_channels, height // factor, width // factor)
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(f"got {len(generator)} generators for {batch_size} images; pass one per image.")
        if latents is None:
            # Draw in fp32 so that a seed gives the same noise whatever dtype the U-Net runs in.
            latents = randn_tensor(shape, generator=generator, device=self.device, dtype=torch.float32)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}.")
        latents = latents.to(device=self.device, dtype=self.unet.dtype)
        return latents * self.scheduler.init_noise_sigma

    def decode(self, latents: torch.Tensor, output_type: str):
        """Latents `(B, C, h, w)` (scaled) → images as PIL list, numpy `(B, H, W, 3)` or torch `(B, 3, H, W)`
        in [0, 1]; with output_type "latent", the latents themselves."""
        if output_type == "latent":
            return latents
        # The VAE may run in a wider dtype than the U-Net (fp32 decode avoids fp16 overflow in its mid-block).
        latents = latents.to(self.vae.dtype) / self.vae.config.scaling_factor
        image = self.vae.decode(latents, return_dict=False)[0]
        return self.image_processor.postprocess(
            image, output_type=output_type, do_denormalize=[True] * image.shape[0]
        )

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
        callback: Callable[[int, int, torch.Tensor], None] | None = None,
        latents: torch.Tensor | None = None,
    ) -> ImagePipelineOutput:
        """Sample `len(prompt) · num_images_per_prompt` images.

        guidance_scale = w + 1 in ε̄ = (w+1)·ε(x, y) − w·ε(x); at <= 1 only ε(x, y) is computed.
        generator: one, or a list with one per image (each image then depends only on its own generator).
        callback(step, timestep, latents) runs after every scheduler step.
        Returned tensors are inference tensors: `.clone()` them before using them where autograd records.
        """
        # 1. Check inputs
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        negative_prompts = negative_prompt
        if isinstance(negative_prompt, str):
            negative_prompts = [negative_prompt] * len(prompts)
        height = self.default_size if height is None else height
        width = self.default_size if width is None else width
        self.check_inputs(prompts, negative_prompts, height, width, num_inference_steps, guidance_scale,
                          num_images_per_prompt, output_type)
        # A guidance-distilled U-Net takes w as an input (timestep_cond) instead of an ε(x) branch, as in stock.
        guidance = do_guidance(guidance_scale) and not uses_guidance_embedding(self.unet)

        # 2. Encode prompt: [uncond, cond] when guiding
        prompt_embeds = self.encode(prompts, negative_prompts, num_images_per_prompt, guidance)
        prompt_embeds = prompt_embeds.to(device=self.device, dtype=self.unet.dtype)

        # 3. Timesteps
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)

        # 4. Prepare latents
        batch_size = len(prompts) * num_images_per_prompt
        latents = self.prepare_latents(batch_size, height, width, generator, latents)

        # 5. Denoising loop (the w embedding for a guidance-distilled U-Net, else None)
        timestep_cond = timestep_condition(self.unet, guidance_scale, batch_size, device=self.device,
                                           dtype=latents.dtype)
        latents = self.denoise(latents, prompt_embeds, guidance_scale, generator, callback, timestep_cond)

        # 6. Decode
        images = self.decode(latents, output_type)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=images)

    def denoise(self, latents: torch.Tensor, prompt_embeds: torch.Tensor, guidance_scale: float, generator,
                callback, timestep_cond: torch.Tensor | None = None) -> torch.Tensor:
        """Run the scheduler's timesteps: one batched U-Net call per step on `[uncond, cond]` when guiding.

        latents `(B, C, h, w)`; prompt_embeds `(2B, L, D)` when guiding, else `(B, L, D)`; timestep_cond
        `(B, d)`: the w embedding of a guidance-distilled U-Net (`ldm.distill.timestep_condition`), which then
        runs once per step without the `[uncond, cond]` batch.
        """
        guidance = do_guidance(guidance_scale) and timestep_cond is None
        step_kwargs = {"generator": generator} if self._step_takes_generator() else {}
        for i, t in enumerate(self.progress_bar(self.scheduler.timesteps)):
            latent_model_input = cfg_batch(latents, latents) if guidance else latents
            latent_model_input = self.scheduler.scale_model_input(latent_model_input, t)
            noise_pred = self.unet(latent_model_input, t, encoder_hidden_states=prompt_embeds,
                                   timestep_cond=timestep_cond).sample
            if guidance:
                noise_pred = apply_guidance(noise_pred, guidance_scale)
            latents = self.scheduler.step(noise_pred, t, latents, **step_kwargs, return_dict=False)[0]
            if callback is not None:
                callback(i, t, latents)
        return latents

    def _step_takes_generator(self) -> bool:
        """Ancestral samplers (ddpm, euler-a) draw fresh noise in `step` and take the generator there."""
        return "generator" in inspect.signature(self.scheduler.step).parameters
