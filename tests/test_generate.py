"""pipelines/generate.py (`ldm-generate`): files, manifest, PNG metadata, seeds, processes, bad input."""

import json
import shutil

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from PIL import Image
from launching import assert_same_files, launch_two_processes, one_thread
from tiny_components import tiny_text_encoder, tiny_tokenizer, tiny_unet, tiny_vae

from pipelines.folder import load_pipeline, save_pipeline_folder
from pipelines.generate import main
from pipelines.schedulers import make_scheduler

CPU_ONLY = pytest.mark.skipif(torch.cuda.is_available(), reason="the message names the CPU case")
MANIFEST_KEYS = ["file", "prompt", "negative_prompt", "seed", "steps", "guidance_scale", "scheduler", "model"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    tokenizer = tiny_tokenizer(tmp_path_factory.mktemp("tokenizer"))
    folder = tmp_path_factory.mktemp("model") / "pipe"
    save_pipeline_folder(
        folder,
        vae=tiny_vae(),
        text_encoder=tiny_text_encoder(tokenizer),
        tokenizer=tokenizer,
        unet=tiny_unet(),
        scheduler=DDPMScheduler(),
    )
    return folder


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    lines = [
        {"prompt": "a red circle"},
        {"prompt": "blue square", "negative_prompt": "green", "seed": 1234},
        {"prompt": "green triangle on the right"},
    ]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return path


def run(model, out, *extra):
    return main(["--model", str(model), "--out", str(out), "--steps", "2", "-n", "2", *map(str, extra)])


def pixels(path):
    return np.asarray(Image.open(path), dtype=np.int16)


def read_manifest(out):
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def test_writes_pngs_grid_and_manifest(model, prompts_file, tmp_path):
    assert run(model, tmp_path, "--prompts-file", prompts_file, "--batch-size", 4) == 0
    rows = read_manifest(tmp_path)
    assert [r["file"] for r in rows] == [
        "00000-00.png",
        "00000-01.png",
        "00001-00.png",
        "00001-01.png",
        "00002-00.png",
        "00002-01.png",
    ]
    assert all(list(r) == MANIFEST_KEYS for r in rows)
    assert rows[2]["negative_prompt"] == "green" and [rows[2]["seed"], rows[3]["seed"]] == [1234, 1235]
    assert len({r["seed"] for r in rows}) == 6
    image = Image.open(tmp_path / rows[3]["file"])
    assert image.size == (32, 32)
    assert image.text["prompt"] == "blue square" and json.loads(image.text["seed"]) == 1235
    assert image.text["scheduler"] == "dpm++" and json.loads(image.text["guidance_scale"]) == 4.0
    assert (tmp_path / "grid.png").is_file() and (tmp_path / "generate_config.json").is_file()


def test_images_do_not_depend_on_batch_size_and_match_the_pipeline(model, prompts_file, tmp_path):
    fp32 = ("--dtype", "fp32")  # on CUDA, auto would mean bf16; the reference pipeline below runs in fp32
    assert run(model, tmp_path / "b1", "--prompts-file", prompts_file, "--batch-size", 1, *fp32) == 0
    assert run(model, tmp_path / "b3", "--prompts-file", prompts_file, "--batch-size", 3, *fp32) == 0
    rows = read_manifest(tmp_path / "b1")
    assert rows == read_manifest(tmp_path / "b3")
    for row in rows:  # batching may move a float by an ulp, which can flip one 8-bit level at most
        assert (
            np.abs(pixels(tmp_path / "b1" / row["file"]) - pixels(tmp_path / "b3" / row["file"])).max() <= 1
        )
    # The manifest seed alone reproduces an image with the plain pipeline (on the device the command picked).
    pipe = load_pipeline(model, device="cuda" if torch.cuda.is_available() else "cpu")
    pipe.scheduler = make_scheduler("dpm++", pipe.scheduler.config)
    row = rows[3]
    image = pipe(
        row["prompt"],
        negative_prompt=row["negative_prompt"],
        num_inference_steps=2,
        guidance_scale=row["guidance_scale"],
        generator=torch.Generator().manual_seed(row["seed"]),
    ).images[0]
    assert np.abs(np.asarray(image, dtype=np.int16) - pixels(tmp_path / "b1" / row["file"])).max() <= 1


def test_long_prompt_is_truncated_with_a_warning(model, tmp_path, caplog):
    prompt = "a red circle on the left " * 4 + "blue square"
    assert run(model, tmp_path, prompt, "-n", 1) == 0
    assert "blue square" in caplog.text and "truncated" in caplog.text.lower()


def test_prompt_flag_is_the_positional_prompt_and_no_flag_is_matched_by_prefix(model, tmp_path, capsys):
    assert run(model, tmp_path / "positional", "a red circle", "-n", 1) == 0
    assert run(model, tmp_path / "flag", "--prompt", "a red circle", "-n", 1) == 0
    rows = read_manifest(tmp_path / "flag")
    assert rows == read_manifest(tmp_path / "positional") and rows[0]["prompt"] == "a red circle"
    flag, positional = (pixels(tmp_path / name / rows[0]["file"]) for name in ("flag", "positional"))
    assert np.array_equal(flag, positional)
    capsys.readouterr()
    assert run(model, tmp_path / "both", "red", "--prompt", "blue") != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "not both" in err and "\n" not in err
    # argparse's own usage error (exit 2, as for every user mistake), not --prompts-file
    assert run(model, tmp_path / "prefix", "--prompts", "x.txt") == 2
    assert "unrecognized arguments: --prompts" in capsys.readouterr().err


def test_a_prompt_that_names_a_prompts_file_gets_a_warning(model, prompts_file, tmp_path, caplog, monkeypatch):
    monkeypatch.chdir(prompts_file.parent)
    assert run(model, tmp_path, prompts_file.name, "-n", 1) == 0
    assert read_manifest(tmp_path)[0]["prompt"] == prompts_file.name  # still the text, as asked
    assert "--prompts-file" in caplog.text and prompts_file.name in caplog.text


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--steps", "0"], "--steps must be at least 1"),
        (["--guidance-scale", "-1"], "--guidance-scale must be >= 0"),
        (["--height", "30"], "height must be a positive multiple of the VAE factor 4"),
        (["--scheduler", "plms"], "unknown scheduler"),
        pytest.param(["--dtype", "fp16"], "fp16 needs a CUDA GPU", marks=CPU_ONLY),
        pytest.param(["--attention", "xformers"], "xformers needs a CUDA GPU", marks=CPU_ONLY),
        (["--attention", "flash"], "--attention must be one of"),
    ],
)
def test_bad_options_exit_with_one_line(model, tmp_path, capsys, extra, message):
    assert main(["red", "--model", str(model), "--out", str(tmp_path), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err and "Traceback" not in err


def test_bad_files_exit_with_one_line(model, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    broken = shutil.copytree(model, tmp_path / "broken")
    shutil.rmtree(broken / "text_encoder")
    corrupt = shutil.copytree(model, tmp_path / "corrupt")
    (corrupt / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"\0" * 64)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    cases = [
        (
            ["--prompts-file", str(empty), "--model", str(model), "--out", str(tmp_path / "o")],
            "holds no prompts",
        ),
        (
            ["red", "--model", str(broken), "--out", str(tmp_path / "o")],
            "missing its text_encoder/ component",
        ),
        (["red", "--model", str(corrupt), "--out", str(tmp_path / "o")], "unreadable weights file"),
        (["red", "--model", str(model), "--out", str(blocker / "sub")], "cannot write to output folder"),
        (["red", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "o")], "not a pipeline folder"),
        (["red", "--model", str(model.parent), "--out", str(tmp_path / "o")], f"did you mean {model}?"),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err and "\n" not in err, err


@pytest.mark.slow
def test_two_processes_write_the_same_files_as_one(model, prompts_file, tmp_path):
    """`accelerate launch` on CPU (gloo), 2 processes: union of outputs == 1-process run, byte for byte."""
    args = [
        "--model",
        str(model),
        "--steps",
        "2",
        "-n",
        "2",
        "--prompts-file",
        str(prompts_file),
        "--batch-size",
        "2",
    ]
    with one_thread():
        assert main([*args, "--out", str(tmp_path / "one")]) == 0
    result = launch_two_processes(["-m", "pipelines.generate", *args, "--out", str(tmp_path / "two")], timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "process 2 of 2" in result.stderr
    # generate_config.json records --out, which differs by construction
    assert_same_files(tmp_path / "one", tmp_path / "two", except_names=("generate_config.json",))
