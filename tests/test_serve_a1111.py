"""pipelines/serve/a1111.py through a real `ldm-serve` process: AUTOMATIC1111-shaped requests and answers."""

import json
import time

import numpy as np
import pytest
from serving import decode_png, encode_png, in_thread, pixels, shared_server, start_server
from PIL import Image

import pipelines
from pipelines.generate import main as ldm_generate

# Fields A1111 clients send that this server ignores, as A1111 ignores unknown ones.
CLIENT_EXTRAS = {
    "styles": [],
    "restore_faces": False,
    "tiling": False,
    "enable_hr": False,
    "subseed": -1,
    "override_settings": {},
    "send_images": True,
    "save_images": False,
    "alwayson_scripts": {},
    "script_args": [],
    "eta": 0,
    "denoising_strength": 0.7,
    "do_not_save_grid": True,
}


@pytest.fixture(scope="module")
def server():
    return shared_server()


def test_txt2img_gives_ldm_generates_images_seeds_and_png_metadata(server, tmp_path):
    out = tmp_path / "generate"
    argv = ["a red circle", "--model", str(server.model), "--out", str(out), "--steps", "3", "-n", "2"]
    argv += ["--seed", "7", "--scheduler", "euler", "--dtype", "fp32"]
    assert in_thread(ldm_generate, argv) == 0
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    body = {
        "prompt": "a red circle",
        "negative_prompt": "",
        "steps": 3,
        "cfg_scale": 4.0,
        "seed": rows[0]["seed"],
        "sampler_name": "Euler",
        "batch_size": 2,
        "n_iter": 1,
        **CLIENT_EXTRAS,
    }
    status, answer = server.request("POST", "/sdapi/v1/txt2img", body)
    assert status == 200, answer
    info = json.loads(answer["info"])
    assert info["all_seeds"] == [row["seed"] for row in rows] and info["sampler_name"] == "Euler"
    assert info["cfg_scale"] == 4.0 and (info["width"], info["height"]) == (32, 32)
    assert (
        answer["parameters"]["prompt"] == "a red circle" and answer["parameters"]["seed"] == rows[0]["seed"]
    )
    for row, text in zip(rows, answer["images"]):
        ours, theirs = decode_png(text), Image.open(out / row["file"])
        assert np.abs(pixels(ours) - pixels(theirs)).max() <= 1  # another process may sum in another order
        assert ours.text == theirs.text  # prompt, seed, steps, guidance_scale, scheduler, model


def test_nulls_mean_not_set_as_clients_send_them(server):
    body = {"prompt": "a red circle", "negative_prompt": None, "sampler_name": None, "width": None, "seed": 4}
    status, answer = server.request("POST", "/sdapi/v1/txt2img", {**body, "steps": 2})
    info = json.loads(answer["info"]) if status == 200 else answer
    assert (
        status == 200
        and info["all_seeds"] == [4]
        and info["width"] == 32
        and info["sampler_name"] == "Euler a"  # the server's --scheduler
    )


def test_lists_samplers_models_and_idle_progress_as_a1111_does(server):
    status, samplers = server.request("GET", "/sdapi/v1/samplers")
    assert status == 200 and {"DPM++ 2M", "Euler a", "DDIM"} <= {s["name"] for s in samplers}
    assert all(set(s) == {"name", "aliases", "options"} for s in samplers)
    status, models = server.request("GET", "/sdapi/v1/sd-models")
    assert status == 200 and models[0]["model_name"] == server.model.name
    assert (
        models[0]["title"] == f"{server.model.name} [{models[0]['hash']}]" and len(models[0]["sha256"]) == 64
    )
    assert server.request("GET", "/sdapi/v1/options")[1]["sd_model_checkpoint"] == models[0]["title"]
    status, progress = server.request("GET", "/sdapi/v1/progress")
    assert status == 200 and progress["progress"] == 0 and progress["current_image"] is None
    assert {"job_count", "sampling_step", "sampling_steps", "interrupted"} <= set(progress["state"])


def tiny_png(size):
    return encode_png(Image.new("RGB", (size, size), (200, 30, 30)))


@pytest.mark.parametrize(
    "path, body, field, words",
    [
        ("txt2img", {"steps": 0}, "steps", "between 1 and 500"),
        ("txt2img", {"steps": "many"}, "steps", "valid integer"),
        ("txt2img", {"width": 4096}, "width", "--max-size"),
        ("txt2img", {"height": 30}, "height", "multiple of 4"),
        ("txt2img", {"cfg_scale": -1}, "cfg_scale", "at least 0"),
        ("txt2img", {"sampler_name": "Heun"}, "sampler_name", "unknown sampler"),
        ("txt2img", {"batch_size": 3, "n_iter": 2}, "batch_size", "--max-images"),
        ("img2img", {"init_images": ["not base64!"]}, "init_images", "not valid base64"),
        ("img2img", {"init_images": ["aGVsbG8="]}, "init_images", "not an image"),
        ("img2img", {"init_images": [tiny_png(200)]}, "init_images", "--max-size"),
        ("img2img", {"init_images": [tiny_png(32)], "mask": "%%"}, "mask", "not valid base64"),
    ],
)
def test_bad_values_get_a_422_naming_the_field_and_the_server_stays_up(server, path, body, field, words):
    status, answer = server.request("POST", f"/sdapi/v1/{path}", {"prompt": "a red circle", **body})
    assert status == 422, answer
    assert answer["detail"][0]["loc"] == ["body", field] and words in answer["detail"][0]["msg"]
    assert server.alive()


def test_img2img_is_served_exactly_when_the_edit_pipelines_exist(server):
    body = {"prompt": "a red circle", "init_images": [tiny_png(32)], "steps": 2, "denoising_strength": 0.5}
    status, answer = server.request("POST", "/sdapi/v1/img2img", body)
    if hasattr(pipelines, "ImageToImagePipeline"):
        assert status == 200 and len(answer["images"]) == 1
    else:
        assert status == 501 and "ImageToImagePipeline" in answer["detail"] and "txt2img" in answer["detail"]
    assert server.alive()


def wait_for(condition, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_progress_interrupt_and_a_hung_up_client(server):
    long_run = server.connection(
        "POST", "/sdapi/v1/txt2img", {"prompt": "a blue square", "steps": 500, "seed": 3}
    )
    running = wait_for(
        lambda: (p := server.request("GET", "/sdapi/v1/progress")[1])["state"]["sampling_step"] > 1
        and p["current_image"]
        and p
    )
    assert (
        0 < running["progress"] < 1
        and running["eta_relative"] > 0
        and running["state"]["sampling_steps"] == 500
    )
    assert decode_png(running["current_image"]).size == (32, 32)  # the live preview
    waiting = server.connection("POST", "/sdapi/v1/txt2img", {"prompt": "a red circle", "steps": 2})
    wait_for(lambda: server.request("GET", "/sdapi/v1/progress")[1]["state"]["job_count"] == 2)
    waiting.close()  # hanging up frees the place in the queue
    wait_for(lambda: server.request("GET", "/sdapi/v1/progress")[1]["state"]["job_count"] == 1)
    assert server.request("POST", "/sdapi/v1/interrupt")[0] == 200
    response = long_run.getresponse()
    answer = json.loads(response.read())
    assert response.status == 200 and len(answer["images"]) == 1  # the image as far as it got
    assert json.loads(answer["info"])["interrupted"] is True
    assert server.request("GET", "/sdapi/v1/progress")[1]["state"]["job_count"] == 0


def test_a_server_started_with_lora_adapters_draws_what_ldm_generate_draws_with_them(tmp_path):
    from adapters import make_adapter  # a trained-looking adapter (random A and B) for the tiny model

    model = shared_server().model
    adapter = make_adapter(model, tmp_path / "adapter.safetensors", seed=5)
    spec = f"{adapter}:0.7"
    out = tmp_path / "generate"
    argv = ["a red circle", "--model", str(model), "--out", str(out), "--steps", "3", "-n", "1", "--seed", "3",
            "--scheduler", "euler", "--dtype", "fp32", "--lora", spec]
    assert in_thread(ldm_generate, argv) == 0
    row = json.loads((out / "manifest.jsonl").read_text().splitlines()[0])
    assert row["loras"][0]["scale"] == 0.7
    server = start_server(model, "--lora", spec)
    try:
        body = {"prompt": "a red circle", "steps": 3, "cfg_scale": 4.0, "seed": row["seed"], "sampler_name": "Euler"}
        status, answer = server.request("POST", "/sdapi/v1/txt2img", body)
    finally:
        server.stop()
    assert status == 200, answer
    ours, theirs = decode_png(answer["images"][0]), Image.open(out / row["file"])
    assert np.abs(pixels(ours) - pixels(theirs)).max() <= 1
    assert ours.text == theirs.text and "loras" in ours.text  # the adapter, its sha256 and scale recorded
    plain = decode_png(shared_server().request("POST", "/sdapi/v1/txt2img", body)[1]["images"][0])
    assert np.abs(pixels(plain) - pixels(ours)).max() > 1  # the adapter changed the image
