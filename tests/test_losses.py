"""autoencoder/losses.py: gradient routing of the two updates, the disc_start gate, LPIPS gradients, the
adaptive weight against hand computations, and the loss value against the LDM formula."""
import logging

import pytest
import torch

from autoencoder.discriminator import PatchDiscriminator
from autoencoder.losses import AutoencoderLoss, adaptive_weight
from autoencoder.lpips import LPIPS
from tiny_components import tiny_vae


def _setup(disc_start=0, lpips=None, **kwargs):
    vae = tiny_vae().train()
    discriminator = PatchDiscriminator(base_channels=8, n_layers=2)
    loss_fn = AutoencoderLoss(discriminator=discriminator, lpips=lpips, disc_start=disc_start, **kwargs)
    inputs = torch.rand(4, 3, 32, 32) * 2 - 1
    posterior = vae.encode(inputs).latent_dist
    reconstructions = vae.decode(posterior.sample()).sample
    return vae, discriminator, loss_fn, inputs, reconstructions, posterior


def _random_lpips():
    lpips = LPIPS()
    for index in range(5):
        torch.nn.init.uniform_(getattr(lpips, f"lin{index}").model[1].weight, 0.0, 1.0)
    return lpips.requires_grad_(False)


def test_discriminator_update_touches_only_the_discriminator():
    vae, discriminator, loss_fn, inputs, reconstructions, _ = _setup()
    assert reconstructions.requires_grad  # handed over undetached: the loss must detach them itself
    vae_before = {name: p.detach().clone() for name, p in vae.named_parameters()}
    d_before = {name: p.detach().clone() for name, p in discriminator.named_parameters()}
    optimizer = torch.optim.SGD([*vae.parameters(), *discriminator.parameters()], lr=0.1)
    d_loss, logs = loss_fn.discriminator_loss(inputs, reconstructions, global_step=0)
    d_loss.backward()
    assert all(p.grad is None for p in vae.parameters())
    # (the last bias may get an exactly zero gradient: with every hinge active, real and fake pulls cancel)
    assert all(p.grad is not None for p in discriminator.parameters())
    optimizer.step()
    assert all(torch.equal(vae_before[name], p) for name, p in vae.named_parameters())
    assert sum(not torch.equal(d_before[name], p) for name, p in discriminator.named_parameters()) >= 9
    assert set(logs) == {"d_loss", "logits_real", "logits_fake"}


def test_hinge_value_matches_formula():
    _, discriminator, loss_fn, inputs, reconstructions, _ = _setup()
    discriminator.eval()  # fixed BatchNorm statistics, so two forward passes agree
    d_loss, _ = loss_fn.discriminator_loss(inputs, reconstructions, global_step=0)
    with torch.no_grad():
        real, fake = discriminator(inputs), discriminator(reconstructions)
    expected = 0.5 * (torch.relu(1 - real).mean() + torch.relu(1 + fake).mean())
    torch.testing.assert_close(d_loss, expected)


def test_generator_update_leaves_no_gradient_in_the_discriminator():
    vae, discriminator, loss_fn, inputs, reconstructions, posterior = _setup()
    loss, logs = loss_fn.generator_loss(inputs, reconstructions, posterior,
                                        last_layer=vae.decoder.conv_out.weight, global_step=0)
    loss.backward()
    assert all(p.grad is None for p in discriminator.parameters())
    assert all(p.requires_grad for p in discriminator.parameters())  # switched back on for its own update
    assert vae.decoder.conv_out.weight.grad.abs().sum() > 0
    assert {"g_loss", "d_weight"} <= set(logs)


def test_generator_loss_value_matches_the_ldm_formula():
    vae, discriminator, loss_fn, inputs, reconstructions, posterior = _setup(kl_weight=1e-3, disc_weight=0.5)
    discriminator.eval()
    last_layer = vae.decoder.conv_out.weight
    loss, logs = loss_fn.generator_loss(inputs, reconstructions, posterior, last_layer=last_layer,
                                        global_step=5)
    # CompVis reduction: pixel sum per image, batch mean; KL summed per image, batch mean.
    nll = (reconstructions - inputs).abs().sum(dim=(1, 2, 3)).mean()
    kl = (0.5 * (posterior.mean**2 + posterior.var - 1 - posterior.logvar)).sum(dim=(1, 2, 3)).mean()
    g_loss = -discriminator(reconstructions).mean()
    rec_grad = torch.autograd.grad(nll, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    d_weight = 0.5 * (rec_grad.norm() / (g_grad.norm() + 1e-4)).clamp(0, 1e4)
    expected = nll + 1e-3 * kl + d_weight * g_loss
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    assert logs["d_weight"] == pytest.approx(d_weight.item(), rel=1e-5)
    assert logs["rec_loss"] == pytest.approx((reconstructions - inputs).abs().mean().item(), rel=1e-5)


def test_gan_terms_are_zero_and_the_discriminator_is_not_run_before_disc_start():
    setup = _setup(disc_start=100, reconstruction="l2")
    vae, discriminator, loss_fn, inputs, reconstructions, posterior = setup
    calls = []
    discriminator.register_forward_hook(lambda *args: calls.append(1))
    loss, logs = loss_fn.generator_loss(inputs, reconstructions, posterior,
                                        last_layer=vae.decoder.conv_out.weight, global_step=99)
    expected = (reconstructions - inputs).pow(2).sum(dim=(1, 2, 3)).mean() + 1e-6 * posterior.kl().mean()
    torch.testing.assert_close(loss, expected)
    assert "g_loss" not in logs
    d_loss, d_logs = loss_fn.discriminator_loss(inputs, reconstructions, global_step=99)
    assert d_loss.item() == 0.0 and d_logs["d_loss"] == 0.0
    d_loss.backward()  # a training loop may back-propagate it unconditionally
    assert calls == [] and all(p.grad is None for p in discriminator.parameters())
    loss_fn.discriminator_loss(inputs, reconstructions, global_step=100)
    assert calls  # and it switches on at disc_start


def test_lpips_passes_a_nonzero_gradient_to_the_reconstruction():
    torch.manual_seed(0)
    inputs = torch.rand(2, 3, 32, 32) * 2 - 1
    reconstructions = (inputs + 0.2 * torch.randn_like(inputs)).requires_grad_(True)
    posterior = tiny_vae().encode(inputs).latent_dist
    grads = []
    for lpips in (None, _random_lpips()):
        loss_fn = AutoencoderLoss(lpips=lpips, perceptual_weight=1.0)
        loss, logs = loss_fn.generator_loss(inputs, reconstructions, posterior, last_layer=None,
                                            global_step=0)
        grads.append(torch.autograd.grad(loss, reconstructions)[0])
    perceptual_grad = grads[1] - grads[0]
    assert perceptual_grad.abs().sum() > 0 and torch.isfinite(perceptual_grad).all()
    assert logs["perceptual_loss"] > 0


def test_missing_lpips_is_logged(caplog):
    with caplog.at_level(logging.INFO, logger="autoencoder.losses"):
        AutoencoderLoss(lpips=None)
    assert "perceptual loss term is off" in caplog.text


def test_adaptive_weight_matches_closed_form():
    # rec = 3·‖w‖², g = c·w  ⇒  ∇rec = 6w, ∇g = c.
    w = torch.tensor([0.5, -1.0, 2.0], requires_grad=True)
    c = torch.tensor([0.1, 0.2, -0.3])
    weight = adaptive_weight(3 * (w**2).sum(), (c * w).sum(), w)
    expected = (6 * w.detach()).norm() / (c.norm() + 1e-4)
    torch.testing.assert_close(weight, expected)
    assert not weight.requires_grad
    # a vanishing GAN gradient is clamped at 1e4
    assert adaptive_weight(3 * (w**2).sum(), 0.0 * w.sum(), w).item() == 1e4


def test_adaptive_weight_matches_autograd_on_the_decoder():
    vae, discriminator, _, inputs, reconstructions, _ = _setup()
    last_layer = vae.decoder.conv_out.weight
    rec = (reconstructions - inputs).abs().mean()
    g_loss = -discriminator(reconstructions).mean()
    weight = adaptive_weight(rec, g_loss, last_layer)
    rec_grad, = torch.autograd.grad(rec, last_layer, retain_graph=True)
    g_grad, = torch.autograd.grad(g_loss, last_layer, retain_graph=True)
    torch.testing.assert_close(weight, rec_grad.norm() / (g_grad.norm() + 1e-4))
    (rec + weight * g_loss).backward()  # the graphs survive for the real backward


def test_bad_reconstruction_option():
    with pytest.raises(ValueError, match="reconstruction"):
        AutoencoderLoss(reconstruction="huber")
