"""Samplers by name: each is a diffusers scheduler built from the pipeline's own scheduler config.

`from_config` keeps what the model was trained with (betas, prediction_type, number of training timesteps,
timestep spacing), so switching sampler never changes the model, only the ODE/SDE solver.
"""

from __future__ import annotations

from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LCMScheduler,
    UniPCMultistepScheduler,
)

DEFAULT_SCHEDULER = "dpm++"  # good images in 20–30 steps (Lu et al. 2022, https://arxiv.org/abs/2211.01095)

# name → (scheduler class, config overrides)
SCHEDULERS: dict[str, tuple[type, dict]] = {
    # Ho et al. 2020 Algorithm 2: ancestral sampling, needs many steps (~100s)
    "ddpm": (DDPMScheduler, {}),
    # Song et al. 2020, deterministic at eta = 0
    "ddim": (DDIMScheduler, {}),
    # multistep DPM-Solver++ (2nd order), the default
    "dpm++": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    # Karras et al. 2022 Euler steps on the probability-flow ODE
    "euler": (EulerDiscreteScheduler, {}),
    # Euler with fresh noise each step (ancestral)
    "euler-a": (EulerAncestralDiscreteScheduler, {}),
    # Zhao et al. 2023, predictor-corrector
    "unipc": (UniPCMultistepScheduler, {}),
    # Luo et al. 2023: the consistency sampler for a distilled student (distill_ldm.py), 1-8 steps
    "lcm": (LCMScheduler, {}),
}


def make_scheduler(name: str, config: dict):
    """The sampler `name` built from `config` (e.g. `pipe.scheduler.config`), keeping its schedule."""
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; choose one of: {', '.join(SCHEDULERS)}.")
    scheduler_class, overrides = SCHEDULERS[name]
    return scheduler_class.from_config(config, **overrides)
