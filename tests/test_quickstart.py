"""quickstart.py end to end at toy step counts: stages run as processes, outputs load, a second run reuses them."""
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from diffusers import StableDiffusionPipeline
from interrupting import interrupt_when_training, last_line

import quickstart
import train_ldm
import train_vae
from ldm import recipe
from ldm.cli import parse_config
from pipelines import generate
from pipelines.evaluate import EvalConfig

REPO = Path(__file__).resolve().parents[1]
TOY = ["--vae-steps", "2", "--vae-batch-size", "4", "--ldm-steps", "2", "--ldm-batch-size", "4",
       "--eval-weights", "0,1", "--eval-seeds", "1", "--eval-steps", "2"]


@pytest.mark.slow
def test_quickstart_runs_end_to_end_and_reuses_finished_stages(tmp_path):
    out = tmp_path / "qs"
    first = subprocess.run([sys.executable, "-m", "quickstart", "--output-dir", str(out), *TOY],
                           capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    assert str(out / "stage2") in first.stdout
    timings = json.loads((out / "timings.json").read_text())
    assert set(timings) == {"stage1", "stage2", "eval"}
    evaluation = json.loads((out / "eval" / "eval.json").read_text())
    assert [entry["w"] for entry in evaluation["sweep"]] == [0.0, 1.0]
    # The stage-2 folder is a Stable Diffusion folder that stock diffusers loads, VAE scale included.
    stock = StableDiffusionPipeline.from_pretrained(str(out / "stage2"), safety_checker=None)
    vae_config = json.loads((out / "stage1" / "vae" / "config.json").read_text())
    assert stock.vae.config.scaling_factor == pytest.approx(vae_config["scaling_factor"])
    # The summary names the evaluation's best w as a guidance scale, in an ldm-generate command that runs.
    best = evaluation["best"]["w"]
    assert f"best guidance: w = {best:g} (guidance_scale {best + 1:g})" in first.stdout
    command = shlex.split(next(line for line in first.stdout.splitlines() if line.startswith("try: ")))[1:]
    assert command[0] == "ldm-generate" and command[command.index("--guidance-scale") + 1] == f"{best + 1:g}"
    assert generate.main([*command[1:], "-n", "1", "--steps", "2"]) == 0
    assert len(list((out / "samples").glob("*.png"))) == 2  # the image and the contact sheet

    second = subprocess.run([sys.executable, "-m", "quickstart", "--output-dir", str(out), *TOY],
                            capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-2000:]
    assert second.stderr.count("already finished") == 3
    assert json.loads((out / "timings.json").read_text()) == timings  # nothing ran again


@pytest.mark.slow
def test_ctrl_c_stops_the_stage_with_its_checkpoint_and_a_rerun_resumes(tmp_path):
    out = tmp_path / "qs"
    toy = [*TOY, "--output-dir", str(out)]
    toy[toy.index("--vae-steps") + 1] = "100000"
    status, stderr = interrupt_when_training([sys.executable, "-m", "quickstart", *toy], cwd=REPO)
    assert status == 130 and "Traceback" not in stderr, stderr[-2000:]
    assert last_line(stderr) == "stage1 was interrupted; run the quickstart again to resume it."
    step = int((out / "stage1" / "checkpoints" / "latest").read_text().strip().removeprefix("step-"))
    toy[toy.index("--vae-steps") + 1] = str(step + 1)
    again = subprocess.run([sys.executable, "-m", "quickstart", *toy], cwd=REPO, capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "stage1: resuming from" in again.stderr and (out / "eval" / "eval.json").is_file()


def test_bad_option_is_one_line_error(capsys):
    assert quickstart.main(["--objects", "4"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --objects") and "\n" not in err


def test_stage_commands_share_one_data_spec_and_object_count(tmp_path):
    cfg = quickstart.QuickstartConfig(output_dir=str(tmp_path), objects=2)
    commands = {name: argv for name, _, argv in quickstart.stage_commands(cfg, tmp_path)}
    assert commands["stage1"][commands["stage1"].index("--data") + 1] == "shapes:objects=2,allpairs=1"
    assert commands["stage2"][commands["stage2"].index("--data") + 1] == "shapes:objects=2"
    assert commands["eval"][commands["eval"].index("--objects") + 1] == "2"
    assert commands["eval"][commands["eval"].index("--vae-data") + 1] == "shapes:objects=2"
    assert commands["stage2"][commands["stage2"].index("--vae") + 1] == str(tmp_path / "stage1" / "vae")
    # the quickstart chooses its data and step counts, and nothing else: the trainers' defaults do the rest
    flags = {name: {a for a in argv if a.startswith("--")} for name, argv in commands.items()}
    assert flags["stage1"] == {"--data", "--output-dir", "--max-steps", "--resolution", "--seed"}
    assert flags["stage2"] == {"--data", "--vae", "--output-dir", "--max-steps", "--data-size", "--resolution",
                               "--seed"}


def test_simple_variant_reaches_every_stage(tmp_path, capsys):
    cfg = quickstart.QuickstartConfig(output_dir=str(tmp_path), simple=True)
    commands = {name: argv for name, _, argv in quickstart.stage_commands(cfg, tmp_path)}
    assert commands["stage1"][commands["stage1"].index("--data") + 1] == "shapes:objects=1,simple=1,allpairs=1"
    assert commands["stage2"][commands["stage2"].index("--data") + 1] == "shapes:objects=1,simple=1"
    assert "--simple" in commands["eval"]
    assert commands["eval"][commands["eval"].index("--vae-data") + 1] == "shapes:objects=1,simple=1"
    assert "--simple" not in quickstart.stage_commands(quickstart.QuickstartConfig(), tmp_path)[2][2]
    assert quickstart.main(["--simple", "--objects", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --simple") and "\n" not in err


@pytest.mark.parametrize("variant, extra", [("full", []), ("simple", ["--simple"])])
def test_each_variant_gets_its_measured_step_counts_unless_given(tmp_path, variant, extra):
    def flag(argv, name):
        return argv[argv.index(name) + 1]

    expected = quickstart.VARIANT_DEFAULTS[variant]
    cfg = parse_config(quickstart.QuickstartConfig, ["--output-dir", str(tmp_path), *extra])
    commands = {name: argv for name, _, argv in quickstart.stage_commands(cfg, tmp_path)}
    assert flag(commands["stage1"], "--max-steps") == str(expected["vae_steps"])
    assert flag(commands["stage2"], "--max-steps") == str(expected["ldm_steps"])
    assert flag(commands["stage2"], "--data-size") == str(expected["ldm_data_size"])
    assert flag(commands["eval"], "--seeds-per-prompt") == str(expected["eval_seeds"])
    assert flag(commands["eval"], "--prompts-per-split") == str(expected["eval_prompts"])
    # stage 1 may see the held-out pairs (it has no captions); stage 2 and its evaluation never do
    assert flag(commands["stage1"], "--data").endswith(",allpairs=1")
    assert "allpairs" not in flag(commands["stage2"], "--data") + flag(commands["eval"], "--vae-data")
    seen_only = quickstart.stage_commands(
        parse_config(quickstart.QuickstartConfig, [*extra, "--vae-pairs", "seen"]), tmp_path)
    assert flag(seen_only[0][2], "--data") == flag(commands["stage2"], "--data")
    given = parse_config(quickstart.QuickstartConfig, [*extra, "--vae-steps", "7", "--ldm-steps", "9"])
    commands = {name: argv for name, _, argv in quickstart.stage_commands(given, tmp_path)}
    assert flag(commands["stage1"], "--max-steps") == "7" and flag(commands["stage2"], "--max-steps") == "9"


def test_both_variants_train_with_the_trainers_defaults(tmp_path):
    def configs(**kwargs):
        commands = quickstart.stage_commands(quickstart.QuickstartConfig(output_dir=str(tmp_path), **kwargs),
                                             tmp_path)
        return (parse_config(train_vae.TrainVAEConfig, commands[0][2][2:]),  # drop "-m train_vae"
                parse_config(train_ldm.TrainConfig, commands[1][2][2:]))

    for vae, ldm in (configs(), configs(simple=True)):
        assert (vae.lr, vae.rec_loss, vae.batch_size) == (recipe.VAE_SCRATCH_LR, "l2", 16)
        assert (ldm.preset, ldm.prediction_type, ldm.lr, ldm.batch_size) == (
            recipe.UNET_PRESET, recipe.SCRATCH_PREDICTION, recipe.SCRATCH_LR_SMALL, recipe.SCRATCH_BATCH)
        assert (ldm.min_snr_gamma, ldm.snr_floor) == (recipe.MIN_SNR_GAMMA, recipe.SCRATCH_SNR_FLOOR)
        assert ldm.ema and ldm.ema_decay == recipe.ema_decay_for(ldm.max_steps) and ldm.lr_schedule == "cosine"
        assert {choice.name for choice in ldm.chosen_defaults} >= {"preset", "lr", "ema_decay", "snr_floor"}


def test_emoji_quickstart_holds_tones_out_of_stage_2_and_evaluates_them(tmp_path, capsys):
    def flag(argv, name):
        return argv[argv.index(name) + 1]

    cfg = parse_config(quickstart.QuickstartConfig, ["--data", "emoji", "--output-dir", str(tmp_path)])
    commands = {name: argv for name, _, argv in quickstart.stage_commands(cfg, tmp_path)}
    assert flag(commands["stage1"], "--data") == "emoji"  # the VAE, a codec without captions, sees every tone
    assert flag(commands["stage2"], "--data") == "emoji:heldouttones=1" and "--data-size" not in commands["stage2"]
    assert flag(commands["eval"], "--task") == "emoji" and "--objects" not in commands["eval"]
    evaluation = parse_config(EvalConfig, commands["eval"][2:])
    assert (evaluation.task, evaluation.model) == ("emoji", str(tmp_path / "stage2"))
    assert parse_config(train_ldm.TrainConfig, commands["stage2"][2:]).text_preset == "tiny"
    # emoji trains at 64 px, with the f = 8 VAE train_vae picks there; shapes stays at 32 px; a given size wins
    assert {flag(argv, "--resolution") for argv in commands.values()} == {"64"}
    assert parse_config(train_vae.TrainVAEConfig, commands["stage1"][2:]).preset == "cpu-f8"
    assert parse_config(quickstart.QuickstartConfig, []).resolution == 32
    assert parse_config(quickstart.QuickstartConfig, ["--data", "emoji", "--resolution", "32"]).resolution == 32
    assert quickstart.main(["--data", "emoji", "--simple"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --simple and --objects") and "\n" not in err
