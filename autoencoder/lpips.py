"""LPIPS perceptual distance (Zhang et al. 2018, https://arxiv.org/abs/1801.03924), VGG16, in plain torch.

Weights come only from local files the user names, never from a download:
- the VGG16 trunk: a torchvision-format state dict (`features.0.weight` ... `features.28.bias`; the full
  `vgg16-397923af.pth` works, its classifier keys are ignored);
- the linear heads: LPIPS v0.1 `vgg.pth` (`lin0.model.1.weight` ... `lin4.model.1.weight`).
Both may be `.pth`/`.pt`/`.bin` (read with `torch.load(weights_only=True)`) or `.safetensors`.
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

# VGG16 configuration "D": conv widths, "M" = 2x2 max-pool. Built in this order, the nn.Sequential indices
# match torchvision's `vgg16().features`, so its state dict loads unchanged.
VGG16_LAYERS = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
# features[i] output taps: relu1_2, relu2_2, relu3_3, relu4_3, relu5_3.
TAP_INDICES = (3, 8, 15, 22, 29)
TAP_CHANNELS = (64, 128, 256, 512, 512)
# LPIPS' ScalingLayer: the ImageNet statistics expressed for inputs in [-1, 1].
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)


def vgg16_features() -> nn.Sequential:
    """The VGG16 convolutional trunk, indices and parameter names as torchvision's `vgg16().features`."""
    layers: list[nn.Module] = []
    channels = 3
    for item in VGG16_LAYERS:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            # not in-place: the tapped activations must survive the next layer
            layers += [nn.Conv2d(channels, item, kernel_size=3, padding=1), nn.ReLU(inplace=False)]
            channels = item
    return nn.Sequential(*layers)


class LinearHead(nn.Module):
    """A 1x1 convolution to one channel; `model.1` (after LPIPS' dropout slot) matches LPIPS checkpoints."""

    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, kernel_size=1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class LPIPS(nn.Module):
    """d(x, y) = sum over 5 VGG layers of the spatial mean of w_l · (f_l(x) - f_l(y))², with the features f_l
    unit-normalised over channels.

    Inputs: images (B, 3, H, W) in [-1, 1]. Output: (B,) distances >= 0. Always in eval mode (dropout off);
    its parameters are frozen by `load_lpips`, but gradients flow to the inputs, as a perceptual loss needs.
    """

    def __init__(self):
        super().__init__()
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)
        self.features = vgg16_features()
        for index, channels in enumerate(TAP_CHANNELS):
            self.add_module(f"lin{index}", LinearHead(channels))

    def train(self, mode: bool = True) -> LPIPS:
        """Stay in eval mode even when a parent module is switched to training (the heads hold a dropout)."""
        return super().train(False)

    def _taps(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Unit-normalised activations at the five taps: list of (B, C_l, H_l, W_l)."""
        h = (images - self.shift) / self.scale
        taps = []
        for index, layer in enumerate(self.features[: TAP_INDICES[-1] + 1]):
            h = layer(h)
            if index in TAP_INDICES:
                taps.append(h / (h.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10))
        return taps

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        distance = x.new_zeros(x.shape[0])
        for index, (fx, fy) in enumerate(zip(self._taps(x), self._taps(y))):
            head = getattr(self, f"lin{index}")
            distance = distance + head((fx - fy).pow(2)).mean(dim=(1, 2, 3))
        return distance


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"LPIPS weights file not found: {path}")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def load_lpips(vgg_path: str | Path, heads_path: str | Path) -> LPIPS:
    """LPIPS with a torchvision-format VGG16 state dict and LPIPS v0.1 linear heads, both from local files.

    Returns a frozen module (eval, requires_grad False on every parameter) on the CPU; move it with
    `.to(device)`.
    """
    lpips = LPIPS()
    vgg = {key[len("features."):]: value for key, value in _read_state_dict(Path(vgg_path)).items()
           if key.startswith("features.")}
    if not vgg:
        raise ValueError(f"{vgg_path} holds no `features.*` keys; expected a torchvision VGG16 state dict.")
    lpips.features.load_state_dict(vgg)
    heads = _read_state_dict(Path(heads_path))
    expected = [f"lin{index}.model.1.weight" for index in range(len(TAP_CHANNELS))]
    missing = [key for key in expected if key not in heads]
    if missing:
        raise ValueError(f"{heads_path} lacks LPIPS head weights {missing}; expected LPIPS v0.1 vgg.pth.")
    lpips.load_state_dict({key: heads[key] for key in expected}, strict=False)  # the trunk is loaded above
    lpips.requires_grad_(False)
    return lpips.eval()
