"""pipelines/serve/editing.py through a real `ldm-serve` process: `POST /sdapi/v1/img2img` (image-to-image,
inpainting with a mask, outpainting by margins) gives the image `ldm-generate --image … [--mask-image … |
--outpaint …]` writes for the same seed and settings, with the same PNG metadata; bad edits get a 422 naming
the field and no job.

Tolerance: at most 1 of 255 per channel, as for text-to-image: the server samples in another process on a
worker thread, where the CPU kernels may sum in another order, and a float32 difference of ~1e-6 can round a
pixel to the next 8-bit level. The `--keep-unmasked` pixels are compared exactly (they are copied, not computed).
"""

import json

import numpy as np
import pytest
from PIL import Image
from serving import decode_png, encode_png, in_thread, pixels, shared_server

from pipelines.generate import main as ldm_generate
from pipelines.serve.editing import UPLOADED

# What A1111 clients send with img2img besides the fields we read; ignored.
CLIENT_EXTRAS = {
    "resize_mode": 0,
    "inpainting_fill": 1,
    "inpaint_full_res": False,
    "include_init_images": False,
    "image_cfg_scale": 1.5,
    "initial_noise_multiplier": 1.0,
    "styles": [],
    "override_settings": {},
}


@pytest.fixture(scope="module")
def server():
    return shared_server()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A 40×32 init image (not square: sizes must follow it) and a mask over its left part, as PNG files."""
    folder = tmp_path_factory.mktemp("edit-files")
    rng = np.random.default_rng(0)
    init = np.zeros((32, 40, 3), np.uint8) + np.array([30, 60, 200], np.uint8)
    init[8:24, 6:20] = (220, 40, 40)
    init = np.clip(init + rng.integers(0, 20, init.shape), 0, 255).astype(np.uint8)
    Image.fromarray(init).save(folder / "init.png")
    mask = np.zeros((32, 40), np.uint8)
    mask[4:28, 2:22] = 255
    Image.fromarray(mask, mode="L").save(folder / "mask.png")
    return folder


def cli_image(model, out, files, *options) -> tuple[Image.Image, dict]:
    argv = [
        "a red square",
        "--model",
        str(model),
        "--out",
        str(out),
        "-n",
        "1",
        "--seed",
        "5",
        "--steps",
        "4",
        "--scheduler",
        "euler",
        "--guidance-scale",
        "3",
        "--dtype",
        "fp32",
        "--image",
        str(files / "init.png"),
        *map(str, options),
    ]
    assert in_thread(ldm_generate, argv) == 0
    row = json.loads((out / "manifest.jsonl").read_text().splitlines()[0])
    return Image.open(out / row["file"]), row


def api_image(server, files, seed, **fields) -> Image.Image:
    """The server's image for ldm-generate's image seed (A1111's image i is seed + i)."""
    body = {
        "prompt": "a red square",
        "seed": seed,
        "steps": 4,
        "sampler_name": "Euler",
        "cfg_scale": 3,
        "init_images": [encode_png_file(files / "init.png")],
        **CLIENT_EXTRAS,
        **fields,
    }
    status, answer = server.request("POST", "/sdapi/v1/img2img", body)
    assert status == 200, answer
    return decode_png(answer["images"][0])


def encode_png_file(path) -> str:
    import base64

    return base64.b64encode(path.read_bytes()).decode()  # the file's own bytes: the sha256s must agree


def same_metadata(ours: Image.Image, theirs: Image.Image) -> None:
    """Every PNG text key equal, except the file names: the server names its inputs UPLOADED."""
    names = {"init_image", "mask_image"}
    assert {k: v for k, v in ours.text.items() if k not in names} == {
        k: v for k, v in theirs.text.items() if k not in names
    }
    assert (
        ours.text["init_image"] == UPLOADED
        and ours.text["init_image_sha256"] == theirs.text["init_image_sha256"]
    )


def test_img2img_gives_ldm_generates_image_at_the_uploads_size(server, files, tmp_path):
    theirs, row = cli_image(server.model, tmp_path, files, "--strength", 0.6)
    ours = api_image(
        server, files, row["seed"], denoising_strength=0.6
    )  # no width/height: the image's own size
    assert ours.size == theirs.size == (40, 32)
    assert np.abs(pixels(ours) - pixels(theirs)).max() <= 1
    same_metadata(ours, theirs)


def test_inpaint_with_a_mask_gives_ldm_generates_keep_unmasked_image(server, files, tmp_path):
    theirs, row = cli_image(
        server.model, tmp_path, files, "--mask-image", files / "mask.png", "--keep-unmasked", "--mask-blur", 2
    )
    ours = api_image(
        server, files, row["seed"], mask=encode_png_file(files / "mask.png"), mask_blur=2, width=40, height=32
    )
    assert np.abs(pixels(ours) - pixels(theirs)).max() <= 1
    same_metadata(ours, theirs)
    assert ours.text["mask_image"] == UPLOADED and json.loads(ours.text["keep_unmasked"]) is True
    keep = np.asarray(Image.open(files / "mask.png")) < 128
    init = pixels(Image.open(files / "init.png"))
    assert np.array_equal(pixels(ours)[keep], init[keep])  # A1111's paste-back: exact outside the mask
    assert np.abs(pixels(ours)[~keep] - init[~keep]).mean() > 5  # and repainted inside


def test_inpaint_without_the_paste_back_and_inverted_mask(server, files, tmp_path):
    inverted = Image.eval(Image.open(files / "mask.png"), lambda v: 255 - v)
    inverted.save(tmp_path / "inverted.png")
    theirs, row = cli_image(server.model, tmp_path / "cli", files, "--mask-image", tmp_path / "inverted.png")
    ours = api_image(
        server,
        files,
        row["seed"],
        mask=encode_png_file(files / "mask.png"),
        inpainting_mask_invert=1,
        keep_unmasked=False,
    )
    assert np.abs(pixels(ours) - pixels(theirs)).max() <= 1
    assert json.loads(ours.text["keep_unmasked"]) is False and json.loads(ours.text["mask_blur"]) == 0


def test_outpaint_by_margins_gives_ldm_generates_widened_image(server, files, tmp_path):
    theirs, row = cli_image(server.model, tmp_path, files, "--outpaint", "8,0,4,4", "--keep-unmasked")
    ours = api_image(server, files, row["seed"], outpaint=[8, 0, 4, 4], mask_blur=0)
    assert ours.size == theirs.size == (52, 36)
    assert np.abs(pixels(ours) - pixels(theirs)).max() <= 1
    same_metadata(ours, theirs)
    assert np.array_equal(pixels(ours)[0:32, 8:48], pixels(Image.open(files / "init.png")))


def test_an_edit_streams_int_steps_times_strength_steps(server, files):
    from test_serve_app import stream

    events = []
    body = {
        "prompt": "a red square",
        "steps": 10,
        "denoising_strength": 0.5,
        "seed": 1,
        "init_images": [encode_png_file(files / "init.png")],
    }
    stream(server, body, events)
    totals = {e["total"] for e in events if e["event"] == "progress"}
    assert totals == {5} and events[-1]["event"] == "done"
    assert decode_png(events[-1]["images"][0]).size == (40, 32)


def square(size, colour=(200, 30, 30)):
    return encode_png(Image.new("RGB", size, colour))


@pytest.mark.parametrize(
    "body, field, words",
    [
        ({"init_images": [square((30, 32))]}, "init_images", "multiples of 4"),
        (
            {"init_images": [square((32, 32))], "denoising_strength": 0.1, "steps": 5},
            "denoising_strength",
            "keeps no step",
        ),
        (
            {"init_images": [square((32, 32))], "denoising_strength": 1.5},
            "denoising_strength",
            "between 0.0 and 1.0",
        ),
        ({"init_images": [square((32, 32))], "outpaint": [0, 0, 6, 0]}, "outpaint", "multiple of 4"),
        ({"init_images": [square((32, 32))], "outpaint": [0, 0, 0, 0]}, "outpaint", "not all 0"),
        ({"init_images": [square((32, 32))], "outpaint": [0, 0, 120, 0]}, "outpaint", "--max-size"),
        (
            {"init_images": [square((32, 32))], "outpaint": [4, 0, 0, 0], "mask": square((32, 32))},
            "outpaint",
            "not both",
        ),
        (
            {
                "init_images": [square((32, 32))],
                "mask": square((32, 32)),
                "repaint_jump_n_sample": 2,
                "sampler_name": "Euler",
            },
            "repaint_jump_n_sample",
            "DDIM or DDPM",
        ),
        (
            {"init_images": [square((32, 32))], "repaint_jump_n_sample": 2, "sampler_name": "DDIM"},
            "repaint_jump_n_sample",
            "needs a mask",
        ),
        (
            {"init_images": [square((32, 32))], "mask": square((32, 32)), "mask_blur": -1},
            "mask_blur",
            "at least 0",
        ),
    ],
)
def test_bad_edits_get_a_422_naming_the_field_and_no_job(server, body, field, words):
    status, answer = server.request("POST", "/sdapi/v1/img2img", {"prompt": "a red circle", **body})
    assert status == 422, answer
    assert answer["detail"][0]["loc"] == ["body", field] and words in answer["detail"][0]["msg"], answer
    assert server.request("GET", "/sdapi/v1/progress")[1]["state"]["job_count"] == 0 and server.alive()
