"""`DenoisingPipeline`: what every sampler of this project shares — components, prompt encoding as
`[uncond, cond]`, VAE encode/decode and the guided denoising loop with its per-step hook and callback.

`TextToImagePipeline`, `ImageToImagePipeline` and `InpaintPipeline` subclass it and differ only in how they
prepare the starting latents and what they do after each scheduler step (inpainting's blend, RePaint's jumps).
"""

from __future__ import annotations

import inspect
from typing import Callable, Sequence

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, DiffusionPipeline, UNet2DConditionModel
from diffusers.image_processor import VaeImageProcessor
from diffusers.schedulers import KarrasDiffusionSchedulers
from diffusers.utils.torch_utils import randn_tensor
from transformers import CLIPTextModel, CLIPTokenizer

from autoencoder.presets import vae_scale_factor
from ldm.conditioning import encode_prompt, null_prompt_embeds
from ldm.distill import timestep_condition, uses_guidance_embedding
from ldm.guidance import apply_guidance, cfg_batch, do_guidance

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
DEFAULT_GUIDANCE_SCALE = 4.0  # w = 3: sharp, prompt-faithful images from small models without over-saturation

# callback(step, timestep, latents): after every scheduler step; the web server's previews and cancel use it.
Callback = Callable[[int, int, torch.Tensor], None]
# after_step(index, timestep, latents) -> latents: runs between the scheduler step and the callback.
AfterStep = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]


class DenoisingPipeline(DiffusionPipeline):
    """Latent diffusion sampler with components `vae`, `text_encoder`, `tokenizer`, `unet`, `scheduler`
    (any diffusers scheduler; see `pipelines.schedulers.make_scheduler` for samplers by name)."""

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
        return vae_scale_factor(self.vae)

    @property
    def default_size(self) -> int:
        """Image side in pixels the U-Net was trained at: `unet.config.sample_size` latent cells."""
        return self.unet.config.sample_size * self.vae_scale_factor

    def check_common_inputs(
        self,
        prompts: list[str],
        negative_prompts: list[str] | None,
        num_inference_steps: int,
        guidance_scale: float,
        num_images_per_prompt: int,
        output_type: str,
    ) -> None:
        """Raise a one-sentence `ValueError` for an argument no pipeline of ours can honour."""
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError("prompt must be a non-empty string or a non-empty list of strings.")
        if negative_prompts is not None and len(negative_prompts) != len(prompts):
            raise ValueError(
                f"negative_prompt has {len(negative_prompts)} entries but prompt has {len(prompts)}."
            )
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be at least 1, got {num_inference_steps}.")
        if guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0, got {guidance_scale}.")
        if num_images_per_prompt < 1:
            raise ValueError(f"num_images_per_prompt must be at least 1, got {num_images_per_prompt}.")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {', '.join(OUTPUT_TYPES)}, got {output_type!r}.")

    def check_size(self, height: int, width: int, what: str = "") -> None:
        """One-sentence `ValueError` unless both sides are positive multiples of the VAE factor."""
        factor = self.vae_scale_factor
        for name, size in (("height", height), ("width", width)):
            if size <= 0 or size % factor != 0:
                raise ValueError(
                    f"{what}{name} must be a positive multiple of the VAE factor {factor}, got {size}."
                )

    @staticmethod
    def as_lists(prompt, negative_prompt) -> tuple[list[str], list[str] | None]:
        """`prompt` / `negative_prompt` as lists of equal length (a single negative applies to every prompt)."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt or [])
        if isinstance(negative_prompt, str):
            return prompts, [negative_prompt] * len(prompts)
        return prompts, None if negative_prompt is None else list(negative_prompt)

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

    def guides(self, guidance_scale: float) -> bool:
        """Whether sampling runs the `[uncond, cond]` batch: guidance on, and a U-Net that does not take w as an
        input (a guidance-distilled one gets it through `timestep_cond` instead, as in stock diffusers)."""
        return do_guidance(guidance_scale) and not uses_guidance_embedding(self.unet)

    def encode_prompt_embeds(self, prompts, negative_prompts, num_images_per_prompt, guidance_scale):
        """`encode` on the pipeline's device, in the U-Net's dtype."""
        prompt_embeds = self.encode(prompts, negative_prompts, num_images_per_prompt, self.guides(guidance_scale))
        return prompt_embeds.to(device=self.device, dtype=self.unet.dtype)

    def check_generators(self, generator, batch_size: int) -> None:
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(f"got {len(generator)} generators for {batch_size} images; pass one per image.")

    def encode_images(self, pixel_values: torch.Tensor, generator, batch_size: int) -> torch.Tensor:
        """Scaled latents `(batch_size, C, H/f, W/f)` of images `(1 or batch_size, 3, H, W)` in [-1, 1].

        A posterior sample, drawn as stock diffusers draws it: one draw for the batch from a single generator,
        or image i from `generator[i]` (so an image never depends on the others in its batch).
        """
        pixel_values = pixel_values.to(device=self.device, dtype=self.vae.dtype)
        if isinstance(generator, list):
            pixel_values = pixel_values.expand(batch_size, -1, -1, -1)
            latents = torch.cat([
                self.vae.encode(pixel_values[i : i + 1]).latent_dist.sample(generator[i])
                for i in range(batch_size)
            ])
        else:
            latents = self.vae.encode(pixel_values).latent_dist.sample(generator)
            latents = latents.repeat(batch_size // latents.shape[0], 1, 1, 1)
        return (self.vae.config.scaling_factor * latents).to(self.unet.dtype)

    def draw_noise(self, shape: Sequence[int], generator) -> torch.Tensor:
        """Gaussian noise of `shape` in the U-Net's dtype, drawn in fp32 so a seed gives the same noise
        whatever dtype the U-Net runs in."""
        noise = randn_tensor(tuple(shape), generator=generator, device=self.device, dtype=torch.float32)
        return noise.to(self.unet.dtype)

    def prepare_image(self, image, processor: VaeImageProcessor | None = None) -> torch.Tensor:
        """A PIL image (or list of them, or a diffusers-style tensor / array) → `(B, C, H, W)` as the
        processor makes it (default: RGB in [-1, 1]); raises a `ValueError` unless H and W are multiples of the
        VAE factor (no silent resizing)."""
        if isinstance(image, (list, tuple)) and image:
            first = image[0]
        else:
            first = image
        if isinstance(first, PIL.Image.Image):
            width, height = first.size
        elif isinstance(first, (torch.Tensor, np.ndarray)) and first.ndim >= 2:
            # tensors are (B, C, H, W) or (C, H, W), arrays (B, H, W, C) or (H, W, C), as diffusers reads them
            height, width = first.shape[-2:] if isinstance(first, torch.Tensor) else first.shape[-3:-1]
        else:
            raise ValueError(f"image must be a PIL image, a list of them or a tensor, not {type(first).__name__}.")
        self.check_size(height, width, what="image ")
        processor = processor or self.image_processor
        return processor.preprocess(image, height=height, width=width).to(torch.float32)

    @staticmethod
    def check_strength(strength: float, num_inference_steps: int) -> None:
        """strength in (0, 1], and enough steps that int(num_inference_steps * strength) >= 1."""
        if not 0.0 < strength <= 1.0:
            raise ValueError(f"strength must be in (0, 1], got {strength}.")
        if int(num_inference_steps * strength) < 1:
            raise ValueError(
                f"strength {strength} keeps no step of {num_inference_steps}; raise num_inference_steps or "
                "strength."
            )

    def set_timesteps_for_strength(self, num_inference_steps: int, strength: float) -> int:
        """Set the scheduler's timesteps and return the index of the first one to run: SDEdit (Meng et al.
        2021, https://arxiv.org/abs/2108.01073) keeps the last int(num_inference_steps · strength) steps."""
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        start = (num_inference_steps - int(num_inference_steps * strength)) * self.scheduler.order
        if hasattr(self.scheduler, "set_begin_index"):
            self.scheduler.set_begin_index(start)  # multistep solvers count steps from here
        return start

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

    def denoise(
        self,
        latents: torch.Tensor,
        prompt_embeds: torch.Tensor,
        guidance_scale: float,
        generator,
        callback: Callback | None,
        *,
        indices: Sequence[int] | None = None,
        extra_channels: torch.Tensor | None = None,
        after_step: AfterStep | None = None,
        first_callback_step: int = 0,
    ) -> torch.Tensor:
        """Run the scheduler's timesteps (or those at `indices`): one batched U-Net call per step on
        `[uncond, cond]` when guiding.

        latents `(B, C, h, w)`; prompt_embeds `(2B, L, D)` when guiding, else `(B, L, D)`.
        extra_channels `(B, k, h, w)`: concatenated to the scaled model input (SD-inpainting's mask and
        masked-image latents). after_step(i, t, latents) -> latents runs after each scheduler step, before
        callback(first_callback_step + n, t, latents) for the n-th step of this call. A guidance-distilled U-Net
        gets w as `timestep_cond` (`ldm.distill.timestep_condition`) and runs once per step, without `[uncond, cond]`.
        """
        guidance = self.guides(guidance_scale)
        timestep_cond = timestep_condition(self.unet, guidance_scale, latents.shape[0], device=latents.device,
                                           dtype=latents.dtype)
        timesteps = self.scheduler.timesteps
        indices = range(len(timesteps)) if indices is None else indices
        if extra_channels is not None and guidance:
            extra_channels = cfg_batch(extra_channels, extra_channels)
        step_kwargs = {"generator": generator} if self._step_takes_generator() else {}
        for n, i in enumerate(self.progress_bar(indices)):
            t = timesteps[i]
            latent_model_input = cfg_batch(latents, latents) if guidance else latents
            latent_model_input = self.scheduler.scale_model_input(latent_model_input, t)
            if extra_channels is not None:
                latent_model_input = torch.cat([latent_model_input, extra_channels], dim=1)
            noise_pred = self.unet(latent_model_input, t, encoder_hidden_states=prompt_embeds,
                                   timestep_cond=timestep_cond).sample
            if guidance:
                noise_pred = apply_guidance(noise_pred, guidance_scale)
            latents = self.scheduler.step(noise_pred, t, latents, **step_kwargs, return_dict=False)[0]
            if after_step is not None:
                latents = after_step(i, t, latents)
            if callback is not None:
                callback(first_callback_step + n, t, latents)
        return latents

    def _step_takes_generator(self) -> bool:
        """Ancestral samplers (ddpm, euler-a) draw fresh noise in `step` and take the generator there."""
        return "generator" in inspect.signature(self.scheduler.step).parameters
