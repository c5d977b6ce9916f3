"""ldm.recipe: the trainers' defaults fill only what the user left unset, and follow from what they know."""
import json

import pytest
from diffusers import DDPMScheduler

import train_ldm
import train_vae
from ldm import recipe
from ldm.cli import parse_config

STAGE2 = ["--data", "shapes", "--vae", "v", "--output-dir", "o"]


def stage2(*extra):
    return parse_config(train_ldm.TrainConfig, [*STAGE2, *extra])


@pytest.fixture
def sd_like(tmp_path):
    """A pretrained folder whose scheduler says how its weights were trained (Stable Diffusion 1.x's)."""
    DDPMScheduler(beta_schedule="scaled_linear", prediction_type="epsilon",
                  num_train_timesteps=1000).save_pretrained(tmp_path / "sd" / "scheduler")
    return tmp_path / "sd"


@pytest.mark.parametrize("steps", [100, 2400, 10000, 10 ** 6])
def test_ema_window_is_a_fixed_share_of_the_run_within_its_clamp(steps):
    decay = recipe.ema_decay_for(steps)
    low, high = recipe.EMA_DECAY_RANGE
    assert low <= decay <= high
    if low < decay < high:  # the averaging window 1 / (1 - decay) is the chosen share of the steps
        assert 1 / (1 - decay) == pytest.approx(recipe.EMA_WINDOW_FRACTION * steps, rel=0.01)
    assert recipe.ema_decay_for(2400) == pytest.approx(0.999, abs=2e-4)  # the measured 2,400-step value


def test_from_scratch_gets_the_measured_recipe_and_says_why():
    config = stage2()
    assert (config.preset, config.prediction_type, config.lr, config.ema) == ("cpu-tiny", "v_prediction", 1e-3, True)
    assert (config.min_snr_gamma, config.snr_floor, config.batch_size) == (5.0, 0.1, 64)
    chosen = {c.name: c for c in config.chosen_defaults}
    assert set(chosen) == {"preset", "batch_size", "prediction_type", "beta_schedule", "num_train_timesteps",
                           "min_snr_gamma", "snr_floor", "lr", "ema", "ema_decay"}
    assert all(chosen[name].value == getattr(config, name) for name in chosen)
    assert all(c.why and "\n" not in c.line() for c in chosen.values())


def test_a_given_flag_wins_and_is_not_reported_as_chosen():
    config = stage2("--lr", "3e-4", "--no-ema", "--snr-floor", "0", "--preset", "cpu-small")
    assert (config.lr, config.ema, config.snr_floor, config.preset) == (3e-4, False, 0.0, "cpu-small")
    assert not {"lr", "ema", "snr_floor", "preset"} & {c.name for c in config.chosen_defaults}


@pytest.mark.parametrize("extra, lr", [((), 1e-3), (("--preset", "cpu-base"), 1e-3), (("--preset", "sd15"), 1e-4)])
def test_from_scratch_learning_rate_follows_the_model_size(extra, lr):
    assert stage2(*extra).lr == lr


def test_fine_tuning_keeps_the_base_objective_and_lowers_the_rate_a_hundredfold(sd_like):
    full = stage2("--pretrained", str(sd_like))
    assert (full.prediction_type, full.beta_schedule, full.num_train_timesteps) == ("epsilon", "scaled_linear",
                                                                                    1000)
    assert full.lr == pytest.approx(stage2().lr / 100) and full.batch_size == recipe.PRETRAINED_BATCH
    assert full.snr_floor == 0 and full.ema
    lora = stage2("--pretrained", str(sd_like), "--lora-rank", "4")
    assert (lora.lr, lora.ema, lora.prediction_type) == (recipe.LORA_LR, False, "epsilon")


def test_an_adapter_given_another_objective_than_its_base_is_a_one_line_error(sd_like):
    with pytest.raises(ValueError, match="prediction_type epsilon"):
        stage2("--pretrained", str(sd_like), "--lora-rank", "4", "--prediction-type", "v_prediction")


def test_stage1_rate_depends_on_fine_tuning(tmp_path):
    scratch = parse_config(train_vae.TrainVAEConfig, ["--data", "shapes", "--output-dir", "o"])
    tuned = parse_config(train_vae.TrainVAEConfig, ["--data", "shapes", "--output-dir", "o", "--pretrained", "p"])
    assert (scratch.lr, tuned.lr, scratch.rec_loss) == (recipe.VAE_SCRATCH_LR, recipe.VAE_FINETUNE_LR, "l2")
    assert [c.name for c in tuned.chosen_defaults] == ["lr"]


@pytest.mark.parametrize("resolution, preset, latent", [(16, "cpu-f4", 4), (32, "cpu-f4", 8), (64, "cpu-f8", 8),
                                                        (128, "cpu-f8", 16)])
def test_stage1_vae_follows_the_resolution_unless_given(resolution, preset, latent):
    from autoencoder import build_vae
    argv = ["--data", "emoji", "--output-dir", "o", "--resolution", str(resolution)]
    config = parse_config(train_vae.TrainVAEConfig, argv)
    chosen = {c.name: c.why for c in config.chosen_defaults}
    assert config.preset == preset and f"{latent}x{latent} latents" in chosen["preset"]
    vae = build_vae(preset=config.preset, sample_size=resolution)  # the stated latent size is the real one
    assert resolution // 2 ** (len(vae.config.block_out_channels) - 1) == latent
    given = parse_config(train_vae.TrainVAEConfig, [*argv, "--preset", "cpu-f4"])
    assert given.preset == "cpu-f4" and "preset" not in {c.name for c in given.chosen_defaults}
    config_file = parse_config(train_vae.TrainVAEConfig, [*argv, "--config", "vae.json"])
    assert config_file.preset is None  # a config file is the architecture; no preset is chosen beside it


def test_chosen_values_and_reasons_are_saved_in_the_run_config(tmp_path):
    from ldm.cli import save_config
    config = stage2()
    save_config(config, tmp_path / "train_config.json")
    saved = json.loads((tmp_path / "train_config.json").read_text())
    assert saved["lr"] == config.lr and saved["ema_decay"] == config.ema_decay
    assert saved["chosen_defaults"] == {c.name: c.why for c in config.chosen_defaults}
    # The saved values, given back as flags, make the same run: nothing is left to choose.
    again = stage2(*[token for name in saved["chosen_defaults"] for token in
                     ((f"--{name.replace('_', '-')}", str(saved[name])) if name != "ema" else ("--ema",))])
    assert again.chosen_defaults == [] and all(getattr(again, n) == saved[n] for n in saved["chosen_defaults"])
