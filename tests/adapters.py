"""Trained-looking LoRA adapters (and new-token vectors) for the tiny pipeline folders of `tiny_components`."""
from __future__ import annotations

from pathlib import Path

import torch

from ldm.lora import adapter_state_dict, add_lora, lora_parameters, resolve_targets, save_lora
from pipelines.folder import load_pipeline


def make_adapter(base: Path, path: Path, *, seed: int, rank: int = 4, alpha: float = 2.0, targets=("attn",),
                 text_encoder: bool = True, fmt: str = "diffusers", extra=None) -> Path:
    """An adapter for the pipeline folder `base`, written to `path` in `fmt`: attached as training does, then
    every A and B drawn at random (B is zero at initialisation, which would make every comparison pass
    trivially). `extra` tensors go into the file too (`ldm.lora.save_lora`)."""
    pipe = load_pipeline(base)
    models = {"unet": pipe.unet}
    add_lora(pipe.unet, rank=rank, alpha=alpha, targets=resolve_targets(targets))
    if text_encoder:
        add_lora(pipe.text_encoder, rank=rank, alpha=alpha, targets=["q_proj", "v_proj", "fc1"])
        models["text_encoder"] = pipe.text_encoder
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for model in models.values():
            for parameter in lora_parameters(model):
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    state_dict, metadata = adapter_state_dict(models)
    return save_lora(path, state_dict, metadata, lora_format=fmt, extra=extra)


def random_vectors(words, *, width: int, seed: int) -> dict[str, torch.Tensor]:
    """{word: (width,)} new-token vectors at the scale of a trained row, random."""
    generator = torch.Generator().manual_seed(seed)
    return {word: torch.randn(width, generator=generator) for word in words}
