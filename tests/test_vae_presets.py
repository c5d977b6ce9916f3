"""autoencoder/presets.py: presets against stock AutoencoderKL, JSON configs, pretrained folders, errors."""
import json

import pytest
import torch
from diffusers import AutoencoderKL

from autoencoder.presets import VAE_PRESETS, build_vae
from tiny_components import tiny_vae

SD_VAE_PARAMETERS = 83_653_863  # stable-diffusion-v1-5/vae/diffusion_pytorch_model: 83.65 M parameters


def _public(config) -> dict:
    """A diffusers config without its bookkeeping keys (_class_name, _diffusers_version, ...)."""
    return {key: value for key, value in config.items() if not key.startswith("_")}


def test_cpu_f4_downsamples_by_4_and_is_unscaled():
    vae = build_vae(preset="cpu-f4", sample_size=32)
    assert vae.config.scaling_factor == 1.0  # not SD's 0.18215: a fresh VAE is unmeasured
    assert vae.config.sample_size == 32
    pixel_values = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        latents = vae.encode(pixel_values).latent_dist.mode()
        decoded = vae.decode(latents).sample
    assert latents.shape == (2, 4, 8, 8)
    assert decoded.shape == pixel_values.shape


def test_cpu_f8_gives_64_px_images_the_8x8_latents_cpu_f4_gives_32_px():
    f4, f8 = build_vae(preset="cpu-f4", sample_size=32), build_vae(preset="cpu-f8", sample_size=64)
    with torch.no_grad():
        small = f4.encode(torch.rand(1, 3, 32, 32) * 2 - 1).latent_dist.mode()
        latents = f8.encode(torch.rand(2, 3, 64, 64) * 2 - 1).latent_dist.mode()
        decoded = f8.decode(latents).sample
    assert latents.shape[1:] == small.shape[1:] == (4, 8, 8)
    assert decoded.shape == (2, 3, 64, 64)
    # the extra 8x8 block is small next to the full-size ones both share
    extra = sum(p.numel() for p in f8.parameters()) / sum(p.numel() for p in f4.parameters())
    assert 1.0 < extra < 1.6


def test_sd_f8_matches_the_stable_diffusion_vae_size():
    vae = build_vae(preset="sd-f8")
    assert sum(p.numel() for p in vae.parameters()) == SD_VAE_PARAMETERS
    assert 2 ** (len(vae.config.block_out_channels) - 1) == 8
    assert vae.config.scaling_factor == 1.0


def test_json_config_builds_the_same_model_as_stock_kwargs(tmp_path):
    kwargs = dict(block_out_channels=[8, 16], layers_per_block=1, norm_num_groups=4, latent_channels=4,
                  down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2)
    path = tmp_path / "vae.json"
    path.write_text(json.dumps(kwargs))
    built = build_vae(config_path=path, sample_size=16)
    stock = AutoencoderKL(**kwargs, sample_size=16, scaling_factor=1.0)
    shapes = [{k: v.shape for k, v in model.state_dict().items()} for model in (built, stock)]
    assert shapes[0] == shapes[1]
    assert built.config == stock.config


def test_diffusers_config_json_is_accepted(tmp_path):
    tiny_vae().save_config(tmp_path)  # has _class_name / _diffusers_version keys
    built = build_vae(config_path=tmp_path / "config.json")
    stock = AutoencoderKL.from_config(AutoencoderKL.load_config(tmp_path))
    assert _public(built.config) == _public(stock.config)


@pytest.mark.parametrize("layout", ["vae_folder", "pipeline_folder"])
def test_pretrained_folder_round_trip(tmp_path, layout):
    vae = tiny_vae(seed=3)
    vae.register_to_config(scaling_factor=0.77)
    target = tmp_path / "vae" if layout == "pipeline_folder" else tmp_path
    vae.save_pretrained(target)
    loaded = build_vae(pretrained=tmp_path)
    assert loaded.config.scaling_factor == 0.77  # a measured scale is kept, not reset
    for (name, a), (_, b) in zip(vae.state_dict().items(), loaded.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_user_errors_are_one_line(tmp_path):
    with pytest.raises(ValueError, match="Unknown VAE preset"):
        build_vae(preset="nope")
    with pytest.raises(ValueError, match="exactly one"):
        build_vae()
    with pytest.raises(ValueError, match="exactly one"):
        build_vae(preset="cpu-f4", pretrained=tmp_path)
    with pytest.raises(FileNotFoundError):
        build_vae(config_path=tmp_path / "missing.json")
    with pytest.raises(FileNotFoundError, match="No diffusers VAE"):
        build_vae(pretrained=tmp_path / "missing")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        build_vae(config_path=bad)
    bad.write_text(json.dumps({"block_out_channel": [8]}))
    with pytest.raises(ValueError, match="block_out_channel"):
        build_vae(config_path=bad)


def test_presets_are_not_mutated_by_overrides():
    build_vae(preset="cpu-f4", sample_size=64)
    assert VAE_PRESETS["cpu-f4"]["sample_size"] == 32
