"""Latent cache in memory: the posterior of every image of a small data set, and the VAE weights hash that keys
every latent cache.

The VAE is frozen during stage 2, so encoding every image every step (as the diffusers examples do) repeats
the same work. We keep the posterior q(z|x) = N(mean, std²) of every image instead and draw
`latents = (mean + std * noise) * vae.config.scaling_factor` each step, which is exactly what
`vae.encode(x).latent_dist.sample() * scaling_factor` would give, minus the encoder.

Training keeps this on disk instead (ldm/latent_shards.py, built by ldm/encode_shards.py), so that memory does
not grow with the data; the in-memory form serves the benchmarks that compare against it and encode small
evaluation sets.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader


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
