"""The generator behind `ldm-serve`: one loaded pipeline, requests in, PNGs out, with progress and cancel.

`Generator.run(job)` makes the images of one request exactly as `ldm-generate` does (same seeds, one generator
per image, same PNG metadata), reporting each sampler step into the job and stopping at the next step once the
job is cancelled. The queue that feeds it jobs one at a time is `pipelines.serve.jobs`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import SchedulerMixin
from PIL import Image

import pipelines
from pipelines.edit_inputs import EditInputs
from pipelines.generate import GenerateConfig, ImageJob, image_seed, png_info
from pipelines.pipeline_text_to_image import DEFAULT_GUIDANCE_SCALE
from pipelines.schedulers import DEFAULT_SCHEDULER, make_scheduler
from pipelines.serve.editing import UPLOADED, EditRequest, edit_inputs, unet_steps
from pipelines.serve.previews import fit_latent_rgb_map, preview_image

logger = logging.getLogger("ldm-serve")

DEFAULT_STEPS = 25  # ldm-generate's default
# mode → the class in `pipelines` that serves it; a mode is offered only when its class can be imported.
EDIT_PIPELINES = {"img2img": "ImageToImagePipeline", "inpaint": "InpaintPipeline"}
PREVIEWS = ("linear", "vae")


@dataclass
class GenerationRequest:
    """One validated request. Image i (0-based, over all batches) is sampled from seed + i, as the `seed`
    column of `ldm-generate`'s manifest, so any image of either tool is reproduced by its seed."""

    prompt: str
    negative_prompt: str | None = None
    sampler: str = DEFAULT_SCHEDULER
    steps: int = DEFAULT_STEPS
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE  # w + 1
    seed: int = 0
    width: int | None = None  # None: the model's size (an edit: the init image's)
    height: int | None = None
    num_images: int = 1
    edit: EditRequest | None = None  # image-to-image, inpainting, outpainting (`pipelines.serve.editing`)

    @property
    def mode(self) -> str:
        return "txt2img" if self.edit is None else self.edit.mode

    def edit_inputs(self) -> EditInputs | None:
        """The edit as `ldm-generate` reads it from files (None for text-to-image)."""
        if self.edit is None:
            return None
        image = self.edit.image
        return edit_inputs(self.edit, (self.width or image.width, self.height or image.height))


class JobCancelled(Exception):
    """Raised inside the sampler callback to stop a cancelled job at the next step."""


@dataclass(eq=False)  # a job is itself: compared and hashed by identity
class Job:
    """A request's life in the server; the worker thread writes it, request handlers read it."""

    id: str
    request: GenerationRequest
    state: str = "queued"  # queued → running → done | cancelled | failed
    step: int = 0  # sampler steps finished, over all batches
    # None until the engine has planned the job's batches: the queue marks a job running just before that, and a
    # stream that polled in between reported a total of 1 (seen in the full suite).
    total_steps: int | None = None
    preview: bytes | None = None  # PNG of the latest preview
    preview_number: int = 0  # counts previews, so a client can tell a new one from the last
    images: list[bytes] = field(default_factory=list)  # PNGs with metadata
    seeds: list[int] = field(default_factory=list)
    error: str | None = None
    cancel_reason: str | None = None  # "interrupted" (cancel button, /interrupt) or "disconnected"
    created: float = 0.0
    started: float | None = None
    finished: float | None = None


def png_bytes(image: Image.Image, pnginfo=None) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=pnginfo)
    return buffer.getvalue()


def folder_scheduler_config(model: str | Path) -> dict:
    """The scheduler config as `load_pipeline` builds it from the folder, before any sampler swap.

    `make_scheduler(name, this)` is then exactly what `ldm-generate --scheduler name` samples with.
    """
    import diffusers

    index = json.loads((Path(model) / "model_index.json").read_text())
    scheduler_class: type[SchedulerMixin] = getattr(diffusers, index["scheduler"][1])
    return scheduler_class.from_pretrained(str(model), subfolder="scheduler").config


def model_hash(model: str | Path) -> str:
    """sha256 of the U-Net weights file(s): what AUTOMATIC1111 calls the checkpoint hash."""
    digest = hashlib.sha256()
    for path in sorted((Path(model) / "unet").glob("*.safetensors")) or sorted(
        (Path(model) / "unet").glob("*.bin")
    ):
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


class Generator:
    """Owns the loaded pipeline (one per device) and runs one job at a time on it."""

    def __init__(
        self,
        pipe,
        *,
        model: str,
        autocast=None,
        batch_size: int = 4,
        preview_every: int = 1,
        preview: str = "linear",
        loras: tuple[str, ...] = (),
    ):
        """preview: "linear" (the fitted latent → RGB map, free) or "vae" (a full decode of the first image,
        exact but about a U-Net step's cost each time)."""
        if preview not in PREVIEWS:
            raise ValueError(f"preview must be one of {', '.join(PREVIEWS)}, got {preview!r}.")
        self.pipe = pipe
        self.model = str(model)
        self.loras = tuple(loras)  # the --lora values the pipeline was loaded with, for the PNG metadata
        self.autocast = autocast or contextlib.nullcontext()
        self.batch_size = batch_size
        self.preview_every = preview_every
        self.preview = preview
        self.scheduler_config = folder_scheduler_config(model)
        self.rgb_map = fit_latent_rgb_map(pipe.vae, pipe.default_size) if preview == "linear" else None
        self.edit = edit_pipelines(pipe)

    @property
    def modes(self) -> list[str]:
        return ["txt2img", *self.edit]

    def run(self, jobs: list[Job], on_cancel=None) -> None:
        """Fill each job's `images` (PNG bytes with `ldm-generate`'s metadata) and `seeds`, batch by batch.

        jobs: one job, or several `batchable` ones whose images fit one batch (the queue groups them: one
        U-Net call for all, each image still from its own seed, so each job gets what it would alone).
        A job cancelled while others in its batch go on is dropped at the next step and handed to
        `on_cancel(job)`; when every job of the batch is cancelled the batch stops, and "interrupted" jobs get
        their images decoded from the latents of the last finished step (what AUTOMATIC1111 returns).
        """
        request = jobs[0].request
        target = self.pipe if request.mode == "txt2img" else self.edit[request.mode]
        target.scheduler = make_scheduler(request.sampler, self.scheduler_config)
        edit = request.edit_inputs()  # jobs share a batch only without an edit (`batchable`)
        items = [(job, image_job(job.request, i)) for job in jobs for i in range(job.request.num_images)]
        batches = [items[i : i + self.batch_size] for i in range(0, len(items), self.batch_size)]
        for job in jobs:
            batches_of_job = sum(any(j is job for j, _ in batch) for batch in batches)
            job.total_steps = unet_steps(request.edit, request.steps) * batches_of_job
        for batch in batches:
            images = self._run_batch(target, batch, on_cancel or (lambda job: None), edit)
            for (job, item), image in zip(batch, images):
                if job.state != "cancelled":
                    config = generate_config(job.request, self.model, self.loras)
                    job.images.append(png_bytes(image, png_info(item, config, edit)))
                    job.seeds.append(item.seed)
            if all(job.cancel_reason is not None for job, _ in batch):
                return

    def _run_batch(
        self, target, batch: list[tuple[Job, ImageJob]], on_cancel, edit: EditInputs | None
    ) -> list[Image.Image]:
        """The batch's images; an edit's with ldm-generate's `--keep-unmasked` paste-back where asked."""
        images = self._sample(target, batch, on_cancel, edit)
        return edit.finish(images) if edit is not None else images

    def _sample(
        self, target, batch: list[tuple[Job, ImageJob]], on_cancel, edit: EditInputs | None
    ) -> list[Image.Image]:
        request = batch[0][0].request
        jobs = list(dict.fromkeys(job for job, _ in batch))  # in order, each once
        first_image = {job: next(i for i, (j, _) in enumerate(batch) if j is job) for job in jobs}
        done_before = {job: job.step for job in jobs}
        last = {}

        def callback(step: int, timestep, latents: torch.Tensor) -> None:
            last["latents"] = latents
            stopped = [job for job in jobs if job.cancel_reason is not None]
            if len(stopped) == len(jobs):
                raise JobCancelled(stopped[0].cancel_reason)
            for job in jobs:
                if job in stopped:
                    if job.state != "cancelled":
                        on_cancel(job)  # the others go on; this one's client is answered now
                    continue
                job.step = done_before[job] + step + 1
                if step % self.preview_every == 0:
                    index = first_image[job]
                    job.preview = png_bytes(self._preview(latents[index : index + 1]))
                    job.preview_number += 1

        negatives = [item.negative_prompt for _, item in batch]
        try:
            with self.autocast:
                return target(
                    [item.prompt for _, item in batch],
                    negative_prompt=(
                        None if all(n is None for n in negatives) else [n or "" for n in negatives]
                    ),
                    num_inference_steps=request.steps,
                    guidance_scale=request.guidance_scale,
                    generator=[torch.Generator("cpu").manual_seed(item.seed) for _, item in batch],
                    output_type="pil",
                    callback=callback,
                    **(
                        edit.pipeline_kwargs() if edit else {"height": request.height, "width": request.width}
                    ),
                ).images
        except JobCancelled:
            if "latents" not in last or not any(job.cancel_reason == "interrupted" for job in jobs):
                return []
            with torch.inference_mode(), self.autocast:
                return self.pipe.decode(last["latents"], "pil")

    def _preview(self, latents: torch.Tensor) -> Image.Image:
        """The first image of the batch as it stands: `latents (B, C, h, w)`, scaled, shown at the image's own
        size (h and w times the VAE factor, so an edit of a non-square init image previews at its shape too).
        """
        if self.preview == "vae":
            return self.pipe.decode(latents[:1], "pil")[0]
        factor = self.pipe.vae_scale_factor
        return preview_image(latents, self.rgb_map, (latents.shape[-1] * factor, latents.shape[-2] * factor))


def image_job(request: GenerationRequest, index: int) -> ImageJob:
    """Image `index` of a request as `ldm-generate` names and seeds it: seed + index."""
    seed = image_seed(request.seed, 0, index, request.seed)
    return ImageJob(0, index, request.prompt, request.negative_prompt, seed)


def batchable(first: GenerationRequest, other: GenerationRequest) -> bool:
    """Whether two requests' images can share one pipeline call: text-to-image with the same sampler, steps,
    guidance and size (prompts, negative prompts and seeds may differ: each image has its own generator)."""

    def key(request: GenerationRequest):
        return (
            request.mode,
            request.sampler,
            request.steps,
            request.guidance_scale,
            request.width,
            request.height,
        )

    return first.mode == "txt2img" and key(first) == key(other)


def generate_config(request: GenerationRequest, model: str, loras: tuple[str, ...] = ()) -> GenerateConfig:
    """The `ldm-generate` settings equal to `request` (and the server's adapters), for its PNG metadata; an
    edit's files are named `UPLOADED` (their sha256s say which), its size is the init image's."""
    common = dict(lora=loras, prompt=request.prompt, model=model, num_images=request.num_images,
                  steps=request.steps, guidance_scale=request.guidance_scale, seed=request.seed,
                  scheduler=request.sampler, negative_prompt=request.negative_prompt)
    edit = request.edit
    if edit is None:
        return GenerateConfig(**common, height=request.height, width=request.width)
    return GenerateConfig(
        **common,
        image=UPLOADED,
        strength=edit.strength,
        mask_image=None if edit.mask is None else UPLOADED,
        keep_unmasked=edit.keep_unmasked,
        mask_blur=edit.mask_blur,
        outpaint=None if edit.outpaint is None else ",".join(map(str, edit.outpaint)),
        repaint_jump_length=edit.jump_length,
        repaint_jump_n_sample=edit.jump_n_sample,
    )


def edit_pipelines(pipe) -> dict:
    """Image-to-image / inpainting pipelines on `pipe`'s components, for the classes this install has.

    They come from the `edit` work (`pipelines.ImageToImagePipeline(prompt, image, strength, …)`,
    `pipelines.InpaintPipeline(prompt, image, mask_image, strength, …)`); until then only txt2img is served.
    """
    found = {}
    for mode, name in EDIT_PIPELINES.items():
        pipeline_class = getattr(pipelines, name, None)
        if pipeline_class is not None:
            found[mode] = pipeline_class(**pipe.components)
            found[mode].set_progress_bar_config(disable=True)
    return found
