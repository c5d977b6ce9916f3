"""ldm/latent_cache.py: cached posterior statistics against direct VAE encodes; cache reuse and invalidation."""
import torch

from ldm.latent_cache import CACHE_FILE, load_or_encode
from tiny_components import tiny_vae


def _images(n=6, resolution=32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.rand(n, 3, resolution, resolution, generator=generator) * 2 - 1
    return [{"pixel_values": pixel_values[i], "caption": f"image {i}"} for i in range(n)]


def test_cached_latents_match_direct_vae_encode(tmp_path):
    vae, data = tiny_vae(), _images()
    cache = load_or_encode(vae, data, cache_dir=tmp_path, source="x", resolution=32, batch_size=4)
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


def test_cache_is_reused_and_invalidated(tmp_path):
    vae, data = tiny_vae(), _images()
    first = load_or_encode(vae, data, cache_dir=tmp_path, source="x", resolution=32)
    stamp = (tmp_path / CACHE_FILE).stat().st_mtime_ns

    # Same key: reused even though the data handed in differs (it is not read).
    other = _images(seed=1)
    again = load_or_encode(vae, other, cache_dir=tmp_path, source="x", resolution=32)
    assert (tmp_path / CACHE_FILE).stat().st_mtime_ns == stamp
    torch.testing.assert_close(again.mean, first.mean)

    # Each key field invalidates: data source, resolution, VAE weights.
    changed = load_or_encode(vae, other, cache_dir=tmp_path, source="y", resolution=32)
    assert not torch.allclose(changed.mean, first.mean)
    back = load_or_encode(vae, data, cache_dir=tmp_path, source="x", resolution=32)
    torch.testing.assert_close(back.mean, first.mean)
    resized = load_or_encode(vae, _images(resolution=16), cache_dir=tmp_path, source="x", resolution=16)
    assert resized.mean.shape == (6, 4, 4, 4)
    with torch.no_grad():
        next(iter(vae.parameters())).add_(0.1)
    new_vae = load_or_encode(vae, data, cache_dir=tmp_path, source="x", resolution=16 * 2)
    assert not torch.allclose(new_vae.mean, first.mean)
