"""Latent cache: encode a dataset once with the frozen VAE, then draw a fresh latent per training step.

The VAE is frozen during stage 2, so encoding every image every step (as the diffusers examples do) repeats
the same work. We keep the posterior q(z|x) = N(mean, std²) of every image instead and draw
`latents = (mean + std * noise) * vae.config.scaling_factor` each step, which is exactly what
`vae.encode(x).latent_dist.sample() * scaling_factor` would give, minus the encoder.

The cache is written to `<dir>/latent_cache.safetensors` (mean, std) plus `<dir>/latent_cache_captions.json`,
both tagged with a key (data source, resolution, VAE weights hash); a later run with the same key reuses it,
any change re-encodes. Augmentation is therefore fixed at encode time (use `crop="center"`).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader

logger = logging.getLogger(__name__)

CACHE_FILE = "latent_cache.safetensors"
CAPTIONS_FILE = "latent_cache_captions.json"
CACHE_VERSION = "1"  # bump when the stored layout changes, so old caches are re-encoded


@dataclass
class LatentCache:
    """Posterior statistics of a whole dataset, kept on the CPU.

    mean, std: (N, C, h, w) float32, unscaled (the VAE's own latent units); captions: N strings.
    """

    mean: torch.Tensor
    std: torch.Tensor
    captions: list[str]

    def __len__(self) -> int:
        return self.mean.shape[0]

    @property
    def max_words(self) -> int:
        """The most words in a caption (the columns of caption word-dropout draws)."""
        return max(len(caption.split()) for caption in self.captions)

    def latent_shape(self, index: int) -> tuple[int, int, int]:
        """(C, h, w) of item `index` (the same for every item here)."""
        return tuple(self.mean.shape[1:])

    def posterior(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) of q(z|x) for `indices`: float32 (len(indices), C, h, w)."""
        return self.mean[indices], self.std[indices]

    def captions_of(self, indices: torch.Tensor) -> list[str]:
        return [self.captions[i] for i in indices.tolist()]

    def sample(self, indices: torch.Tensor, *, scaling_factor: float,
               generator: torch.Generator) -> torch.Tensor:
        """A fresh latent per index: (len(indices), C, h, w) = (mean + std · ε) · scaling_factor, ε ~ N(0, I).

        ε is drawn on the CPU from `generator`: the result depends on the generator state, not the device.
        """
        mean, std = self.mean[indices], self.std[indices]
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
        return (mean + std * noise) * scaling_factor


def vae_weights_hash(vae: torch.nn.Module) -> str:
    """sha256 (16 hex chars) of the VAE's parameter names, shapes and bytes: changes iff the weights do."""
    digest = hashlib.sha256()
    for name, tensor in sorted(vae.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def cache_key(*, source: str, resolution: int, vae: torch.nn.Module) -> dict[str, str]:
    """What a cache depends on; any change invalidates it."""
    return {"version": CACHE_VERSION, "source": str(source), "resolution": str(resolution),
            "vae": vae_weights_hash(vae)}


@torch.no_grad()
def encode_dataset(vae, dataset, *, batch_size: int = 32, device: str | torch.device = "cpu",
                   num_workers: int = 0) -> LatentCache:
    """Encode every item of `dataset` (items {"pixel_values": (3, R, R) in [-1, 1], "caption": str}).

    Works for map-style and iterable datasets; returns float32 mean/std (N, C, R/f, R/f) on the CPU.
    """
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    means, stds, captions = [], [], []
    dtype = next(vae.parameters()).dtype
    for batch in loader:
        posterior = vae.encode(batch["pixel_values"].to(device=device, dtype=dtype)).latent_dist
        means.append(posterior.mean.float().cpu())
        stds.append(posterior.std.float().cpu())
        captions.extend(batch["caption"])
    if not captions:
        raise ValueError("The dataset yielded no images to encode.")
    # contiguous: the encoder may hand back channels-last views, and a U-Net fed those sums in another order
    # than after a reload from disk, which would break bit-exact resume.
    mean, std = torch.cat(means).contiguous(), torch.cat(stds).contiguous()
    return LatentCache(mean=mean, std=std, captions=list(captions))


def save_cache(cache: LatentCache, cache_dir: str | Path, *, key: dict[str, str]) -> None:
    """Write both files atomically (temporary name, then rename), tagged with `key`."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp_tensors, tmp_captions = cache_dir / (CACHE_FILE + ".tmp"), cache_dir / (CAPTIONS_FILE + ".tmp")
    tensors = {"mean": cache.mean.contiguous(), "std": cache.std.contiguous()}
    save_file(tensors, str(tmp_tensors), metadata=key)
    tmp_captions.write_text(json.dumps({"key": key, "captions": cache.captions}))
    os.replace(tmp_captions, cache_dir / CAPTIONS_FILE)
    os.replace(tmp_tensors, cache_dir / CACHE_FILE)


def load_cache(cache_dir: str | Path, *, key: dict[str, str]) -> LatentCache | None:
    """The cache in `cache_dir` if both files exist and carry `key`; None otherwise."""
    tensors_path, captions_path = Path(cache_dir) / CACHE_FILE, Path(cache_dir) / CAPTIONS_FILE
    if not (tensors_path.is_file() and captions_path.is_file()):
        return None
    with safe_open(str(tensors_path), framework="pt") as handle:
        if handle.metadata() != key:
            return None
    stored = json.loads(captions_path.read_text())
    if stored.get("key") != key:
        return None
    tensors = load_file(str(tensors_path))
    if len(stored["captions"]) != tensors["mean"].shape[0]:
        return None
    return LatentCache(mean=tensors["mean"], std=tensors["std"], captions=stored["captions"])


def load_or_encode(vae, dataset, *, cache_dir: str | Path, source: str, resolution: int, batch_size: int = 32,
                   device: str | torch.device = "cpu") -> LatentCache:
    """The cache in `cache_dir` if its key (source, resolution, VAE weights) matches; else encode, save it."""
    key = cache_key(source=source, resolution=resolution, vae=vae)
    cache = load_cache(cache_dir, key=key)
    if cache is not None:
        logger.info("Reusing latent cache in %s (%d images).", cache_dir, len(cache))
        return cache
    logger.info("Encoding the dataset with the frozen VAE into %s.", cache_dir)
    cache = encode_dataset(vae, dataset, batch_size=batch_size, device=device)
    save_cache(cache, cache_dir, key=key)
    return cache
