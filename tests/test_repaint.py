"""pipelines/repaint.py: the block schedule, and the jump back against the forward process's marginals."""

import pytest
import torch

from pipelines.repaint import jump_back, level_alpha_bar, repaint_blocks
from pipelines.schedulers import make_scheduler
from tiny_components import sd_scheduler_config


def test_blocks_repeat_and_cover_every_step_from_start():
    assert repaint_blocks(0, 5, 2, 2) == [range(0, 2)] * 2 + [range(2, 4)] * 2 + [range(4, 5)] * 2
    assert repaint_blocks(3, 7, 10, 3) == [range(3, 7)] * 3
    plain = repaint_blocks(1, 9, 3, 1)
    assert [i for block in plain for i in block] == list(range(1, 9))
    with pytest.raises(ValueError, match="at least 1"):
        repaint_blocks(0, 4, 0, 2)


def test_jump_back_gives_the_marginal_of_the_noisier_level():
    """x_a ~ q(x_a | x0), then the jump to level b: mean sqrt(ᾱ_b)·x0 and variance 1 − ᾱ_b, as q(x_b | x0)."""
    scheduler = make_scheduler("ddim", sd_scheduler_config())
    scheduler.set_timesteps(10)
    a, b = 7, 3  # level 7 is less noisy than level 3
    alpha_a, alpha_b = level_alpha_bar(scheduler, a), level_alpha_bar(scheduler, b)
    assert level_alpha_bar(scheduler, 10) == 1.0 and alpha_b < alpha_a < 1
    generator = torch.Generator().manual_seed(0)
    x0 = torch.full((200_000,), 0.8)
    x_a = alpha_a.sqrt() * x0 + (1 - alpha_a).sqrt() * torch.randn(x0.shape, generator=generator)
    x_b = jump_back(x_a, alpha_a, alpha_b, torch.randn(x0.shape, generator=generator))
    assert abs(x_b.mean() - alpha_b.sqrt() * 0.8) < 0.01
    assert abs(x_b.var() - (1 - alpha_b)) < 0.01
    clean = jump_back(x0, level_alpha_bar(scheduler, 10), alpha_b, torch.randn(x0.shape, generator=generator))
    assert abs(clean.var() - (1 - alpha_b)) < 0.01
