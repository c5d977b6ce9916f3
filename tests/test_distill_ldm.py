"""distill_ldm.py end to end on a tiny teacher folder: exact resume, stock diffusers samples the student,
errors, Ctrl-C."""
import json
import sys

import pytest
import torch
from diffusers import LCMScheduler, StableDiffusionPipeline
from safetensors.torch import load_file

import distill_ldm
from distilling import REPO, distill_args, error_lines, make_teacher
from launching import launch_two_processes
from interrupting import interrupt_when_training, last_line
from pipelines.few_step import FEW_STEP_FILE
from pipelines.folder import load_pipeline
from resuming import straight_and_resumed
from tiny_components import skip_bitwise_comparison_on_cuda

UNET_WEIGHTS = "unet/diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return make_teacher(tmp_path_factory.mktemp("teacher"))


def test_resume_is_exact_and_the_student_moves(teacher, tmp_path):
    """N steps + resume + N steps == 2N steps, bit for bit (student and target network)."""
    runs = straight_and_resumed(distill_ldm.main, lambda out, *extra: distill_args(teacher, out, *extra), tmp_path)
    straight, split = (load_file(str(run / UNET_WEIGHTS)) for run in runs)
    teacher_weights = load_file(str(teacher / UNET_WEIGHTS))
    assert set(straight) == set(teacher_weights) | {"time_embedding.cond_proj.weight"}
    assert any(not torch.equal(straight[k], teacher_weights[k]) for k in teacher_weights)
    assert straight["time_embedding.cond_proj.weight"].abs().max() > 0  # w reaches the student
    skip_bitwise_comparison_on_cuda()
    for key in straight:
        assert torch.equal(straight[key], split[key]), key
    targets = [torch.load(run / "checkpoints" / "step-4" / "custom_checkpoint_1.pkl", weights_only=True)
               for run in runs]
    assert all(torch.equal(targets[0][key], targets[1][key]) for key in targets[0])


@pytest.fixture(scope="module")
def student_folder(teacher, tmp_path_factory):
    out = tmp_path_factory.mktemp("student") / "out"
    assert distill_ldm.main(distill_args(teacher, out, "--max-steps", "2", "--sample-steps", "2",
                                         "--sample-guidance-scale", "3",
                                         "--sample-prompts", "red circle|blue square")) == 0
    return out


@pytest.mark.parametrize("steps,guidance_scale", [(1, 1.0), (4, 5.5)])
def test_stock_diffusers_samples_the_student_as_we_do(student_folder, steps, guidance_scale):
    stock = StableDiffusionPipeline.from_pretrained(str(student_folder), local_files_only=True)
    assert isinstance(stock.scheduler, LCMScheduler) and stock.unet.config.time_cond_proj_dim == 256
    assert stock.scheduler.config.original_inference_steps == 10
    ours = load_pipeline(student_folder)
    kwargs = dict(num_inference_steps=steps, guidance_scale=guidance_scale, num_images_per_prompt=2,
                  output_type="np")
    prompts = ["a red circle", "a blue square on the left"]
    for pipe in (stock, ours):
        pipe.set_progress_bar_config(disable=True)
    theirs = stock(prompts, generator=torch.Generator().manual_seed(7), **kwargs).images
    mine = ours(prompts, generator=torch.Generator().manual_seed(7), **kwargs).images
    assert mine.shape == theirs.shape == (4, 32, 32, 3)
    assert abs(mine - theirs).max() <= 1e-4


def test_output_folder_carries_its_sampling_defaults_and_grids(student_folder):
    defaults = json.loads((student_folder / FEW_STEP_FILE).read_text())
    assert defaults["scheduler"] == "lcm" and defaults["num_inference_steps"] == 2
    assert defaults["guidance_scale"] == 3.0 and defaults["guidance_weight_range"] == [0.0, 4.0]
    assert (student_folder / "samples" / "final.png").is_file()
    assert json.loads((student_folder / distill_ldm.CONFIG_FILE).read_text())["max_steps"] == 2


def test_non_finite_loss_stops_with_one_line_error(teacher, tmp_path, capsys):
    out = tmp_path / "out"
    code = distill_ldm.main(distill_args(teacher, out, "--max-steps", "6", "--lr", "1e30",
                                         "--warmup-steps", "0", "--checkpoint-every", "1"))
    assert code == 1
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith("error: non-finite loss") and "checkpoints/step-" in err[0]
    assert not (out / "model_index.json").exists()


@pytest.mark.parametrize("extra,word", [(["--w-min", "3", "--w-max", "1"], "--w-min"),
                                        (["--sample-steps", "20"], "--sample-steps"),
                                        (["--resume", "latest"], "no checkpoint")])
def test_bad_option_is_a_one_line_error_before_any_work(teacher, tmp_path, capsys, extra, word):
    assert distill_ldm.main(distill_args(teacher, tmp_path / "o", *extra)) == 2
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and word in err[0]
    assert not (tmp_path / "o" / distill_ldm.CONFIG_FILE).exists()


def test_teacher_that_is_not_a_pipeline_folder_is_a_one_line_error(tmp_path, capsys):
    code = distill_ldm.main(["--teacher", str(tmp_path / "nope"), "--output-dir", str(tmp_path / "o"),
                             "--data", "shapes", "--resolution", "32"])
    assert code == 2
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and "nope" in err[0]


@pytest.mark.slow  # a subprocess: ~30 s on 2 busy cores
def test_ctrl_c_finishes_the_step_saves_it_and_resumes(teacher, tmp_path):
    out = tmp_path / "out"
    argv = distill_args(teacher, out, "--checkpoint-every", "0")
    status, stderr = interrupt_when_training([sys.executable, str(REPO / "distill_ldm.py"), *argv,
                                              "--max-steps", "100000"], cwd=REPO)
    assert status == 130 and "Traceback" not in stderr, stderr[-2000:]
    line = last_line(stderr)
    assert line.startswith("interrupted after step ") and "--resume latest" in line
    step = int(line.split()[3].rstrip(";"))
    assert (out / "checkpoints" / "latest").read_text().strip() == f"step-{step}"
    assert distill_ldm.main([*argv, "--max-steps", str(step + 1), "--resume", "latest"]) == 0
    assert (out / "model_index.json").is_file()


@pytest.mark.slow
def test_two_processes_match_one_process_with_double_batch(teacher, tmp_path):
    """accelerate launch, 2 CPU processes (gloo) × batch 2 == 1 process × batch 4, after 3 steps."""
    two = distill_args(teacher, tmp_path / "two", "--max-steps", "3", "--checkpoint-every", "0")
    two[two.index("--batch-size") + 1] = "2"
    result = launch_two_processes([str(REPO / "distill_ldm.py"), *two], cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    assert distill_ldm.main(distill_args(teacher, tmp_path / "one", "--max-steps", "3",
                                         "--checkpoint-every", "0")) == 0
    one, two_w = (load_file(str(tmp_path / name / UNET_WEIGHTS)) for name in ("one", "two"))
    for key in one:
        torch.testing.assert_close(two_w[key], one[key], rtol=1e-4, atol=1e-5, msg=key)
