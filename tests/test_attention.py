"""ldm/attention.py: the attention backend switch, checked against diffusers' explicit-softmax processor."""
import importlib.util

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

from ldm.attention import check_attention, set_attention, xformers_runs
from tiny_components import TINY_HIDDEN, tiny_unet

HAS_CUDA = torch.cuda.is_available()
HAS_XFORMERS = importlib.util.find_spec("xformers") is not None


def _inputs(device="cpu", dtype=torch.float32):
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 8, 8, generator=generator)
    prompt_embeds = torch.randn(2, 7, TINY_HIDDEN, generator=generator)
    return latents.to(device, dtype), torch.tensor([10, 500], device=device), prompt_embeds.to(device, dtype)


@pytest.mark.parametrize("name, device, message", [
    ("flash", "cpu", "--attention must be one of auto, sdpa, xformers"),
    ("xformers", "cpu", "xformers needs a CUDA GPU"),
])
def test_check_attention_rejects_what_cannot_run(name, device, message):
    with pytest.raises(ValueError, match=message):
        check_attention(name, device)


@pytest.mark.parametrize("name", ["sdpa", "auto"])
def test_sdpa_on_cpu_matches_the_explicit_softmax_processor(name):
    unet = tiny_unet()
    unet.set_attn_processor(AttnProcessor())  # softmax(QK^T/sqrt(d))V written out: the reference
    with torch.no_grad():
        reference = unet(*_inputs()).sample
        assert set_attention(unet, name, "cpu") == "sdpa"
        assert all(isinstance(p, AttnProcessor2_0) for p in unet.attn_processors.values())
        torch.testing.assert_close(unet(*_inputs()).sample, reference, rtol=1e-4, atol=1e-5)


def test_set_attention_reaches_a_pipelines_unet():
    class Holder:  # anything with a .unet, as a diffusers pipeline has
        unet = tiny_unet()
    Holder.unet.set_attn_processor(AttnProcessor())
    assert set_attention(Holder, "sdpa", "cpu") == "sdpa"
    assert all(isinstance(p, AttnProcessor2_0) for p in Holder.unet.attn_processors.values())


@pytest.mark.skipif(not (HAS_CUDA and HAS_XFORMERS), reason="needs CUDA and xformers")
@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-3), (torch.float16, 2e-2)])
def test_xformers_matches_sdpa_on_cuda(dtype, tolerance):
    if not xformers_runs():
        pytest.skip("xformers is installed but has no CUDA kernel for this torch")
    unet = tiny_unet().to("cuda", dtype)
    with torch.no_grad():
        assert set_attention(unet, "sdpa", "cuda") == "sdpa"
        reference = unet(*_inputs("cuda", dtype)).sample.float()
        assert set_attention(unet, "auto", "cuda") == "xformers"
        result = unet(*_inputs("cuda", dtype)).sample.float()
    assert (result - reference).norm() / reference.norm() < tolerance


@pytest.mark.skipif(not (HAS_CUDA and HAS_XFORMERS), reason="needs CUDA and xformers")
def test_unusable_xformers_falls_back_on_auto_and_fails_in_one_line_when_forced():
    if xformers_runs():
        pytest.skip("xformers works here")
    unet = tiny_unet().to("cuda")
    assert set_attention(unet, "auto", "cuda") == "sdpa"
    assert all(isinstance(p, AttnProcessor2_0) for p in unet.attn_processors.values())
    with pytest.raises(ValueError, match="xformers does not run here") as error:
        set_attention(unet, "xformers", "cuda")
    assert "\n" not in str(error.value)
