"""AUTOMATIC1111's web API, the subset clients use: request bodies, their checks, and responses shaped as
stable-diffusion-webui's `modules/api/models.py` returns them.

Unknown fields are ignored (as there). A wrong type gets FastAPI's 422 from pydantic; a value out of range or
beyond this server's limits gets a 422 of the same shape, `{"detail": [{"loc": ["body", FIELD], "msg": …}]}`.
`cfg_scale` is diffusers' guidance_scale = w + 1 (ε̄ = (w+1)·ε(x, y) − w·ε(x)), the same number A1111 means.
"""

from __future__ import annotations

import base64
import io
import json
import random
import time

from PIL import Image
from pydantic import BaseModel, ConfigDict

from pipelines.few_step import SamplingDefaults
from pipelines.generate import USUAL
from pipelines.schedulers import DEFAULT_SCHEDULER, SCHEDULERS
from pipelines.serve.checks import Limits, RequestError, check_range  # noqa: F401 (app imports them here)
from pipelines.serve.editing import read_edit
from pipelines.serve.engine import GenerationRequest, Job

# our sampler → (AUTOMATIC1111's name, its other names); requests may use any of them, ours included.
SAMPLER_NAMES = {
    "dpm++": ("DPM++ 2M", ["k_dpmpp_2m"]),
    "euler": ("Euler", ["k_euler"]),
    "euler-a": ("Euler a", ["k_euler_a"]),
    "ddim": ("DDIM", []),
    "ddpm": ("DDPM", []),
    "unipc": ("UniPC", []),
    "lcm": ("LCM", []),  # a distilled few-step model's sampler (ldm-distill)
}
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes a 64-bit seed; image seeds count up from it


class Txt2ImgRequest(BaseModel):
    """`POST /sdapi/v1/txt2img`. Defaults are ldm-generate's where A1111's would not suit a small model; steps,
    cfg_scale and sampler left out (or null) are the model folder's (`few_step.json`), else ldm-generate's."""

    model_config = ConfigDict(extra="ignore")

    prompt: str | None = ""  # clients send null for "not set"; it means the empty string
    negative_prompt: str | None = ""
    steps: int | None = None
    cfg_scale: float | None = None
    width: int | None = None  # None: the model's size
    height: int | None = None
    seed: int = -1  # -1: random
    sampler_name: str | None = None
    sampler_index: str | None = None  # older clients put the sampler's name here
    batch_size: int = 1
    n_iter: int = 1


class Img2ImgRequest(Txt2ImgRequest):
    """`POST /sdapi/v1/img2img`: base64 PNG/JPEG in `init_images[0]`, optional `mask` (white = repaint); the
    last five fields are ours (ldm-generate's options), which A1111 clients never send."""

    init_images: list[str] = []
    mask: str | None = None
    denoising_strength: float | None = None  # None: ldm-generate's (0.8; 1.0 with a mask or outpaint)
    inpainting_mask_invert: int = 0
    mask_blur: int = 4  # A1111's default; here it softens only the paste-back, inside the mask
    keep_unmasked: bool = True  # A1111 always pastes the original back outside the mask
    outpaint: list[int] | None = None  # [left, top, right, bottom] pixels to add and paint
    repaint_jump_length: int = 10
    repaint_jump_n_sample: int = 1


def sampler_key(name: str | None, default: str = DEFAULT_SCHEDULER) -> str:
    """Our sampler for an A1111 or our own name (case-insensitive); None means the default."""
    if name is None or name == "":
        return default
    wanted = name.lower()
    for key, (title, aliases) in SAMPLER_NAMES.items():
        if wanted in [key, title.lower(), *aliases]:
            return key
    names = ", ".join(title for title, _ in SAMPLER_NAMES.values())
    raise RequestError("sampler_name", f"unknown sampler {name!r}; this server has: {names}.")


def check_size(field: str, value: int | None, factor: int, limits: Limits) -> None:
    if value is None:
        return
    check_range(field, value, factor, limits.max_size, " (--max-size)")
    if value % factor:
        raise RequestError(field, f"{field} must be a multiple of {factor} (the VAE's factor), got {value}.")


def to_generation_request(
    body: Txt2ImgRequest, limits: Limits, vae_factor: int, defaults: SamplingDefaults = USUAL
) -> GenerationRequest:
    """Check `body` against the server's limits and turn it into the engine's request; `defaults` (sampler,
    steps, guidance_scale) fill what the body leaves out."""
    steps = defaults.num_inference_steps if body.steps is None else body.steps
    cfg_scale = defaults.guidance_scale if body.cfg_scale is None else body.cfg_scale
    check_range("steps", steps, 1, limits.max_steps, " (--max-steps)")
    check_range("cfg_scale", cfg_scale, 0)
    check_range("batch_size", body.batch_size, 1)
    check_range("n_iter", body.n_iter, 1)
    if body.batch_size * body.n_iter > limits.max_images:
        raise RequestError(
            "batch_size",
            f"batch_size × n_iter = {body.batch_size * body.n_iter} images; this "
            f"server makes at most {limits.max_images} per request (--max-images).",
        )
    check_size("width", body.width, vae_factor, limits)
    check_size("height", body.height, vae_factor, limits)
    check_range("seed", body.seed, -1, MAX_SEED - limits.max_images)
    request = GenerationRequest(
        prompt=body.prompt or "",
        negative_prompt=body.negative_prompt or None,
        sampler=sampler_key(body.sampler_name or body.sampler_index, defaults.scheduler),
        steps=steps,
        guidance_scale=cfg_scale,
        seed=random.randrange(2**32) if body.seed == -1 else body.seed,
        width=body.width,
        height=body.height,
        num_images=body.batch_size * body.n_iter,
    )
    if isinstance(body, Img2ImgRequest):
        request.edit = read_edit(
            body, limits=limits, vae_factor=vae_factor, steps=steps, sampler=request.sampler
        )
    return request


def generation_response(
    body: Txt2ImgRequest, request: GenerationRequest, job: Job, model_name: str, model_hash: str
) -> dict:
    """`{"images": [base64 PNG], "parameters": the request, "info": JSON string}` as A1111 answers."""
    count = len(job.images)
    info = {
        "prompt": request.prompt,
        "all_prompts": [request.prompt] * count,
        "negative_prompt": body.negative_prompt,
        "all_negative_prompts": [body.negative_prompt] * count,
        "seed": request.seed,
        "all_seeds": job.seeds,
        "subseed": -1,
        "all_subseeds": [-1] * count,
        "subseed_strength": 0,
        "width": job_size(job, 0),
        "height": job_size(job, 1),
        "sampler_name": SAMPLER_NAMES[request.sampler][0],
        "cfg_scale": request.guidance_scale,
        "steps": request.steps,
        "batch_size": body.batch_size,
        "restore_faces": False,
        "sd_model_name": model_name,
        "sd_model_hash": model_hash[:10],
        "denoising_strength": request.edit.strength if request.edit is not None else None,
        "extra_generation_params": {"guidance weight w": request.guidance_scale - 1},
        "index_of_first_image": 0,
        "infotexts": [infotext(request, seed, model_name, model_hash, job) for seed in job.seeds],
        "styles": [],
        "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(job.created)),
        "clip_skip": 1,
        "is_using_inpainting_conditioning": request.mode == "inpaint",
        "interrupted": job.cancel_reason == "interrupted",
    }
    parameters = {
        **body.model_dump(exclude={"init_images", "mask"}),
        "steps": request.steps,
        "cfg_scale": request.guidance_scale,
    }
    return {
        "images": [base64.b64encode(png).decode() for png in job.images],
        "parameters": parameters,
        "info": json.dumps(info),
    }


def job_size(job: Job, axis: int) -> int | None:
    if not job.images:
        return None
    return Image.open(io.BytesIO(job.images[0])).size[axis]


def infotext(request: GenerationRequest, seed: int, model_name: str, model_hash: str, job: Job) -> str:
    """A1111's one-image "parameters" text: prompt, negative prompt line, then `Key: value` pairs."""
    lines = [request.prompt]
    if request.negative_prompt:
        lines.append(f"Negative prompt: {request.negative_prompt}")
    lines.append(
        f"Steps: {request.steps}, Sampler: {SAMPLER_NAMES[request.sampler][0]}, "
        f"CFG scale: {request.guidance_scale}, Seed: {seed}, Size: {job_size(job, 0)}x{job_size(job, 1)}, "
        f"Model hash: {model_hash[:10]}, Model: {model_name}"
    )
    return "\n".join(lines)


def samplers() -> list[dict]:
    """`GET /sdapi/v1/samplers`: `[{"name", "aliases", "options"}]`, only the samplers this server has."""
    return [
        {"name": title, "aliases": [key, *aliases], "options": {}}
        for key, (title, aliases) in SAMPLER_NAMES.items()
        if key in SCHEDULERS
    ]


def sd_models(model: str, model_name: str, model_hash: str) -> list[dict]:
    """`GET /sdapi/v1/sd-models`: the one loaded pipeline folder."""
    return [
        {
            "title": f"{model_name} [{model_hash[:10]}]",
            "model_name": model_name,
            "hash": model_hash[:10],
            "sha256": model_hash,
            "filename": model,
            "config": None,
        }
    ]


def progress(job: Job | None, job_count: int, skip_current_image: bool) -> dict:
    """`GET /sdapi/v1/progress` for the running job: fraction done, ETA, state, the latest preview.

    job_count: jobs running or waiting."""
    state = {
        "skipped": False,
        "interrupted": False,
        "stopping_generation": False,
        "job": "",
        "job_count": job_count,
        "job_timestamp": "0",
        "job_no": 0,
        "sampling_step": 0,
        "sampling_steps": 0,
    }
    if job is None or job.started is None:
        return {"progress": 0.0, "eta_relative": 0.0, "state": state, "current_image": None, "textinfo": None}
    fraction = min(job.step / job.total_steps, 1.0) if job.total_steps else 0.0
    elapsed = time.time() - job.started
    steps = job.request.steps
    state.update(
        {
            "interrupted": job.cancel_reason is not None,
            "job": job.id,
            "job_count": job_count,
            "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(job.created)),
            "job_no": job.step // steps if steps else 0,
            "sampling_step": job.step % steps if steps else 0,
            "sampling_steps": steps,
        }
    )
    image = None if skip_current_image or job.preview is None else base64.b64encode(job.preview).decode()
    return {
        "progress": fraction,
        "eta_relative": elapsed / fraction - elapsed if fraction > 0 else 0.0,
        "state": state,
        "current_image": image,
        "textinfo": f"step {job.step} of {job.total_steps}" if job.total_steps else "starting",
    }
