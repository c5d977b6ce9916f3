"""The pix2pix N-layer PatchGAN discriminator (Isola et al. 2017, https://arxiv.org/abs/1611.07004)."""
from __future__ import annotations

import torch
from torch import nn


class PatchDiscriminator(nn.Module):
    """Classifies overlapping patches as real or reconstructed.

    Input: images (B, in_channels, H, W) in [-1, 1]. Output: logits (B, 1, h, w), one per patch; each logit
    sees a receptive field of 70 px for n_layers=3. Layers are conv(4x4) - BatchNorm - LeakyReLU(0.2),
    channels doubling per layer up to 8 * base_channels, as in pix2pix and the LDM autoencoder.
    """

    def __init__(self, *, in_channels: int = 3, base_channels: int = 64, n_layers: int = 3):
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"PatchDiscriminator needs n_layers >= 1, got {n_layers}.")
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, base_channels, kernel_size=4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
        ]
        channels = base_channels
        for index in range(1, n_layers + 1):
            out_channels = base_channels * min(2**index, 8)
            stride = 2 if index < n_layers else 1  # the last block keeps the resolution, as in pix2pix
            layers += [
                # no bias: BatchNorm's shift makes it redundant
                nn.Conv2d(channels, out_channels, kernel_size=4, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(out_channels),
                nn.LeakyReLU(0.2),
            ]
            channels = out_channels
        layers.append(nn.Conv2d(channels, 1, kernel_size=4, stride=1, padding=1))
        self.main = nn.Sequential(*layers)
        self.apply(_init_weights)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.main(images)


def _init_weights(module: nn.Module) -> None:
    """pix2pix initialisation: conv weights ~ N(0, 0.02); BatchNorm scale ~ N(1, 0.02), shift 0."""
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)
