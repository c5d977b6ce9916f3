"""Tests for ldm/unet.py: preset sizes, attention heads, and the three sources (preset, config, pretrained).
"""
import json

import pytest
import torch
from diffusers.models.attention_processor import Attention
from tiny_components import tiny_unet

from ldm.unet import build_unet


def _n_params(model):
    return sum(p.numel() for p in model.parameters())


def _meta_unet(preset, cross_attention_dim, sample_size):
    with torch.device("meta"):  # shapes only
        return build_unet(preset=preset, cross_attention_dim=cross_attention_dim, sample_size=sample_size)


@pytest.mark.parametrize("preset, millions", [("cpu-tiny", 1.12), ("cpu-small", 4.3), ("cpu-base", 16.7)])
def test_cpu_presets_size_and_heads(preset, millions):
    unet = _meta_unet(preset, 128, 8)
    assert abs(_n_params(unet) / 1e6 - millions) < 0.05
    attentions = [m for m in unet.modules() if isinstance(m, Attention)]
    cross = [m for m in attentions if m.is_cross_attention]
    assert cross and all(m.to_k.in_features == 128 for m in cross)
    for attn in attentions:  # heads divide the channels: 32-channel heads at every resolution
        assert attn.to_q.out_features == attn.heads * 32
    assert all("CrossAttn" in name for name in unet.config.down_block_types + unet.config.up_block_types)


def test_cpu_tiny_normalises_groups_of_channels_not_single_channels():
    """At 32 channels diffusers' default 32 groups would normalise each channel alone (an instance norm)."""
    norms = [m for m in _meta_unet("cpu-tiny", 128, 8).modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and all(m.num_channels // m.num_groups >= 16 for m in norms)


def test_sd15_preset_is_stable_diffusion_unet():
    unet = _meta_unet("sd15", 768, 64)
    assert _n_params(unet) == 859_520_964  # the published parameter count of SD 1.x's U-Net
    assert tuple(unet.config.block_out_channels) == (320, 640, 1280, 1280)


def test_cpu_small_forward_shape():
    unet = build_unet(preset="cpu-small", cross_attention_dim=32, sample_size=8).eval()
    latents, prompt_embeds = torch.randn(2, 4, 8, 8), torch.randn(2, 6, 32)
    with torch.no_grad():
        noise_pred = unet(latents, torch.tensor([1, 900]), encoder_hidden_states=prompt_embeds).sample
    assert noise_pred.shape == latents.shape and torch.isfinite(noise_pred).all()


def test_from_config_file_replaces_cross_attention_dim(tmp_path):
    tiny_unet().save_config(str(tmp_path))
    unet = build_unet(config_path=tmp_path / "config.json", cross_attention_dim=24, sample_size=16)
    config = json.loads((tmp_path / "config.json").read_text())
    assert tuple(unet.config.block_out_channels) == tuple(config["block_out_channels"])
    assert unet.config.cross_attention_dim == 24 and unet.config.sample_size == 16


def test_pretrained_from_pipeline_or_unet_folder(tmp_path):
    reference = tiny_unet(seed=3)
    reference.save_pretrained(str(tmp_path / "pipe" / "unet"))
    for folder in (tmp_path / "pipe", tmp_path / "pipe" / "unet"):
        unet = build_unet(pretrained=folder, cross_attention_dim=32, sample_size=8)
        state = unet.state_dict()
        assert all(torch.equal(state[k], v) for k, v in reference.state_dict().items())
    resized = build_unet(pretrained=tmp_path / "pipe", cross_attention_dim=32, sample_size=16)
    assert resized.config.sample_size == 16
    with pytest.raises(ValueError, match="width"):
        build_unet(pretrained=tmp_path / "pipe", cross_attention_dim=64, sample_size=8)


def test_bad_sources_are_one_line_errors(tmp_path):
    with pytest.raises(ValueError, match="exactly one"):
        build_unet(cross_attention_dim=32, sample_size=8)
    with pytest.raises(ValueError, match="exactly one"):
        build_unet(preset="cpu-small", pretrained=tmp_path, cross_attention_dim=32, sample_size=8)
    with pytest.raises(ValueError, match="unknown U-Net preset"):
        build_unet(preset="xl", cross_attention_dim=32, sample_size=8)
    with pytest.raises(FileNotFoundError):
        build_unet(pretrained=tmp_path / "missing", cross_attention_dim=32, sample_size=8)
    with pytest.raises(FileNotFoundError, match="config.json"):
        build_unet(pretrained=tmp_path, cross_attention_dim=32, sample_size=8)
    with pytest.raises(FileNotFoundError):
        build_unet(config_path=tmp_path / "none.json", cross_attention_dim=32, sample_size=8)


def test_norm_num_groups_overrides_preset_and_config(tmp_path):
    unet = build_unet(preset="cpu-tiny", cross_attention_dim=32, sample_size=8, norm_num_groups=32)
    norms = [m for m in unet.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and all(m.num_groups == 32 for m in norms) and unet.config.norm_num_groups == 32
    tiny_unet().save_config(str(tmp_path))
    from_file = build_unet(config_path=tmp_path / "config.json", cross_attention_dim=32, sample_size=8,
                           norm_num_groups=2)
    assert all(m.num_groups == 2 for m in from_file.modules() if isinstance(m, torch.nn.GroupNorm))
    with pytest.raises(ValueError, match="divide every block's channels"):
        build_unet(preset="cpu-tiny", cross_attention_dim=32, sample_size=8, norm_num_groups=3)
    with pytest.raises(ValueError, match="pretrained"):
        build_unet(pretrained=tmp_path, cross_attention_dim=32, sample_size=8, norm_num_groups=2)
