"""autoencoder/scaling.py: the measured factor against a direct std of posterior samples on the tiny VAE."""
import pytest
import torch

from autoencoder.scaling import measure_scaling_factor
from tiny_components import tiny_vae


def test_factor_is_one_over_the_std_of_all_posterior_samples():
    vae = tiny_vae()
    batches = [torch.rand(3, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1]
    factor = measure_scaling_factor(vae, iter(batches), generator=torch.Generator().manual_seed(7))
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        samples = [vae.encode(b).latent_dist.sample(generator=generator) for b in batches]
    expected = 1.0 / torch.cat([s.flatten() for s in samples]).double().std().item()
    assert factor == pytest.approx(expected, rel=1e-6)
    scaled = torch.cat([s.flatten() for s in samples]) * factor
    assert scaled.std().item() == pytest.approx(1.0, rel=1e-5)


def test_no_batches_is_an_error():
    with pytest.raises(ValueError, match="at least one batch"):
        measure_scaling_factor(tiny_vae(), [])
