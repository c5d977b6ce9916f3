"""The denoising U-Net: a diffusers `UNet2DConditionModel` by preset, from a config JSON, or pretrained."""
from __future__ import annotations

import inspect
import json
import logging
from pathlib import Path

from diffusers import UNet2DConditionModel

logger = logging.getLogger(__name__)

_CROSS_2 = dict(down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))
# Architecture presets. diffusers' `attention_head_dim` is (for historical reasons) the number of heads per
# block; the CPU presets use 32-channel heads so that the heads divide every block's channels.
UNET_PRESETS: dict[str, dict] = {
    # The quickstart's U-Net: a quarter of cpu-small's width, three times its steps per second on 2 CPU cores
    # (8x8 latents, batch 64), which bought more adherence per minute than width did; 1.1 M parameters.
    # Two normalisation groups (16 and 32 channels each): diffusers' default of 32 groups is one channel per
    # group at this width, an instance norm that drops each channel's level and contrast at every block; on
    # the quickstart's data, seen adherence went from 81% to 100% at w = 1 (docs/experiments.md).
    "cpu-tiny": dict(block_out_channels=(32, 64), layers_per_block=1, attention_head_dim=(1, 2),
                     norm_num_groups=2, **_CROSS_2),
    # 8–16 px latents on a CPU: two resolutions, cross-attention at both (text matters at every scale);
    # 4.3 M parameters with a 128-wide text encoder.
    "cpu-small": dict(block_out_channels=(64, 128), layers_per_block=1, attention_head_dim=(2, 4),
                      **_CROSS_2),
    # Four times the compute of cpu-small; 16.7 M parameters with a 128-wide text encoder.
    "cpu-base": dict(block_out_channels=(128, 256), layers_per_block=1, attention_head_dim=(4, 8),
                     **_CROSS_2),
    # Stable Diffusion 1.x (860 M parameters); pair with the clip-vit-l text encoder (768 wide).
    "sd15": dict(block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, attention_head_dim=8,
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3),
}


def _check_groups(config: dict) -> None:
    """GroupNorm needs its groups to divide every block's channels; say so in one line, not in diffusers'.
    Keys the config leaves out take `UNet2DConditionModel`'s own defaults."""
    defaults = inspect.signature(UNet2DConditionModel.__init__).parameters
    groups = config.get("norm_num_groups", defaults["norm_num_groups"].default)
    channels = list(config.get("block_out_channels", defaults["block_out_channels"].default))
    if groups < 1 or any(c % groups for c in channels):
        raise ValueError(f"norm_num_groups {groups} must divide every block's channels {channels}.")


def _unet_from_preset(preset: str, *, cross_attention_dim: int, sample_size: int, in_channels: int,
                      overrides: dict) -> UNet2DConditionModel:
    if preset not in UNET_PRESETS:
        raise ValueError(f"unknown U-Net preset {preset!r}; choose one of {sorted(UNET_PRESETS)}.")
    config = {**UNET_PRESETS[preset], **overrides}
    _check_groups(config)
    return UNet2DConditionModel(sample_size=sample_size, in_channels=in_channels, out_channels=in_channels,
                                cross_attention_dim=cross_attention_dim, **config)


def _unet_from_config(config_path: Path, *, cross_attention_dim: int, sample_size: int,
                      overrides: dict) -> UNet2DConditionModel:
    if not config_path.is_file():
        raise FileNotFoundError(f"U-Net config file not found: {config_path}")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{config_path} is not valid JSON ({err}).") from None
    if config.get("cross_attention_dim", cross_attention_dim) != cross_attention_dim:
        logger.info("U-Net config cross_attention_dim %s replaced by the text encoder's width %d.",
                    config["cross_attention_dim"], cross_attention_dim)
    config.update(cross_attention_dim=cross_attention_dim, sample_size=sample_size, **overrides)
    _check_groups(config)
    return UNet2DConditionModel.from_config(config)


def _unet_from_pretrained(path: Path, *, cross_attention_dim: int, sample_size: int) -> UNet2DConditionModel:
    if not path.is_dir():
        raise FileNotFoundError(f"pretrained U-Net folder not found: {path}")
    folder = path / "unet" if (path / "unet").is_dir() else path  # a pipeline folder or its unet/ folder
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} has no config.json: expected a U-Net folder or a pipeline "
                                f"folder with unet/.")
    try:
        unet = UNet2DConditionModel.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"could not load the U-Net from {folder}: {first_line}") from None
    widths = unet.config.cross_attention_dim
    widths = set(widths) if isinstance(widths, (list, tuple)) else {widths}
    if widths != {cross_attention_dim}:
        raise ValueError(f"the U-Net in {folder} expects text embeddings of width {sorted(widths)}, but the "
                         f"text encoder gives {cross_attention_dim}.")
    if unet.config.sample_size != sample_size:
        # Convolutions work at any size; sample_size only sets the pipeline's default resolution.
        logger.info("U-Net sample_size %s set to the training latent size %d.", unet.config.sample_size,
                    sample_size)
        unet.register_to_config(sample_size=sample_size)
    return unet


def build_unet(*, preset: str | None = None, config_path: str | Path | None = None,
               pretrained: str | Path | None = None, cross_attention_dim: int, sample_size: int,
               in_channels: int = 4, norm_num_groups: int | None = None) -> UNet2DConditionModel:
    """A `UNet2DConditionModel` from exactly one of `preset`, `config_path` (a U-Net config JSON) or
    `pretrained` (a `unet/` folder or a pipeline folder containing one). `norm_num_groups` replaces the
    preset's or config's GroupNorm groups; it must divide every block's channels.

    Input `(B, in_channels, sample_size, sample_size)` latents, `(B,)` timesteps and
    `(B, L, cross_attention_dim)` prompt_embeds; output `.sample` like the latents. `cross_attention_dim` must
    be the text encoder's hidden size; `in_channels` the VAE's latent channels (presets only: a config file or
    a pretrained U-Net keeps its own).
    """
    sources = [s for s in (preset, config_path, pretrained) if s is not None]
    if len(sources) != 1:
        raise ValueError("give exactly one U-Net source: preset, config_path or pretrained.")
    if sample_size < 1 or cross_attention_dim < 1:
        raise ValueError(f"sample_size and cross_attention_dim must be positive, got {sample_size} and "
                         f"{cross_attention_dim}.")
    overrides = {} if norm_num_groups is None else {"norm_num_groups": norm_num_groups}
    if overrides and pretrained is not None:
        raise ValueError("norm_num_groups cannot change a pretrained U-Net (its weights were trained with its "
                         "own normalisation).")
    if preset is not None:
        return _unet_from_preset(preset, cross_attention_dim=cross_attention_dim, sample_size=sample_size,
                                 in_channels=in_channels, overrides=overrides)
    if config_path is not None:
        return _unet_from_config(Path(config_path), cross_attention_dim=cross_attention_dim,
                                 sample_size=sample_size, overrides=overrides)
    return _unet_from_pretrained(Path(pretrained), cross_attention_dim=cross_attention_dim,
                                 sample_size=sample_size)
