"""ldm/latent_cache.py: cached posterior statistics against direct VAE encodes; the weights hash."""
import torch

from ldm.latent_cache import encode_dataset, vae_weights_hash
from tiny_components import tiny_vae


def _images(n=6, resolution=32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.rand(n, 3, resolution, resolution, generator=generator) * 2 - 1
    return [{"pixel_values": pixel_values[i], "caption": f"image {i}"} for i in range(n)]


def test_cached_latents_match_direct_vae_encode(tmp_path):
    vae, data = tiny_vae(), _images()
    cache = encode_dataset(vae, data, batch_size=4)
    with torch.no_grad():
        posterior = vae.encode(torch.stack([item["pixel_values"] for item in data])).latent_dist
    assert cache.mean.shape == (6, 4, 8, 8)
    torch.testing.assert_close(cache.mean, posterior.mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cache.std, posterior.std, rtol=1e-5, atol=1e-6)
    assert cache.captions == [item["caption"] for item in data]

    # A drawn latent is the stock posterior sample with the same noise, times the scaling factor.
    scale = 0.7
    indices = torch.tensor([4, 1])
    latents = cache.sample(indices, scaling_factor=scale, generator=torch.Generator().manual_seed(3))
    noise = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(3))
    expected = (posterior.mean[indices] + posterior.std[indices] * noise) * scale
    torch.testing.assert_close(latents, expected, rtol=1e-5, atol=1e-6)


def test_vae_weights_hash_changes_with_the_weights_only():
    vae = tiny_vae()
    assert vae_weights_hash(vae) == vae_weights_hash(tiny_vae())
    with torch.no_grad():
        next(iter(vae.parameters())).add_(1e-3)
    assert vae_weights_hash(vae) != vae_weights_hash(tiny_vae())
