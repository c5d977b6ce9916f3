"""The LDM autoencoder objective (Rombach et al. 2022, https://arxiv.org/abs/2112.10752, appendix G), as in
CompVis' `contperceptual.py`: reconstruction (L1 or L2) + LPIPS + KL + hinge PatchGAN with an adaptive weight.

Reductions follow CompVis so that the paper's kl_weight = 1e-6 keeps its meaning: the reconstruction and LPIPS
terms are summed over pixels (LPIPS counted once per pixel), the KL over latent elements, both averaged over
the batch. The GAN term's weight is adaptive, so it does not depend on these reductions.

Two updates per step, each with its own optimizer:
    loss, logs = loss_fn.generator_loss(x, rec, posterior, last_layer=vae.decoder.conv_out.weight,
                                        global_step=s)
    d_loss, d_logs = loss_fn.discriminator_loss(x, rec, global_step=s)   # detaches x and rec itself
"""
from __future__ import annotations

import contextlib
import logging

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

ADAPTIVE_WEIGHT_EPS = 1e-4  # keeps the ratio finite when the GAN gradient vanishes
ADAPTIVE_WEIGHT_MAX = 1e4  # CompVis' clamp: a near-zero GAN gradient must not blow the weight up


def adaptive_weight(rec_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor) -> torch.Tensor:
    """λ = ‖∇_last rec_loss‖ / (‖∇_last g_loss‖ + 1e-4), clamped to [0, 1e4] and detached (VQGAN eq. 7,
    https://arxiv.org/abs/2012.09841).

    rec_loss, g_loss: scalars whose graphs reach `last_layer` (the decoder's last weight). Returns a 0-dim
    tensor. The graphs are retained, so both losses can still be back-propagated.
    """
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    weight = rec_grad.norm() / (g_grad.norm() + ADAPTIVE_WEIGHT_EPS)
    return weight.clamp(0.0, ADAPTIVE_WEIGHT_MAX).detach()


@contextlib.contextmanager
def _frozen(module: nn.Module):
    """Run `module` without recording gradients for its parameters (they still flow to its inputs)."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield module
    finally:
        for p, flag in zip(module.parameters(), flags):
            p.requires_grad_(flag)


class AutoencoderLoss(nn.Module):
    """Generator and discriminator losses of the KL autoencoder.

    discriminator: a PatchDiscriminator (or any images -> logits module), or None for no GAN term.
    lpips: an LPIPS module (frozen) or None; None turns the perceptual term off, said once in the log.
    reconstruction: "l1" or "l2". disc_start: the global step from which the GAN terms are on; before it the
    discriminator is not even run.
    """

    def __init__(
        self, *, discriminator: nn.Module | None = None, lpips: nn.Module | None = None,
        reconstruction: str = "l1", perceptual_weight: float = 1.0, kl_weight: float = 1e-6,
        disc_weight: float = 0.5, disc_start: int = 0,
    ):
        super().__init__()
        if reconstruction not in ("l1", "l2"):
            raise ValueError(f"reconstruction must be 'l1' or 'l2', got {reconstruction!r}.")
        self.discriminator = discriminator
        self.lpips = lpips
        self.reconstruction = reconstruction
        self.perceptual_weight = perceptual_weight
        self.kl_weight = kl_weight
        self.disc_weight = disc_weight
        self.disc_start = disc_start
        if lpips is None and perceptual_weight > 0:
            logger.info("LPIPS weights not given: the perceptual loss term is off.")

    def gan_active(self, global_step: int) -> bool:
        """True when the GAN terms count at this step (a discriminator is set and disc_start is reached)."""
        return self.discriminator is not None and self.disc_weight > 0 and global_step >= self.disc_start

    def _reconstruction_loss(
        self, inputs: torch.Tensor, reconstructions: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Per-sample pixel sum of |x - x̂| (or squared) + perceptual_weight · LPIPS · pixels, batch mean."""
        error = reconstructions - inputs.detach()
        pixel = error.abs() if self.reconstruction == "l1" else error.pow(2)
        per_pixel = pixel.mean(dim=(1, 2, 3))
        logs = {"rec_loss": per_pixel.mean().item()}
        if self.lpips is not None and self.perceptual_weight > 0:
            perceptual = self.lpips(inputs.detach().contiguous(), reconstructions.contiguous())
            per_pixel = per_pixel + self.perceptual_weight * perceptual
            logs["perceptual_loss"] = perceptual.mean().item()
        return (per_pixel * inputs[0].numel()).mean(), logs

    def generator_loss(
        self, inputs: torch.Tensor, reconstructions: torch.Tensor, posterior, *, last_layer: torch.Tensor,
        global_step: int,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The autoencoder's loss. inputs, reconstructions: (B, C, H, W) in [-1, 1]; posterior: the VAE's
        DiagonalGaussianDistribution; last_layer: `vae.decoder.conv_out.weight`. Returns (scalar loss, logs).

        The discriminator's parameters get no gradient from this loss. With grad mode off (validation) the
        adaptive weight cannot be computed and the GAN term is left out.
        """
        nll_loss, logs = self._reconstruction_loss(inputs, reconstructions)
        kl_loss = posterior.kl().mean()
        loss = nll_loss + self.kl_weight * kl_loss
        logs.update(nll_loss=nll_loss.item(), kl_loss=kl_loss.item())
        if self.gan_active(global_step) and torch.is_grad_enabled():
            # The unwrapped module: no DDP gradient sync is wanted for a pass that trains only the generator.
            with _frozen(getattr(self.discriminator, "module", self.discriminator)) as discriminator:
                g_loss = -discriminator(reconstructions.contiguous()).mean()
            d_weight = adaptive_weight(nll_loss, g_loss, last_layer) * self.disc_weight
            loss = loss + d_weight * g_loss
            logs.update(g_loss=g_loss.item(), d_weight=d_weight.item())
        logs["loss"] = loss.item()
        return loss, logs

    def discriminator_loss(
        self, inputs: torch.Tensor, reconstructions: torch.Tensor, *, global_step: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Hinge loss 0.5 · (mean relu(1 - D(x)) + mean relu(1 + D(x̂))) on detached inputs and
        reconstructions.

        Before disc_start (or without a discriminator) the discriminator is not run and the loss is a zero
        leaf that still back-propagates (to nothing), so a training loop may call it unconditionally.
        """
        if not self.gan_active(global_step):
            return torch.zeros((), device=inputs.device, requires_grad=True), {"d_loss": 0.0}
        logits_real = self.discriminator(inputs.detach().contiguous())
        logits_fake = self.discriminator(reconstructions.detach().contiguous())
        d_loss = 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())
        logs = {"d_loss": d_loss.item(), "logits_real": logits_real.mean().item(),
                "logits_fake": logits_fake.mean().item()}
        return d_loss, logs
