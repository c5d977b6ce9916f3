"""`ldm-serve` on a few-step folder (`few_step.json`, written by ldm-distill): the page's form and every request
that leaves steps, guidance or sampler out get the folder's, as `ldm-generate` does (same image, same PNG text);
what a request gives wins, as A1111 clients always send steps."""

import json

import pytest
import numpy as np
from PIL import Image
from serving import decode_png, in_thread, pixels, shared_server, start_server
from test_few_step import _folder

from pipelines.few_step import SamplingDefaults, write_sampling_defaults
from pipelines.generate import main as ldm_generate


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = _folder(tmp_path_factory.mktemp("few-serve"), few_step=True)  # a distilled U-Net, LCMScheduler
    write_sampling_defaults(folder, SamplingDefaults("lcm", 2, 3.0))
    own = start_server(folder)
    yield own
    own.stop()


def test_the_page_starts_on_the_folders_defaults_and_a_plain_folder_on_ldm_generates(server):
    defaults = server.request("GET", "/api/config")[1]["defaults"]
    assert (defaults["sampler_name"], defaults["steps"], defaults["cfg_scale"]) == ("LCM", 2, 3.0)
    plain = shared_server().request("GET", "/api/config")[1][
        "defaults"
    ]  # no few_step.json, --scheduler euler-a
    assert (plain["sampler_name"], plain["steps"], plain["cfg_scale"]) == ("Euler a", 25, 4.0)


def test_a_request_without_steps_is_sampled_as_ldm_generate_samples_the_folder(server, tmp_path):
    out = tmp_path / "generate"
    assert (
        in_thread(
            ldm_generate,
            [
                "a red circle",
                "--model",
                str(server.model),
                "--out",
                str(out),
                "-n",
                "1",
                "--seed",
                "3",
                "--dtype",
                "fp32",
            ],
        )
        == 0
    )
    row = json.loads((out / "manifest.jsonl").read_text().splitlines()[0])
    assert (row["scheduler"], row["steps"], row["guidance_scale"]) == ("lcm", 2, 3.0)
    status, answer = server.request(
        "POST", "/sdapi/v1/txt2img", {"prompt": "a red circle", "seed": row["seed"]}
    )
    assert status == 200, answer
    info = json.loads(answer["info"])
    assert (info["sampler_name"], info["steps"], info["cfg_scale"]) == ("LCM", 2, 3.0)
    assert (answer["parameters"]["steps"], answer["parameters"]["cfg_scale"]) == (2, 3.0)
    ours, theirs = decode_png(answer["images"][0]), Image.open(out / row["file"])
    assert np.abs(pixels(ours) - pixels(theirs)).max() <= 1 and ours.text == theirs.text


def test_what_a_request_gives_wins_over_the_folder(server):
    body = {"prompt": "a red circle", "seed": 3, "steps": 3, "cfg_scale": 1.5, "steps_extra": 1}
    status, answer = server.request("POST", "/sdapi/v1/txt2img", body)
    info = json.loads(answer["info"])
    assert status == 200 and (info["sampler_name"], info["steps"], info["cfg_scale"]) == ("LCM", 3, 1.5)
    status, answer = server.request("POST", "/sdapi/v1/txt2img", {**body, "sampler_name": "Euler"})
    assert status == 200 and json.loads(answer["info"])["sampler_name"] == "Euler"
