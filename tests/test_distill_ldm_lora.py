"""distill_ldm.py --lora-rank (LCM-LoRA) end to end on the tiny teacher of test_distill_ldm: exact resume, stock
diffusers + load_lora_weights + LCMScheduler samples what ldm-generate samples, errors, 2 processes."""
import json

import numpy as np
import pytest
import torch
from diffusers import LCMScheduler, StableDiffusionPipeline
from PIL import Image
from safetensors.torch import load_file

import distill_ldm
from distilling import REPO, distill_args, error_lines, make_teacher
from launching import launch_two_processes
from ldm.lcm_lora import read_lcm_lora
from ldm.lora import KOHYA_WEIGHTS_NAME, LORA_WEIGHTS_NAME
from pipelines import generate
from resuming import straight_and_resumed
from tiny_components import skip_bitwise_comparison_on_cuda


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return make_teacher(tmp_path_factory.mktemp("teacher"))


def _lora_args(teacher, out, *extra):
    """test_distill_ldm's options, on the 50-step grid a stock LCMScheduler samples from, with a rank-4 adapter."""
    args = distill_args(teacher, out, "--lora-rank", "4", "--lora-alpha", "4", *extra)
    args[args.index("--solver-steps") + 1] = "50"
    return args


def test_resume_is_exact_and_only_the_adapter_is_written(teacher, tmp_path):
    """N steps + resume + N steps == 2N steps, bit for bit; the output is an adapter file, not a pipeline."""
    runs = straight_and_resumed(distill_ldm.main, lambda out, *extra: _lora_args(teacher, out, *extra), tmp_path)
    straight, split = (load_file(str(run / LORA_WEIGHTS_NAME)) for run in runs)
    assert straight and all(key.startswith("unet.") and ".lora_" in key for key in straight)
    assert any(key.endswith("lora_B.weight") and value.abs().max() > 0 for key, value in straight.items())
    assert not (runs[0] / "model_index.json").exists()
    skip_bitwise_comparison_on_cuda()
    for key in straight:
        assert torch.equal(straight[key], split[key]), key


@pytest.fixture(scope="module")
def lcm_lora(teacher, tmp_path_factory):
    out = tmp_path_factory.mktemp("lcm_lora") / "out"
    assert distill_ldm.main(_lora_args(teacher, out, "--max-steps", "2", "--w-min", "1", "--w-max", "3",
                                       "--lora-format", "kohya", "--sample-prompts", "red circle|blue square")) == 0
    return out


def test_stock_diffusers_samples_the_lcm_lora_as_ldm_generate_does(teacher, lcm_lora, tmp_path):
    """Stock: from_pretrained(TEACHER) + load_lora_weights(OUT) + LCMScheduler, 4 steps, no CFG. Ours:
    ldm-generate --model TEACHER --lora OUT/... with no sampling flags (the file's metadata sets them)."""
    facts = read_lcm_lora(lcm_lora / LORA_WEIGHTS_NAME)
    assert facts["scheduler"] == "lcm" and facts["num_inference_steps"] == 4 and facts["guidance_scale"] == 1.0
    assert facts["guidance_weight_range"] == [1.0, 3.0] and facts["original_inference_steps"] == 50
    stock = StableDiffusionPipeline.from_pretrained(str(teacher), local_files_only=True)
    stock.load_lora_weights(str(lcm_lora))
    stock.scheduler = LCMScheduler.from_config(stock.scheduler.config)
    config = generate.with_sampling_defaults(generate.GenerateConfig(
        prompt="a red circle", model=str(teacher), lora=(str(lcm_lora / LORA_WEIGHTS_NAME),), out=str(tmp_path)))
    assert (config.scheduler, config.steps, config.guidance_scale) == ("lcm", 4, 1.0)
    ours = generate.prepare_pipeline(config, torch.device("cpu"), torch.float32)
    assert isinstance(ours.scheduler, LCMScheduler)
    kohya = generate.prepare_pipeline(
        generate.dataclasses.replace(config, lora=(str(lcm_lora / KOHYA_WEIGHTS_NAME),)), torch.device("cpu"),
        torch.float32)
    plain = generate.prepare_pipeline(generate.dataclasses.replace(config, lora=()), torch.device("cpu"),
                                      torch.float32)
    prompts = ["a red circle", "a blue square on the left"]
    images = {}
    for name, pipe in (("stock", stock), ("ours", ours), ("kohya", kohya), ("plain", plain)):
        pipe.set_progress_bar_config(disable=True)
        images[name] = pipe(prompts, num_inference_steps=4, guidance_scale=1.0, num_images_per_prompt=2,
                            output_type="np", generator=torch.Generator().manual_seed(7)).images
    assert images["ours"].shape == images["stock"].shape == (4, 32, 32, 3)
    assert abs(images["ours"] - images["stock"]).max() <= 1e-4
    assert abs(images["kohya"] - images["stock"]).max() <= 1e-4
    assert abs(images["plain"] - images["stock"]).max() > 1e-3  # the adapter did change the images


def test_ldm_generate_takes_few_step_defaults_from_the_lcm_lora(teacher, lcm_lora, tmp_path):
    lora = str(lcm_lora / LORA_WEIGHTS_NAME)
    assert generate.main(["a red circle", "--model", str(teacher), "--lora", lora, "--out", str(tmp_path / "a"),
                          "-n", "1"]) == 0
    row = json.loads((tmp_path / "a" / "manifest.jsonl").read_text().splitlines()[0])
    assert (row["scheduler"], row["steps"], row["guidance_scale"]) == ("lcm", 4, 1.0)
    assert np.asarray(Image.open(tmp_path / "a" / row["file"])).shape == (32, 32, 3)
    assert generate.main(["a red circle", "--model", str(teacher), "--lora", lora, "--out", str(tmp_path / "b"),
                          "-n", "1", "--steps", "2"]) == 0  # what the user gives wins
    row = json.loads((tmp_path / "b" / "manifest.jsonl").read_text().splitlines()[0])
    assert (row["scheduler"], row["steps"], row["guidance_scale"]) == ("lcm", 2, 1.0)
    assert (lcm_lora / "samples" / "final.png").is_file()


def test_non_finite_loss_stops_with_one_line_error(teacher, tmp_path, capsys):
    out = tmp_path / "out"
    code = distill_ldm.main(_lora_args(teacher, out, "--max-steps", "6", "--lr", "1e30", "--warmup-steps", "0",
                                       "--checkpoint-every", "1"))
    assert code == 1
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith("error: non-finite loss") and "checkpoints/step-" in err[0]
    assert not (out / LORA_WEIGHTS_NAME).exists()


@pytest.mark.parametrize("extra,word", [
    (["--lora-rank", "0"], "--lora-rank"),
    (["--lora-rank", "4", "--solver-steps", "10"], "--solver-steps 50"),
    (["--lora-alpha", "8"], "need --lora-rank"),
    (["--lora-rank", "4", "--solver-steps", "50", "--lora-targets", ""], "targets are empty"),
])
def test_bad_lora_option_is_a_one_line_error_before_any_work(teacher, tmp_path, capsys, extra, word):
    assert distill_ldm.main(distill_args(teacher, tmp_path / "o", *extra)) == 2
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and word in err[0]
    assert not (tmp_path / "o" / distill_ldm.CONFIG_FILE).exists()


@pytest.mark.slow
def test_two_processes_match_one_process_with_double_batch(teacher, tmp_path):
    """accelerate launch, 2 CPU processes (gloo) × batch 2 == 1 process × batch 4, after 3 steps. Within lr/10
    as test_train_ldm_lora: Adam turns the all-reduce's reordering of lora_A's near-zero gradients into steps."""
    two = _lora_args(teacher, tmp_path / "two", "--max-steps", "3", "--checkpoint-every", "0")
    two[two.index("--batch-size") + 1] = "2"
    result = launch_two_processes([str(REPO / "distill_ldm.py"), *two], cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    one = _lora_args(teacher, tmp_path / "one", "--max-steps", "3", "--checkpoint-every", "0")
    assert distill_ldm.main(one) == 0
    one_w, two_w = (load_file(str(tmp_path / name / LORA_WEIGHTS_NAME)) for name in ("one", "two"))
    assert set(one_w) == set(two_w)
    for key in one_w:
        torch.testing.assert_close(two_w[key], one_w[key], rtol=0, atol=1e-4, msg=key)
