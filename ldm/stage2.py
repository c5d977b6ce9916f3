"""The stage-2 training step: caption embeddings with conditioning dropout, one micro-step's loss, and the
forward/backward pass over an optimizer step's micro-steps.

Every random draw of a micro-step comes from its own generator (`ldm.training.batches.step_generator`) and
covers the *global* batch, each process keeping its slice, so a run gives the same update whatever the number
of processes and wherever it was resumed (ldm/training/batches.py states the rule).
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterable

import torch

from ldm.conditioning import (drop_mask, drop_words, encode_input_ids, keep_or_null, null_prompt_embeds,
                              tokenize_prompts)
from ldm.objective import diffusion_loss, min_snr_weights, sample_noise, snr, training_target
from ldm.training.batches import local_slice

EMBED_CACHE_MAX_BYTES = 2 * 1024**3  # cache frozen-encoder embeddings per unique caption up to this size


class CaptionEmbedder:
    """Prompt embeddings `(b, L, D)` for captions, with conditioning dropout to the null condition.

    A frozen encoder embeds each unique caption of `captions` (streamed once) into a table if that fits in
    EMBED_CACHE_MAX_BYTES; otherwise, and for a trainable encoder, captions are tokenized
    (`ldm.conditioning.tokenize_prompts`) and encoded per batch, and a trainable encoder's null embedding
    (`ldm.conditioning.null_prompt_embeds`, the sampler's ε(x) condition) is recomputed with gradients. Under
    caption word dropout the shortened captions are encoded at each step.
    """

    def __init__(self, text_encoder, tokenizer, *, trainable: bool, captions: Iterable[str] = ()):
        self.text_encoder, self.tokenizer, self.trainable = text_encoder, tokenizer, trainable
        self.table, self.rows, self.null = None, {}, None
        if trainable:
            return
        with torch.no_grad():
            self.null = null_prompt_embeds(text_encoder, tokenizer)
            unique = list(dict.fromkeys(captions))
            table_bytes = len(unique) * self.null[0].numel() * self.null.element_size()
            if unique and table_bytes <= EMBED_CACHE_MAX_BYTES:
                input_ids = tokenize_prompts(tokenizer, unique)
                self.table = torch.cat([self._encode(ids) for ids in input_ids.split(256)])
                self.rows = {caption: i for i, caption in enumerate(unique)}

    def _encode(self, input_ids: torch.Tensor) -> torch.Tensor:
        return encode_input_ids(self.text_encoder, input_ids, pad_token_id=self.tokenizer.pad_token_id)

    def null_embeds(self) -> torch.Tensor:
        """The null condition `(1, L, D)`; recomputed (with gradients) for a trainable encoder."""
        return self.null if self.null is not None else null_prompt_embeds(self.text_encoder, self.tokenizer)

    def embed(self, captions: list[str]) -> torch.Tensor:
        """`(b, L, D)` embeddings of whole captions: table rows where every caption has one, else encoded."""
        if self.table is not None and all(caption in self.rows for caption in captions):
            return self.table[torch.tensor([self.rows[caption] for caption in captions], dtype=torch.long)]
        with torch.set_grad_enabled(self.trainable):
            return self._encode(tokenize_prompts(self.tokenizer, captions))

    def __call__(self, captions: list[str], keep: torch.Tensor, word_draws: torch.Tensor | None = None,
                 word_dropout: float = 0.0) -> torch.Tensor:
        """captions: b strings; keep: (b,) bool, False → the null condition; word_draws: (b, max_words)
        uniform draws for `ldm.conditioning.drop_words` at probability `word_dropout` (None: whole captions)."""
        if word_draws is not None:
            prompt_embeds = self.embed(drop_words(captions, word_draws, word_dropout))
        else:
            prompt_embeds = self.embed(captions)
        return keep_or_null(prompt_embeds, self.null_embeds(), keep)


def micro_step_loss(*, unet, embedder: CaptionEmbedder, cache, noise_scheduler, indices: torch.Tensor,
                    generator: torch.Generator, rank: int = 0, world_size: int = 1,
                    device: torch.device | str = "cpu", scaling_factor: float, cond_dropout: float,
                    caption_word_dropout: float = 0.0, max_words: int = 0, offset_noise: float = 0.0,
                    min_snr_gamma: float | None = None, snr_floor: float | None = None) -> torch.Tensor:
    """The diffusion loss (scalar) of one micro-step on this process's slice of the global batch.

    indices: (G,) dataset items of the global batch, all of one latent shape (one bucket); cache: a latent
    cache (`posterior(indices) -> (mean, std)` float32 `(n, C, h, w)`, `captions_of(indices)`, `latent_shape(index)`);
    generator: the micro-step's generator. Draw order (posterior ε, dropout mask, noise, timesteps, word
    draws), each for the global batch, is fixed: it defines the run.
    """
    global_size = len(indices)
    eps = torch.randn((global_size, *cache.latent_shape(int(indices[0]))), generator=generator)
    keep = ~drop_mask(global_size, cond_dropout, generator)
    noise = sample_noise(eps, offset_noise=offset_noise, generator=generator)
    timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (global_size,), generator=generator)
    # Drawn last, and only when on, so that every other draw is the same with and without word dropout.
    word_draws = torch.rand(global_size, max_words, generator=generator) if caption_word_dropout > 0 else None
    eps, noise, timesteps, keep, indices = (local_slice(t, rank, world_size)
                                            for t in (eps, noise, timesteps, keep, indices))
    mean, std = cache.posterior(indices)
    latents = (mean + std * eps) * scaling_factor  # a sample of q(z|x), scaled: what vae.encode would draw
    latents, noise, timesteps = (t.to(device) for t in (latents, noise, timesteps))
    if word_draws is not None:
        word_draws = local_slice(word_draws, rank, world_size)

    prompt_embeds = embedder(cache.captions_of(indices), keep, word_draws, caption_word_dropout)
    noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)
    noise_pred = unet(noisy_latents, timesteps, prompt_embeds).sample
    weights = min_snr_weights(snr(noise_scheduler, timesteps), gamma=min_snr_gamma,
                              prediction_type=noise_scheduler.config.prediction_type, floor=snr_floor)
    return diffusion_loss(noise_pred, training_target(noise_scheduler, latents, noise, timesteps), weights)


def backward_micro_steps(step: int, *, unet, accelerator, grad_accum: int,
                         loss_of: Callable[[int], torch.Tensor]) -> torch.Tensor:
    """Forward and backward over the `grad_accum` micro-steps of optimizer step `step` (0-based);
    `loss_of(micro_step)` is the loss of micro-step `step * grad_accum + k`.

    Returns the mean loss over micro-steps and processes (a scalar every process agrees on).
    """
    losses = []
    for k in range(grad_accum):
        sync = k == grad_accum - 1  # DDP all-reduces the gradients on the last micro-step only
        with (contextlib.nullcontext() if sync else accelerator.no_sync(unet)), accelerator.autocast():
            loss = loss_of(step * grad_accum + k)
        accelerator.backward(loss / grad_accum)
        losses.append(loss.detach())
    return accelerator.reduce(torch.stack(losses).mean(), reduction="mean")
