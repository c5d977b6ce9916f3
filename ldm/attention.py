"""Which attention kernel the U-Net runs: xformers' memory-efficient attention or PyTorch SDPA.

`--attention auto` (every command's default) takes xformers on CUDA when it is installed and works, and
PyTorch's scaled_dot_product_attention otherwise; `sdpa` and `xformers` force one (to compare, or to rule one
out).
"""
from __future__ import annotations

import importlib.util
import logging

import torch
from diffusers.models.attention_processor import AttnProcessor2_0

logger = logging.getLogger(__name__)

ATTENTION_BACKENDS = ("auto", "sdpa", "xformers")


def check_attention(name: str, device: torch.device | str) -> None:
    """Raise ValueError (one sentence) when backend `name` cannot run on `device`."""
    if name not in ATTENTION_BACKENDS:
        raise ValueError(f"--attention must be one of {', '.join(ATTENTION_BACKENDS)}, got {name!r}.")
    if name == "xformers":
        if torch.device(device).type != "cuda":
            raise ValueError("--attention xformers needs a CUDA GPU; use sdpa or auto on CPU.")
        if importlib.util.find_spec("xformers") is None:
            raise ValueError("--attention xformers: xformers is not installed "
                             "(pip install -e \".[xformers]\").")


def xformers_runs() -> bool:
    """Whether xformers is installed with a working CUDA kernel (a wheel built for another torch has none)."""
    if not torch.cuda.is_available() or importlib.util.find_spec("xformers") is None:
        return False
    try:
        import xformers.ops

        query = torch.randn(1, 8, 2, 16, device="cuda", dtype=torch.float16)
        xformers.ops.memory_efficient_attention(query, query, query)
    except Exception:  # noqa: BLE001 - NotImplementedError, ImportError or a CUDA error, by build
        return False
    return True


def set_attention(model, name: str, device: torch.device | str) -> str:
    """Put backend `name` on `model` (a UNet2DConditionModel or a pipeline); return the one in use.

    `auto` falls back to SDPA with a warning when xformers is installed but fails to start (a wheel built for
    another torch or CUDA); a forced `xformers` raises instead.
    """
    check_attention(name, device)
    unet = getattr(model, "unet", model)
    on_cuda = torch.device(device).type == "cuda"
    wants_xformers = name == "xformers" or (
        name == "auto" and on_cuda and importlib.util.find_spec("xformers") is not None)
    if wants_xformers:
        try:
            unet.enable_xformers_memory_efficient_attention()
            return "xformers"
        except Exception as error:  # noqa: BLE001 - xformers reports a broken build with many exception types
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__  # its report is long
            if name == "xformers":
                raise ValueError(f"--attention xformers: xformers does not run here ({reason}).") from None
            logger.warning("xformers is installed but unusable (%s); using PyTorch SDPA", reason)
    unet.set_attn_processor(AttnProcessor2_0())
    return "sdpa"
