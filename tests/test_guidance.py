"""ldm/guidance.py: batch order [uncond, cond] and ε̄ = (w+1)·ε(x, y) − w·ε(x), vs two U-Net calls."""

import pytest
import torch
from tiny_components import TINY_HIDDEN, tiny_unet

from ldm.guidance import apply_guidance, cfg_batch, do_guidance, guidance_scale_from_weight


def test_cfg_batch_puts_uncond_first():
    uncond, cond = torch.zeros(2, 3), torch.ones(2, 3)
    batch = cfg_batch(uncond, cond)
    assert batch.shape == (4, 3)
    assert torch.equal(batch[:2], uncond) and torch.equal(batch[2:], cond)


def test_cfg_batch_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        cfg_batch(torch.zeros(2, 3), torch.zeros(1, 3))


@pytest.mark.parametrize("guidance_scale", [0.0, 1.0, 4.0, 7.5])
def test_apply_guidance_is_the_paper_formula(guidance_scale):
    eps_uncond, eps_cond = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    w = guidance_scale - 1
    expected = (w + 1) * eps_cond - w * eps_uncond  # Ho & Salimans 2022, eq. 6
    got = apply_guidance(cfg_batch(eps_uncond, eps_cond), guidance_scale)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("w", [0.0, 1.0, 2.5, 8.0])
def test_guidance_weight_maps_to_the_scale_that_gives_the_paper_formula(w):
    eps_uncond, eps_cond = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    got = apply_guidance(cfg_batch(eps_uncond, eps_cond), guidance_scale_from_weight(w))
    torch.testing.assert_close(got, (w + 1) * eps_cond - w * eps_uncond, atol=1e-5, rtol=1e-5)


def test_do_guidance_skips_uncond_branch_at_w_zero():
    assert not do_guidance(1.0) and not do_guidance(0.5)
    assert do_guidance(1.01) and do_guidance(7.5)


def test_one_batched_unet_call_equals_two_separate_calls():
    unet = tiny_unet()
    latents = torch.randn(2, 4, 8, 8)
    cond, uncond = torch.randn(2, 16, TINY_HIDDEN), torch.randn(2, 16, TINY_HIDDEN)
    t, guidance_scale = torch.tensor(500), 5.0
    with torch.no_grad():
        batched = unet(cfg_batch(latents, latents), t, encoder_hidden_states=cfg_batch(uncond, cond)).sample
        eps_cond = unet(latents, t, encoder_hidden_states=cond).sample
        eps_uncond = unet(latents, t, encoder_hidden_states=uncond).sample
    w = guidance_scale - 1
    torch.testing.assert_close(
        apply_guidance(batched, guidance_scale), (w + 1) * eps_cond - w * eps_uncond, atol=1e-4, rtol=1e-4
    )
