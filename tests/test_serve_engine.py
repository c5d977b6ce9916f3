"""pipelines/serve/engine.py: the server's images are the pipeline's for seed + i, with ldm-generate's
samplers and metadata; an interrupt returns the image as far as it got."""

import io
import json
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image
from serving import in_thread, tiny_model_folder

import pipelines
from pipelines.folder import load_pipeline
from pipelines.schedulers import SCHEDULERS, make_scheduler
from pipelines.serve.engine import (
    EDIT_PIPELINES,
    GenerationRequest,
    Generator,
    Job,
    batchable,
    folder_scheduler_config,
)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_model_folder(tmp_path_factory.mktemp("serve-engine"))


@pytest.fixture(scope="module")
def generator(model):
    pipe = load_pipeline(model)
    pipe.set_progress_bar_config(disable=True)
    return Generator(pipe, model=str(model), batch_size=2)


def png(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_each_sampler_is_built_as_ldm_generate_builds_it(model, name):
    loaded = load_pipeline(model).scheduler  # what ldm-generate hands make_scheduler
    assert dict(make_scheduler(name, folder_scheduler_config(model)).config) == dict(
        make_scheduler(name, loaded.config).config
    )


def test_image_i_is_the_pipelines_image_for_seed_plus_i_across_batches(generator, model):
    request = GenerationRequest(
        prompt="a red circle", negative_prompt="blue", sampler="euler-a", steps=3, seed=40, num_images=3
    )  # two batches of at most 2
    job = Job(id="x", request=request)
    in_thread(generator.run, [job])
    assert job.seeds == [40, 41, 42] and len(job.images) == 3 and job.step == job.total_steps == 6
    reference = load_pipeline(model)
    reference.scheduler = make_scheduler("euler-a", reference.scheduler.config)
    for seed, data in zip(job.seeds, job.images):
        expected = in_thread(
            reference,
            "a red circle",
            negative_prompt="blue",
            num_inference_steps=3,
            generator=torch.Generator().manual_seed(seed),
        ).images[0]
        image = png(data)
        assert np.abs(np.asarray(image, np.int16) - np.asarray(expected, np.int16)).max() <= 1
        assert json.loads(image.text["seed"]) == seed and image.text["scheduler"] == "euler-a"
        assert image.text["negative_prompt"] == "blue" and json.loads(image.text["steps"]) == 3


def test_an_interrupt_stops_at_the_next_step_with_the_image_so_far(generator):
    job = Job(id="x", request=GenerationRequest(prompt="a red circle", steps=500, num_images=1))
    seen = []

    def interrupt_once_running():  # what /sdapi/v1/interrupt does, from another thread
        while job.step < 3:
            time.sleep(0.001)
        seen.append(job.step)
        job.cancel_reason = "interrupted"

    watcher = threading.Thread(target=interrupt_once_running)
    watcher.start()
    in_thread(generator.run, [job])
    watcher.join()
    assert seen[0] <= job.step <= seen[0] + 2 < 500  # at most the step under way finishes
    assert len(job.images) == 1 and png(job.images[0]).size == (32, 32) and job.seeds == [0]
    assert job.preview is not None and png(job.preview).size == (32, 32) and job.preview_number >= 3


def test_a_vae_preview_of_the_last_step_is_the_final_image(generator, model):
    vae_previews = Generator(generator.pipe, model=str(model), preview="vae")
    job = Job(id="x", request=GenerationRequest(prompt="a blue square", steps=3, seed=8))
    in_thread(vae_previews.run, [job])
    assert job.preview_number == 3
    assert np.array_equal(np.asarray(png(job.preview)), np.asarray(png(job.images[0])))
    with pytest.raises(ValueError, match="preview must be one of"):
        Generator(generator.pipe, model=str(model), preview="fast")


def test_jobs_sharing_a_batch_get_the_images_they_would_get_alone(generator):
    requests = [
        GenerationRequest(prompt="a red circle", steps=3, seed=1),
        GenerationRequest(prompt="blue square", negative_prompt="green", steps=3, seed=2, num_images=1),
    ]
    assert batchable(*requests) and not batchable(requests[0], GenerationRequest(prompt="x", steps=4))
    together = [Job(id=str(i), request=r) for i, r in enumerate(requests)]
    in_thread(generator.run, together)  # one pipeline call for both
    for job in together:
        alone = Job(id="alone", request=job.request)
        in_thread(generator.run, [alone])
        assert job.seeds == alone.seeds and job.step == job.total_steps == 3
        ours, theirs = png(job.images[0]), png(alone.images[0])
        assert np.abs(np.asarray(ours, np.int16) - np.asarray(theirs, np.int16)).max() <= 1
        assert ours.text == theirs.text


def test_a_job_cancelled_in_a_shared_batch_is_dropped_and_the_other_goes_on(generator):
    jobs = [
        Job(id=str(i), request=GenerationRequest(prompt="a red circle", steps=40, seed=i)) for i in range(2)
    ]
    dropped = []

    def cancel_first_once_running():
        while jobs[0].step < 2:
            time.sleep(0.001)
        jobs[0].cancel_reason = "disconnected"

    watcher = threading.Thread(target=cancel_first_once_running)
    watcher.start()
    in_thread(
        generator.run,
        jobs,
        on_cancel=lambda job: dropped.append(job.id) or setattr(job, "state", "cancelled"),
    )
    watcher.join()
    assert dropped == ["0"] and jobs[0].images == [] and jobs[0].step < 40
    assert len(jobs[1].images) == 1 and jobs[1].step == 40


def test_modes_are_text_to_image_plus_the_edit_pipelines_this_install_has(generator):
    assert generator.modes == ["txt2img"] + [
        m for m, name in EDIT_PIPELINES.items() if hasattr(pipelines, name)
    ]
