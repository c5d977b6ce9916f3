"""Stage 1: the KL autoencoder's architectures, losses, discriminator, LPIPS, metrics and latent scale."""
from autoencoder.discriminator import PatchDiscriminator
from autoencoder.losses import AutoencoderLoss, adaptive_weight
from autoencoder.lpips import LPIPS, load_lpips
from autoencoder.metrics import psnr, ssim
from autoencoder.presets import VAE_PRESETS, build_vae, vae_scale_factor
from autoencoder.scaling import measure_scaling_factor

__all__ = [
    "AutoencoderLoss", "LPIPS", "PatchDiscriminator", "VAE_PRESETS", "adaptive_weight", "build_vae",
    "load_lpips", "measure_scaling_factor", "psnr", "ssim", "vae_scale_factor",
]
