"""pipelines/schedulers.py: samplers by name keep the model's training schedule."""

import pytest
from diffusers import DDPMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler

from pipelines.schedulers import DEFAULT_SCHEDULER, SCHEDULERS, make_scheduler

TRAINED = DDPMScheduler(
    beta_schedule="scaled_linear",
    beta_start=0.00085,
    beta_end=0.012,
    prediction_type="v_prediction",
    num_train_timesteps=500,
    timestep_spacing="trailing",
)


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_every_sampler_keeps_the_training_schedule(name):
    scheduler = make_scheduler(name, TRAINED.config)
    assert isinstance(scheduler, SCHEDULERS[name][0])
    for key in (
        "beta_schedule",
        "beta_start",
        "beta_end",
        "prediction_type",
        "num_train_timesteps",
        "timestep_spacing",
    ):
        assert scheduler.config[key] == TRAINED.config[key], key
    scheduler.set_timesteps(20)
    assert 20 <= len(scheduler.timesteps) <= 21  # no sampler here is a 2-evaluations-per-step solver
    assert int(scheduler.timesteps.max()) == TRAINED.config.num_train_timesteps - 1  # "trailing" spacing kept


def test_named_samplers_are_the_intended_algorithms():
    dpm = make_scheduler("dpm++", TRAINED.config)
    assert isinstance(dpm, DPMSolverMultistepScheduler) and dpm.config.algorithm_type == "dpmsolver++"
    assert isinstance(make_scheduler("euler-a", TRAINED.config), EulerAncestralDiscreteScheduler)
    assert DEFAULT_SCHEDULER == "dpm++"


def test_unknown_name_lists_the_choices():
    with pytest.raises(ValueError, match="choose one of: ddpm, ddim, dpm\\+\\+, euler, euler-a, unipc"):
        make_scheduler("plms", TRAINED.config)
