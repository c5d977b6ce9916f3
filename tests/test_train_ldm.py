"""train_ldm.py end to end on tiny components: exact resume, stock-pipeline output, errors, data parallel."""
import importlib.util
import itertools
import logging
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image, ImageDraw
from safetensors.torch import load_file

import train_ldm
from ldm.bucket_grid import sample_rows
from ldm.data import cli as data_cli
from ldm.grid import make_grid
from pipelines.pipeline_text_to_image import TextToImagePipeline
from launching import launch_two_processes
from resuming import cut_back_to
from interrupting import interrupt_when_training, last_line
from tiny_components import skip_bitwise_comparison_on_cuda, tiny_text_encoder, tiny_tokenizer, tiny_unet, tiny_vae

REPO = Path(__file__).resolve().parents[1]
UNET_WEIGHTS = "unet/diffusion_pytorch_model.safetensors"
TEXT_WEIGHTS = "text_encoder/model.safetensors"


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """A tiny VAE folder, a tiny U-Net config JSON and a tiny pretrained text-encoder folder."""
    root = tmp_path_factory.mktemp("parts")
    tiny_vae().save_pretrained(root / "vae")
    unet_config = {k: v for k, v in tiny_unet().config.items() if not k.startswith("_")}
    (root / "unet.json").write_text(json.dumps(unet_config))
    tokenizer = tiny_tokenizer(root / "te_tokenizer")
    tiny_text_encoder(tokenizer).save_pretrained(root / "te")
    tokenizer.save_pretrained(root / "te")
    return root


def _args(parts, out, *extra):
    return ["--data", "shapes", "--data-size", "16", "--resolution", "32", "--vae", str(parts / "vae"),
            "--output-dir", str(out), "--config", str(parts / "unet.json"), "--batch-size", "4",
            "--warmup-steps", "1", "--lr", "1e-3", "--tokenizer-vocab-size", "600", *extra]


def _weights(folder, name=UNET_WEIGHTS):
    return load_file(str(Path(folder) / name))


def _error_lines(stderr: str) -> list[str]:
    """The `error: ...` lines of a run's stderr (progress bars aside); there must be no traceback."""
    assert "Traceback" not in stderr
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def test_resume_is_exact(parts, tmp_path):
    """Stopped after step N of 2N + resume == 2N steps, bit for bit (U-Net, from-scratch text encoder, EMA,
    the default cosine schedule)."""
    common = ("--ema", "--ema-decay", "0.9", "--checkpoint-every", "2", "--max-steps", "4")
    assert train_ldm.main(_args(parts, tmp_path / "straight", *common)) == 0
    cut_back_to(tmp_path / "straight", 2, tmp_path / "split")
    assert train_ldm.main(_args(parts, tmp_path / "split", "--resume", "latest", *common)) == 0
    # Training did move the weights away from the initial ones.
    initial = {k: v for k, v in tiny_unet().state_dict().items()}
    assert any(not torch.equal(initial[k], v) for k, v in _weights(tmp_path / "straight").items())
    # The learned tokenizer's length fits the captions (< CLIP's 77) and matches the encoder's positions.
    pipe = StableDiffusionPipeline.from_pretrained(str(tmp_path / "split"), local_files_only=True)
    assert pipe.tokenizer.model_max_length == pipe.text_encoder.config.max_position_embeddings < 77
    saved = json.loads((tmp_path / "split" / train_ldm.CONFIG_FILE).read_text())
    assert saved["max_steps"] == 4 and saved["resume"] == "latest"
    skip_bitwise_comparison_on_cuda()
    for name in (UNET_WEIGHTS, TEXT_WEIGHTS):
        straight, split = _weights(tmp_path / "straight", name), _weights(tmp_path / "split", name)
        assert straight.keys() == split.keys()
        for key in straight:
            assert torch.equal(straight[key], split[key]), key


def test_ema_covers_the_trained_text_encoder(parts, tmp_path):
    """With a text encoder trained from scratch, the saved U-Net *and* text encoder are the EMA of the raw
    weights, recomputed here from the checkpoints with diffusers' warm-up decay min(d, 1 - (1 + n)^(-2/3))."""
    out = tmp_path / "out"
    assert train_ldm.main(_args(parts, out, "--max-steps", "2", "--ema", "--ema-decay", "0.5",
                                "--checkpoint-every", "1")) == 0
    raw_unet = [load_file(str(out / "checkpoints" / f"step-{n}" / "model.safetensors")) for n in (1, 2)]
    raw_text = []
    for n in (1, 2):
        states = [torch.load(path, weights_only=False, map_location="cpu")
                  for path in sorted((out / "checkpoints" / f"step-{n}").glob("custom_checkpoint_*.pkl"))]
        raw_text.append(next(state for state in states if "embeddings.token_embedding.weight" in state))
    decay = min(0.5, 1 - 2 ** (-2 / 3))  # the first EMA step copies the weights, the second averages
    for saved, raw in ((_weights(out), raw_unet), (_weights(out, TEXT_WEIGHTS), raw_text)):
        moved = 0
        for key, value in saved.items():
            expected = decay * raw[0][key].float() + (1 - decay) * raw[1][key].float()
            torch.testing.assert_close(value.float(), expected, rtol=1e-5, atol=1e-6)
            moved += not torch.equal(raw[0][key], raw[1][key])
        assert moved > 0  # the two steps changed these weights, so the average is not trivially either one


def test_stock_pipeline_loads_and_generates(parts, tmp_path):
    """Frozen pretrained text encoder, v-prediction: stock diffusers loads the folder offline and samples."""
    out = tmp_path / "out"
    assert train_ldm.main(_args(parts, out, "--max-steps", "2", "--text-encoder", str(parts / "te"),
                                "--prediction-type", "v_prediction", "--beta-schedule", "scaled_linear",
                                "--sample-prompts", "a red circle|a blue square", "--sample-steps", "2")) == 0
    assert (out / "samples" / "final.png").is_file()
    pipe = StableDiffusionPipeline.from_pretrained(str(out), local_files_only=True, safety_checker=None)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert pipe.scheduler.config.beta_schedule == "scaled_linear"
    # The frozen encoder is saved unchanged.
    reference = tiny_text_encoder(tiny_tokenizer(tmp_path / "tok")).state_dict()
    for key, value in _weights(out, TEXT_WEIGHTS).items():
        assert torch.equal(value, reference[key]), key
    image = pipe("a red circle", num_inference_steps=2, guidance_scale=3.0, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 32, 32, 3) and bool((image >= 0).all() and (image <= 1).all())


def test_trains_from_a_cache_built_ahead_of_time(parts, tmp_path, capsys):
    """`ldm-data cache` then `--latent-cache` without --data trains exactly as --data does (same key, same
    cache); a cache encoded with another VAE is refused in one line."""
    cache = tmp_path / "cache"
    assert data_cli.main(["cache", "shapes", "--size", "16", "--resolution", "32", "--vae", str(parts / "vae"),
                          "--out", str(cache), "--workers", "0"]) == 0
    args = _args(parts, tmp_path / "from_cache", "--max-steps", "2", "--latent-cache", str(cache))
    del args[args.index("--data"):args.index("--data") + 4]  # neither --data nor --data-size
    assert train_ldm.main(args) == 0
    assert not (tmp_path / "from_cache" / "latent_cache").exists()
    assert train_ldm.main(_args(parts, tmp_path / "from_data", "--max-steps", "2")) == 0
    skip_bitwise_comparison_on_cuda()
    from_cache, from_data = _weights(tmp_path / "from_cache"), _weights(tmp_path / "from_data")
    assert all(torch.equal(from_cache[key], from_data[key]) for key in from_data)
    other_vae = tmp_path / "other_vae"
    tiny_vae(seed=1).save_pretrained(other_vae)
    args[args.index("--vae") + 1] = str(other_vae)
    capsys.readouterr()
    assert train_ldm.main(args) == 2
    err = _error_lines(capsys.readouterr().err)
    assert len(err) == 1 and "another VAE" in err[0]


def _mixed_aspect_folder(folder):
    """Wide, tall and square scenes: a coloured disc on a background, captioned."""
    folder.mkdir()
    scenes = [("wide", (128, 64)), ("tall", (64, 128)), ("square", (96, 96))]
    for k, ((name, size), colour) in enumerate(itertools.product(scenes, ("red", "blue"))):
        image = Image.new("RGB", size, (30 * k, 90, 60))
        ImageDraw.Draw(image).ellipse((10, 10, 50, 50), fill={"red": (220, 20, 20), "blue": (20, 20, 220)}[colour])
        image.save(folder / f"{k}.png")
        (folder / f"{k}.txt").write_text(f"a {colour} disc in a {name} scene")
    return folder


def test_buckets_train_resume_exactly_and_sample_at_each_buckets_size(parts, tmp_path, caplog):
    """A folder of wide, tall and square images trains in three buckets, each batch from one; stopped after N
    of 2N steps and resumed, it ends bit for bit as 2N straight steps; the saved pipeline samples at every bucket's
    size, and the validation grid has one row per bucket: what the saved pipeline draws at that size."""
    data = _mixed_aspect_folder(tmp_path / "data")
    prompts = ["a red disc in a wide scene", "a blue disc in a tall scene"]
    common = ["--buckets", "--batch-size", "2", "--checkpoint-every", "2", "--sample-prompts", "|".join(prompts),
              "--sample-steps", "2"]

    def args(out, steps, *extra):
        argv = _args(parts, out, "--max-steps", str(steps), *common, *extra)
        argv[argv.index("--data") + 1], argv[argv.index("--data-size") + 1] = str(data), "6"
        return argv
    with caplog.at_level(logging.INFO, logger="train_ldm"):
        assert train_ldm.main(args(tmp_path / "straight", 4)) == 0
    assert "images per bucket (width x height px): 24x40: 2, 32x32: 2, 40x24: 2" in caplog.text
    # every default the run chose is one log line with its reason; a given flag is not among them
    assert "default prediction_type = v_prediction: from scratch" in caplog.text and "default lr" not in caplog.text
    cut_back_to(tmp_path / "straight", 2, tmp_path / "split")
    assert train_ldm.main(args(tmp_path / "split", 4, "--resume", "latest")) == 0
    pipe = StableDiffusionPipeline.from_pretrained(str(tmp_path / "split"), local_files_only=True,
                                                   safety_checker=None)
    ours = TextToImagePipeline.from_pretrained(str(tmp_path / "straight"))
    ours.set_progress_bar_config(disable=True)
    images, captions = sample_rows(ours, prompts, [(40, 24), (32, 32), (24, 40)], seed=0, num_inference_steps=2,
                                   guidance_scale=4.0)
    grid = np.asarray(Image.open(tmp_path / "straight" / "samples" / "final.png"), dtype=np.int16)
    expected = np.asarray(make_grid(images, captions=captions, ncols=2), dtype=np.int16)
    assert grid.shape == expected.shape and np.abs(grid - expected).max() <= 1  # a uint8 rounding at most
    for width, height in ((40, 24), (24, 40), (32, 32)):
        image = pipe("a red disc in a wide scene", num_inference_steps=2, width=width, height=height,
                     output_type="np", generator=torch.Generator().manual_seed(0)).images
        assert image.shape == (1, height, width, 3)
    skip_bitwise_comparison_on_cuda()
    straight, split = _weights(tmp_path / "straight"), _weights(tmp_path / "split")
    assert all(torch.equal(straight[key], split[key]) for key in straight)


def test_caption_word_dropout_trains_and_resumes_exactly(parts, tmp_path):
    common = ("--caption-word-dropout", "0.3", "--checkpoint-every", "2", "--max-steps", "4")
    assert train_ldm.main(_args(parts, tmp_path / "straight", *common)) == 0
    cut_back_to(tmp_path / "straight", 2, tmp_path / "split")
    assert train_ldm.main(_args(parts, tmp_path / "split", "--resume", "latest", *common)) == 0
    assert train_ldm.main(_args(parts, tmp_path / "plain", "--max-steps", "4", "--checkpoint-every", "2")) == 0
    skip_bitwise_comparison_on_cuda()
    straight, split, plain = (_weights(tmp_path / name) for name in ("straight", "split", "plain"))
    assert all(torch.equal(straight[key], split[key]) for key in straight)
    assert any(not torch.equal(straight[key], plain[key]) for key in straight)  # the captions did change


def test_non_finite_loss_stops_with_one_line_error(parts, tmp_path, capsys):
    out = tmp_path / "out"
    code = train_ldm.main(_args(parts, out, "--max-steps", "6", "--lr", "1e30", "--warmup-steps", "0",
                                "--checkpoint-every", "1", "--text-encoder", str(parts / "te")))
    assert code == 1
    err = _error_lines(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith("error: non-finite loss") and "at step 2" in err[0]
    latest = (out / "checkpoints" / "latest").read_text().strip()
    assert latest == "step-1" and f"checkpoints/{latest}" in err[0]  # names the last good checkpoint
    assert not (out / "model_index.json").exists()


def test_ctrl_c_finishes_the_step_saves_it_and_resumes(parts, tmp_path):
    """One SIGINT mid-run: a checkpoint of the last finished step (no periodic ones here), one line, exit 130;
    the same command with --resume latest continues from it."""
    out = tmp_path / "out"
    common = ["--checkpoint-every", "0", "--text-encoder", str(parts / "te")]
    status, stderr = interrupt_when_training([sys.executable, str(REPO / "train_ldm.py"),
                                              *_args(parts, out, "--max-steps", "100000", *common)], cwd=REPO)
    assert status == 130 and "Traceback" not in stderr, stderr[-2000:]
    line = last_line(stderr)
    assert line.startswith("interrupted after step ") and "--resume latest" in line
    step = int(line.split()[3].rstrip(";"))
    assert (out / "checkpoints" / "latest").read_text().strip() == f"step-{step}" and f"step-{step}" in line
    assert json.loads((out / "checkpoints" / f"step-{step}" / "trainer_state.json").read_text()) == {"step": step}
    assert not (out / "model_index.json").exists()
    assert train_ldm.main(_args(parts, out, "--max-steps", str(step + 1), *common, "--resume", "latest")) == 0
    assert (out / "model_index.json").is_file()


def test_bad_vae_path_is_a_one_line_error(parts, tmp_path, capsys):
    code = train_ldm.main(["--data", "shapes", "--vae", str(tmp_path / "nope"),
                           "--output-dir", str(tmp_path / "o")])
    assert code == 2
    err = _error_lines(capsys.readouterr().err)
    assert len(err) == 1 and "nope" in err[0]


@pytest.mark.parametrize("extra, word", [(("--min-snr-gamma", "5", "--snr-floor", "6"), "--snr-floor"),
                                         (("--snr-floor", "-1"), "--snr-floor"),
                                         (("--min-snr-gamma", "0", "--snr-floor", "0.1"), "--snr-floor"),
                                         (("--min-snr-gamma", "-1"), "--min-snr-gamma"),
                                         (("--caption-word-dropout", "1"), "--caption-word-dropout"),
                                         (("--norm-num-groups", "0"), "--norm-num-groups"),
                                         (("--buckets", "--min-bucket-reso", "48"), "must lie between"),
                                         (("--encode-workers", "-1"), "--encode-workers"),
                                         pytest.param(("--attention", "xformers"), "needs a CUDA GPU",
                                                      marks=pytest.mark.skipif(torch.cuda.is_available(),
                                                                               reason="CPU-only message"))])
def test_bad_option_is_a_one_line_error_before_any_work(parts, tmp_path, capsys, extra, word):
    assert train_ldm.main(_args(parts, tmp_path / "o", *extra)) == 2
    err = _error_lines(capsys.readouterr().err)
    assert len(err) == 1 and word in err[0]
    assert not (tmp_path / "o").exists()


def test_resume_without_a_checkpoint_is_a_one_line_error_before_any_work(parts, tmp_path, capsys):
    assert train_ldm.main(_args(parts, tmp_path / "o", "--resume", "latest")) == 2
    err = _error_lines(capsys.readouterr().err)
    assert len(err) == 1 and "--resume latest: no checkpoint found" in err[0]
    assert not (tmp_path / "o").exists()  # no latent cache encoded, no tokenizer learned


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is not None, reason="bitsandbytes is installed")
def test_8bit_adam_without_bitsandbytes_is_a_one_line_error(parts, tmp_path, capsys):
    assert train_ldm.main(_args(parts, tmp_path / "o", "--use-8bit-adam")) == 2
    err = _error_lines(capsys.readouterr().err)
    assert len(err) == 1 and "bitsandbytes" in err[0]
    assert not (tmp_path / "o").exists()  # rejected before any work


@pytest.mark.slow
def test_two_processes_match_one_process_with_double_batch(parts, tmp_path):
    """accelerate launch, 2 CPU processes (gloo) × batch 2 == 1 process × batch 4, after 3 steps."""
    args = ["--max-steps", "3", "--checkpoint-every", "0"]
    two = _args(parts, tmp_path / "two", *args)
    two[two.index("--batch-size") + 1] = "2"
    result = launch_two_processes([str(REPO / "train_ldm.py"), *two], cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    assert train_ldm.main(_args(parts, tmp_path / "one", *args)) == 0
    for name in (UNET_WEIGHTS, TEXT_WEIGHTS):
        one, two_w = _weights(tmp_path / "one", name), _weights(tmp_path / "two", name)
        for key in one:
            torch.testing.assert_close(two_w[key], one[key], rtol=1e-4, atol=1e-5, msg=key)
