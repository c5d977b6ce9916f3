"""RePaint resampling: which step runs when, and the forward jump that re-noises latents back in time.

Lugmayr et al. 2022, "RePaint" (https://arxiv.org/abs/2201.09865), Algorithm 1 and §4.2: after denoising
`jump_length` steps, diffuse the latents back up by as many steps and denoise them again, `jump_n_sample` times
in all, so the generated region is resampled in the light of the known region instead of being pasted next to
it. Levels count the sampler's timesteps: level k holds latents at `timesteps[k]`; level N (past the last step)
is clean, ᾱ = 1.
"""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler, DDPMScheduler

# Schedulers whose step() is a pure function of (noise_pred, t, latents): stepping a block again after a jump
# is then the same computation. Multistep solvers (dpm++, unipc) and Euler keep a step counter and history.
STATELESS_SCHEDULERS = (DDIMScheduler, DDPMScheduler)


def repaint_blocks(start: int, num_steps: int, jump_length: int, jump_n_sample: int) -> list[range]:
    """Step indices to run, as blocks: each block of `jump_length` steps from `start` to `num_steps` appears
    `jump_n_sample` times in a row; between two runs of a block the latents jump back to its first level.

    >>> repaint_blocks(0, 5, 2, 2)
    [range(0, 2), range(0, 2), range(2, 4), range(2, 4), range(4, 5), range(4, 5)]
    """
    if jump_length < 1 or jump_n_sample < 1:
        raise ValueError(
            f"jump_length and jump_n_sample must be at least 1, got {jump_length}, {jump_n_sample}."
        )
    blocks = []
    for first in range(start, num_steps, jump_length):
        blocks += [range(first, min(first + jump_length, num_steps))] * jump_n_sample
    return blocks


def level_alpha_bar(scheduler, level: int) -> torch.Tensor:
    """ᾱ at `level` of the scheduler's current timesteps; 1 past the last step (clean latents)."""
    if level >= len(scheduler.timesteps):
        return torch.tensor(1.0)
    return scheduler.alphas_cumprod[int(scheduler.timesteps[level])]


def jump_back(latents: torch.Tensor, alpha_bar_from: torch.Tensor, alpha_bar_to: torch.Tensor,
              noise: torch.Tensor) -> torch.Tensor:
    """Diffuse latents from a level with ᾱ_from to a noisier one with ᾱ_to < ᾱ_from: a draw of
    q(x_to | x_from) = N(sqrt(ᾱ_to/ᾱ_from) · x_from, (1 − ᾱ_to/ᾱ_from) · I), the product of the forward steps
    in between (RePaint, Algorithm 1 line 9). latents, noise: `(B, C, h, w)`; noise standard normal."""
    ratio = (alpha_bar_to / alpha_bar_from).to(device=latents.device, dtype=torch.float32)
    jumped = ratio.sqrt() * latents.float() + (1 - ratio).sqrt() * noise.float()
    return jumped.to(latents.dtype)
