"""Prompt → text-encoder conditioning, the null (empty-prompt) condition, and conditioning dropout.

This module is the single source of truth for two invariants (docs/ARCHITECTURE.md):

* prompt → token ids: pad to `tokenizer.model_max_length`, truncate, and pass no attention mask to the text
  encoder unless its config asks for one — exactly what stock `StableDiffusionPipeline.encode_prompt` does,
  so a pipeline built on `encode_prompt` gives the stock pipeline's images bit for bit;
* the null condition: `null_prompt_embeds` = `encode_prompt(..., [""])`, used both for conditioning dropout in
  training and for the unconditional branch of classifier-free guidance at sampling.
"""
from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)


def tokenize_prompts(tokenizer, prompts: list[str]) -> torch.LongTensor:
    """Token ids `(B, L)` with L = `tokenizer.model_max_length`: BOS, tokens, EOS, then padding.

    Prompts longer than L - 2 tokens are truncated (EOS is kept as the last id); a warning shows the text cut.
    """
    if isinstance(prompts, str):
        raise ValueError("prompts must be a list of strings, not a single string.")
    max_length = tokenizer.model_max_length
    input_ids = tokenizer(
        list(prompts), padding="max_length", max_length=max_length, truncation=True, return_tensors="pt"
    ).input_ids
    untruncated = tokenizer(list(prompts), padding="longest", return_tensors="pt").input_ids
    if untruncated.shape[-1] > max_length:
        # The kept part ends at L - 1 (the last slot is EOS); the untruncated tail's last id is EOS or pad.
        tails = tokenizer.batch_decode(untruncated[:, max_length - 1: -1], skip_special_tokens=True)
        removed = [text for text in tails if text.strip()]
        logger.warning("Prompt truncated to %d tokens; removed text: %s", max_length, removed)
    return input_ids


def encode_prompt(text_encoder, tokenizer, prompts: list[str]) -> torch.Tensor:
    """Text-encoder last hidden states `(B, L, D)` for `prompts`, on the encoder's device and in its dtype.

    Gradients flow when the encoder is trainable; wrap the call in `torch.no_grad()` for a frozen encoder.
    """
    return encode_input_ids(text_encoder, tokenize_prompts(tokenizer, prompts), pad_token_id=tokenizer.pad_token_id)


def encode_input_ids(text_encoder, input_ids: torch.LongTensor, *, pad_token_id: int) -> torch.Tensor:
    """`encode_prompt` for ids already made by `tokenize_prompts` `(B, L)` (trainers tokenize captions once)."""
    input_ids = input_ids.to(text_encoder.device)
    attention_mask = None
    # Stock StableDiffusionPipeline passes a mask only when the config asks for one (CLIP's doesn't).
    if getattr(text_encoder.config, "use_attention_mask", False):
        attention_mask = (input_ids != pad_token_id).long()
    prompt_embeds = text_encoder(input_ids, attention_mask=attention_mask)[0]
    return prompt_embeds.to(dtype=text_encoder.dtype)


def null_prompt_embeds(text_encoder, tokenizer) -> torch.Tensor:
    """The null condition `(1, L, D)`: the empty prompt's embedding, for training dropout and sampling."""
    return encode_prompt(text_encoder, tokenizer, [""])


def drop_mask(batch_size: int, p: float, generator: torch.Generator | None = None,
              device: torch.device | str = "cpu") -> torch.BoolTensor:
    """Which captions to replace by the null condition: `(B,)` bool, each True with probability `p`."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"conditioning dropout probability must be in [0, 1], got {p}.")
    gen_device = generator.device if generator is not None else device
    return (torch.rand(batch_size, generator=generator, device=gen_device) < p).to(device)


def drop_words(captions: list[str], draws: torch.Tensor, p: float) -> list[str]:
    """Caption word dropout: delete word j of caption i where `draws[i, j] < p` (draws: `(B, W)` uniform in
    [0, 1), W at least the most words in a caption). A caption that would lose every word is kept whole, so
    word dropout never turns into conditioning dropout; the empty prompt stays the null condition alone.

    Each word is then also seen without the words it usually comes with, so its own meaning has to reach the
    U-Net (the sentence-caption form of kohya sd-scripts' caption tag dropout).
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"caption word dropout must be in [0, 1), got {p}.")
    if draws.shape[0] != len(captions):
        raise ValueError(f"got {draws.shape[0]} rows of draws for {len(captions)} captions.")
    kept_captions = []
    for caption, row in zip(captions, draws.tolist()):
        words = caption.split()
        if len(words) > len(row):
            raise ValueError(f"{len(words)} words but only {len(row)} draws for caption {caption!r}.")
        kept = [word for word, u in zip(words, row) if u >= p]
        kept_captions.append(" ".join(kept) if kept else caption)
    return kept_captions


def apply_cond_dropout(prompt_embeds: torch.Tensor, null_embeds: torch.Tensor, *, p: float,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """Replace each row of `prompt_embeds` `(B, L, D)` by `null_embeds` `(1, L, D)` with probability `p`.

    Classifier-free guidance training (Ho & Salimans 2022, https://arxiv.org/abs/2207.12598): the same network
    learns ε(x, y) and ε(x) = ε(x, ∅). Draw the mask yourself with `drop_mask` to control its randomness.
    """
    dropped = drop_mask(prompt_embeds.shape[0], p, generator, device=prompt_embeds.device)
    return keep_or_null(prompt_embeds, null_embeds, ~dropped)


def keep_or_null(prompt_embeds: torch.Tensor, null_embeds: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Rows of `prompt_embeds` `(B, L, D)` where `keep` `(B,)` is True, `null_embeds` `(1, L, D)` elsewhere.

    The replacement `apply_cond_dropout` makes, for a mask drawn elsewhere: the trainer draws it for the global
    batch and keeps this process's slice, so the run does not depend on the number of processes.
    """
    null_embeds = null_embeds.to(device=prompt_embeds.device, dtype=prompt_embeds.dtype)
    return torch.where(keep.to(prompt_embeds.device)[:, None, None], prompt_embeds, null_embeds)
