"""pipelines/edit_inputs.py through `ldm-generate` (pipelines.generate.main): editing runs, what the manifest
records, paste-back, and one-line errors with exit status 2."""

import hashlib
import json

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from PIL import Image
from launching import assert_same_files, launch_two_processes, one_thread
from tiny_components import tiny_inpaint_unet, tiny_text_encoder, tiny_tokenizer, tiny_unet, tiny_vae

from pipelines import ImageToImagePipeline
from pipelines.edit_inputs import paste_weight
from pipelines.folder import load_pipeline, save_pipeline_folder
from pipelines.generate import main
from pipelines.schedulers import make_scheduler


def save_model(folder, tmp_path_factory, unet):
    tokenizer = tiny_tokenizer(tmp_path_factory.mktemp("tokenizer"))
    return save_pipeline_folder(folder, vae=tiny_vae(), text_encoder=tiny_text_encoder(tokenizer),
                                tokenizer=tokenizer, unet=unet, scheduler=DDPMScheduler())


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return save_model(tmp_path_factory.mktemp("model") / "pipe", tmp_path_factory, tiny_unet())


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / "init.png")
    mask = np.zeros((32, 32), dtype=np.uint8)
    mask[8:24, 4:20] = 255
    Image.fromarray(mask, mode="L").save(folder / "mask.png")
    Image.fromarray(np.stack([mask] * 3, axis=-1)).save(folder / "mask_rgb.png")  # grey, stored as RGB
    colour = np.stack([mask, mask // 2, mask], axis=-1)
    Image.fromarray(colour).save(folder / "mask_colour.png")
    Image.new("L", (16, 32)).save(folder / "mask_small.png")
    Image.new("RGB", (30, 32)).save(folder / "odd.png")
    (folder / "broken.png").write_bytes(b"not a png at all")
    return folder


def run(model, out, *extra):
    return main(["red circle", "--model", str(model), "--out", str(out), "--steps", "4", "-n", "2",
                 "--dtype", "fp32", *map(str, extra)])


def read_manifest(out):
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pixels(path):
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def test_image_to_image_records_the_edit_and_reproduces_from_the_manifest(model, files, tmp_path):
    assert run(model, tmp_path, "--image", files / "init.png", "--strength", 0.5) == 0
    rows = read_manifest(tmp_path)
    assert rows[1]["init_image_sha256"] == sha(files / "init.png") and rows[1]["strength"] == 0.5
    assert "mask_sha256" not in rows[1]
    png = Image.open(tmp_path / rows[1]["file"])
    assert png.text["init_image_sha256"] == sha(files / "init.png") and json.loads(png.text["strength"]) == 0.5
    pipe = ImageToImagePipeline(**load_pipeline(model).components)
    pipe.scheduler = make_scheduler("dpm++", pipe.scheduler.config)
    image = pipe("red circle", image=Image.open(files / "init.png"), strength=0.5, num_inference_steps=4,
                 generator=torch.Generator().manual_seed(rows[1]["seed"])).images[0]
    assert np.abs(np.asarray(image, dtype=np.int16) - pixels(tmp_path / rows[1]["file"])).max() <= 1


def test_inpaint_keep_unmasked_is_exact_outside_the_mask(model, files, tmp_path):
    assert run(model, tmp_path, "--image", files / "init.png", "--mask-image", files / "mask_rgb.png",
               "--keep-unmasked", "--mask-blur", 2) == 0
    rows = read_manifest(tmp_path)
    assert rows[0]["mask_sha256"] == sha(files / "mask_rgb.png") and rows[0]["strength"] == 1.0
    assert rows[0]["keep_unmasked"] is True and rows[0]["mask_blur"] == 2
    keep = np.asarray(Image.open(files / "mask.png")) == 0
    original = pixels(files / "init.png")
    for row in rows:
        edited = pixels(tmp_path / row["file"])
        assert np.array_equal(edited[keep], original[keep])
        assert np.abs(edited[~keep] - original[~keep]).mean() > 10  # the box was repainted


def test_outpaint_grows_the_canvas_and_records_the_margins(model, files, tmp_path):
    assert run(model, tmp_path, "--image", files / "init.png", "--outpaint", "8,0,4,4", "--keep-unmasked",
               "--scheduler", "ddim", "--repaint-jump-length", 2, "--repaint-jump-n-sample", 2) == 0
    row = read_manifest(tmp_path)[0]
    assert row["outpaint"] == [8, 0, 4, 4] and row["repaint_jump_n_sample"] == 2 and row["mask_sha256"] is None
    edited = pixels(tmp_path / row["file"])
    assert edited.shape == (36, 44, 3)
    assert np.array_equal(edited[0:32, 8:40], pixels(files / "init.png"))


def test_paste_weight_softens_only_inside_the_mask():
    mask = np.zeros((32, 32), dtype=np.uint8)
    mask[8:24, 8:24] = 255
    hard, soft = paste_weight(Image.fromarray(mask), 0), paste_weight(Image.fromarray(mask), 3)
    assert set(np.unique(hard)) == {0.0, 1.0}
    assert (soft[mask == 0] == 0).all() and (soft <= hard).all()
    assert 0 < soft[8, 16] < 0.6 and soft[16, 16] > 0.95  # the mask's edge blends, its centre is generated


@pytest.mark.parametrize("extra, message", [
    (["--image", "{d}/init.png", "--mask-image", "{d}/mask_small.png"],
     "--mask-image is 16x32 but --image is 32x32"),
    (["--image", "{d}/init.png", "--mask-image", "{d}/mask_colour.png"], "has colours; give a greyscale mask"),
    (["--image", "{d}/init.png", "--strength", "1.5"], r"--strength must be in (0, 1]"),
    (["--image", "{d}/init.png", "--strength", "0"], r"--strength must be in (0, 1]"),
    (["--image", "{d}/init.png", "--outpaint", "2,0,0,0"], "multiples of the VAE factor 4"),
    (["--image", "{d}/init.png", "--outpaint", "8,0"], "LEFT,TOP,RIGHT,BOTTOM"),
    (["--image", "{d}/broken.png"], "cannot read --image"),
    (["--image", "{d}/missing.png"], "does not exist"),
    (["--image", "{d}/odd.png"], "multiples of the VAE factor 4"),
    (["--mask-image", "{d}/mask.png"], "--mask-image edits an image: give it with --image"),
    (["--image", "{d}/init.png", "--keep-unmasked"], "--keep-unmasked needs a mask"),
    (["--image", "{d}/init.png", "--mask-image", "{d}/mask.png", "--repaint-jump-n-sample", "2"],
     "RePaint resampling needs the ddim or ddpm scheduler"),
    (["--image", "{d}/init.png", "--strength", "0.2"], "keeps no step of --steps 4"),
    (["--image", "{d}/init.png", "--height", "32"], "--height/--width do not apply with --image"),
])
def test_bad_edit_input_exits_2_with_one_line(model, files, tmp_path, capsys, extra, message):
    assert run(model, tmp_path, *[e.format(d=files) for e in extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err, err


def test_inpainting_model_needs_a_mask(files, tmp_path, tmp_path_factory, capsys):
    model = save_model(tmp_path / "inpainting", tmp_path_factory, tiny_inpaint_unet())
    assert run(model, tmp_path / "o1") == 2
    assert "SD-inpainting model" in capsys.readouterr().err
    assert run(model, tmp_path / "o2", "--image", files / "init.png", "--mask-image", files / "mask.png") == 0
    assert len(read_manifest(tmp_path / "o2")) == 2


@pytest.mark.slow
def test_two_processes_edit_the_same_files_as_one(model, files, tmp_path):
    """`accelerate launch` on CPU (gloo), 2 processes, inpainting: union of outputs == 1-process run."""
    args = ["red circle", "--model", str(model), "--steps", "2", "-n", "3", "--batch-size", "2",
            "--image", str(files / "init.png"), "--mask-image", str(files / "mask.png"), "--keep-unmasked"]
    with one_thread():
        assert main([*args, "--out", str(tmp_path / "one")]) == 0
    result = launch_two_processes(["-m", "pipelines.generate", *args, "--out", str(tmp_path / "two")], timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "process 2 of 2" in result.stderr
    # generate_config.json records --out, which differs by construction
    assert_same_files(tmp_path / "one", tmp_path / "two", except_names=("generate_config.json",))
