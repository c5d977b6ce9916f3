"""Named AutoencoderKL architectures and the one function that builds a VAE from a preset, JSON or folder."""
from __future__ import annotations

import inspect
import json
import logging
from pathlib import Path

from diffusers import AutoencoderKL

logger = logging.getLogger(__name__)

# A fresh VAE's latent scale is unknown until measured (autoencoder.scaling.measure_scaling_factor);
# 1.0 means "unscaled", never SD's 0.18215, which belongs to SD's trained weights only.
UNMEASURED_SCALING_FACTOR = 1.0

VAE_PRESETS: dict[str, dict] = {
    # f = 4 (three blocks, two downsamples): 32 px images <-> 8x8x4 latents. Small enough to train on
    # 2 CPU cores at 32-64 px (baseline: ~190 img/s at 32 px, batch 32, L1 + KL; 31 dB PSNR in 4 minutes).
    "cpu-f4": dict(
        in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 64), layers_per_block=1, norm_num_groups=32, sample_size=32,
    ),
    # f = 8 (four blocks, three downsamples): 64 px images <-> 8x8x4 latents, so stage 2 at 64 px costs what it
    # costs at 32 px with cpu-f4. cpu-f4's widths plus one 64-wide block at 8x8, which adds little to a step.
    "cpu-f8": dict(
        in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(32, 64, 64, 64), layers_per_block=1, norm_num_groups=32, sample_size=64,
    ),
    # The Stable Diffusion v1/v2 VAE architecture (f = 8, 4 latent channels); its weights are not included.
    "sd-f8": dict(
        in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32, sample_size=512,
    ),
}


def build_vae(
    *, preset: str | None = None, config_path: str | Path | None = None, pretrained: str | Path | None = None,
    sample_size: int | None = None,
) -> AutoencoderKL:
    """Build an AutoencoderKL from exactly one of: a preset name, a JSON file of AutoencoderKL keyword
    arguments (a diffusers `config.json` works too), or a pretrained diffusers VAE folder (or a pipeline
    folder with `vae/`).

    sample_size: the training resolution in pixels, recorded in the config of a fresh VAE; a pretrained VAE
    keeps its own config. Fresh VAEs get scaling_factor 1.0 until it is measured.
    """
    given = {"preset": preset, "config_path": config_path, "pretrained": pretrained}
    chosen = [name for name, value in given.items() if value is not None]
    if len(chosen) != 1:
        raise ValueError(f"Give exactly one of preset, config_path or pretrained (got {chosen or 'none'}).")
    if pretrained is not None:
        return _load_pretrained(Path(pretrained))
    kwargs = _preset_kwargs(preset) if preset is not None else _config_kwargs(Path(config_path))
    kwargs.setdefault("scaling_factor", UNMEASURED_SCALING_FACTOR)
    if sample_size is not None:
        kwargs["sample_size"] = sample_size
    return AutoencoderKL(**kwargs)


def vae_scale_factor(vae: AutoencoderKL) -> int:
    """Pixels per latent cell along each side: 2 ** (number of VAE blocks - 1), as diffusers' pipelines count."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def _preset_kwargs(preset: str) -> dict:
    if preset not in VAE_PRESETS:
        raise ValueError(f"Unknown VAE preset {preset!r}; choose one of {sorted(VAE_PRESETS)}.")
    return dict(VAE_PRESETS[preset])


def _config_kwargs(path: Path) -> dict:
    """AutoencoderKL keyword arguments from a JSON file, minus diffusers' `_private` keys."""
    if not path.is_file():
        raise FileNotFoundError(f"VAE config file not found: {path}")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"VAE config {path} is not valid JSON: {error}") from None
    if not isinstance(config, dict):
        raise ValueError(f"VAE config {path} must hold a JSON object of AutoencoderKL arguments.")
    config = {key: value for key, value in config.items() if not key.startswith("_")}
    accepted = set(inspect.signature(AutoencoderKL.__init__).parameters) - {"self"}
    unknown = sorted(set(config) - accepted)
    if unknown:
        raise ValueError(f"VAE config {path} has keys AutoencoderKL does not take: {unknown}.")
    return config


def _load_pretrained(folder: Path) -> AutoencoderKL:
    """A local diffusers VAE folder, or a pipeline folder whose VAE sits in `vae/`. Never downloads."""
    if (folder / "config.json").is_file():
        return AutoencoderKL.from_pretrained(str(folder), local_files_only=True)
    if (folder / "vae" / "config.json").is_file():
        return AutoencoderKL.from_pretrained(str(folder), subfolder="vae", local_files_only=True)
    raise FileNotFoundError(f"No diffusers VAE at {folder} (expected config.json there or in vae/).")
