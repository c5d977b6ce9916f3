"""The `ldm-serve` web app: the page, its streaming generate route and the AUTOMATIC1111 API, behind a token.

Routes (all need the token when the server has one):
- `GET /` the page (`static/index.html`); `/?token=T` stores the token in a cookie for the page's own calls.
- `GET /api/config` model, limits, samplers and modes for the page's form.
- `POST /api/generate` an A1111 txt2img/img2img body → newline-delimited JSON events: `queued` (first, with
  the job id and the place in the queue, 0 once running), `progress` (step, total, preview PNG as a data URL),
  then `done`, `cancelled` or `error`. Closing the connection cancels the job and frees its place.
- `POST /api/jobs/{id}/cancel` stops that job at its next step.
- `/sdapi/v1/…` the A1111 subset (`pipelines.serve.a1111`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import secrets
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse

from pipelines.few_step import SamplingDefaults
from pipelines.generate import USUAL
from pipelines.pipeline_image_to_image import DEFAULT_STRENGTH
from pipelines.serve import a1111
from pipelines.serve.a1111 import Img2ImgRequest, Limits, RequestError, Txt2ImgRequest
from pipelines.serve.engine import EDIT_PIPELINES, GenerationRequest, Job
from pipelines.serve.jobs import FINAL_STATES, JobQueue, QueueFull

STATIC = Path(__file__).parent / "static"
TOKEN_COOKIE = "ldm_serve_token"
POLL_SECONDS = 0.05  # how often a waiting handler looks at its job: well under one sampler step


class TokenMiddleware:
    """Refuse every request (page, API, static files) without the server's token.

    The token may come as `Authorization: Bearer T`, as HTTP Basic with password T (what A1111 clients send
    for `--api-auth`), as the page's cookie, or as `?token=T` in the URL.
    """

    def __init__(self, app, token: str):
        self.app = app
        self.token = token

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self._allowed(Request(scope)):
            return await self.app(scope, receive, send)
        response = JSONResponse(
            {
                "detail": "missing or wrong API token: send 'Authorization: Bearer TOKEN' (or open the page "
                "as "
                "/?token=TOKEN)."
            },
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )
        await response(scope, receive, send)

    def _allowed(self, request: Request) -> bool:
        offered = [request.cookies.get(TOKEN_COOKIE), request.query_params.get("token")]
        kind, _, value = request.headers.get("authorization", "").partition(" ")
        if kind.lower() == "bearer":
            offered.append(value.strip())
        elif kind.lower() == "basic":
            try:
                offered.append(base64.b64decode(value.strip()).decode().partition(":")[2])
            except (binascii.Error, UnicodeDecodeError):
                pass
        return any(t is not None and secrets.compare_digest(t.encode(), self.token.encode()) for t in offered)


@dataclass
class Served:
    """What the routes share: the queue (whose generator holds the pipeline), the model and the limits."""

    queue: JobQueue
    model: str
    model_hash: str
    limits: Limits
    default_size: int
    vae_factor: int
    sampling: SamplingDefaults  # sampler, steps, guidance_scale of a request that gives none

    @property
    def model_name(self) -> str:
        return Path(self.model).name

    @property
    def modes(self) -> list[str]:
        return self.queue.generator.modes

    def submit(self, body: Txt2ImgRequest) -> tuple[GenerationRequest, Job]:
        """Check and queue a request: 422 (RequestError) for a bad value, 501 for a mode not installed,
        503 when the queue is full."""
        request = a1111.to_generation_request(body, self.limits, self.vae_factor, self.sampling)
        if request.mode not in self.modes:
            raise HTTPException(
                501,
                f"{request.mode} needs pipelines.{EDIT_PIPELINES[request.mode]}, which this "
                f"install does not have yet; this server offers: {', '.join(self.modes)}.",
            )
        try:
            return request, self.queue.submit(request)
        except QueueFull as error:
            raise HTTPException(503, str(error)) from None

    async def finish_or_cancel(self, job: Job, http: Request) -> None:
        """Wait for the job; a client that hangs up meanwhile cancels it (freeing its place)."""
        while job.state not in FINAL_STATES:
            if await http.is_disconnected():
                self.queue.cancel(job, "disconnected")
                return
            await asyncio.sleep(POLL_SECONDS)


def create_app(
    queue: JobQueue,
    *,
    model: str,
    model_hash: str,
    limits: Limits,
    token: str | None = None,
    default_size: int = 512,
    vae_factor: int = 8,
    sampling: SamplingDefaults = USUAL,
) -> FastAPI:
    """The ASGI app around a started `JobQueue` whose generator holds the loaded pipeline; `sampling` fills the
    sampler, steps and guidance scale a request leaves out (the page's form starts on them too)."""
    app = FastAPI(title="ldm-serve", docs_url=None, redoc_url=None)  # the docs pages would load remote JS
    if token:
        app.add_middleware(TokenMiddleware, token=token)

    @app.exception_handler(RequestError)
    async def refused(request: Request, error: RequestError):
        return JSONResponse({"detail": error.detail()}, status_code=422)

    served = Served(queue, model, model_hash, limits, default_size, vae_factor, sampling)
    add_a1111_routes(app, served)
    add_page_routes(app, served, token)
    return app


def add_a1111_routes(app: FastAPI, served: Served) -> None:
    """`/sdapi/v1/…`, answered as AUTOMATIC1111 answers (`pipelines.serve.a1111`)."""
    queue = served.queue

    async def a1111_generate(body: Txt2ImgRequest, http: Request) -> dict:
        request, job = served.submit(body)
        await served.finish_or_cancel(job, http)
        if job.state == "failed":
            raise HTTPException(500, f"generation failed: {job.error}")
        return a1111.generation_response(body, request, job, served.model_name, served.model_hash)

    @app.post("/sdapi/v1/txt2img")
    async def txt2img(body: Txt2ImgRequest, http: Request):
        return await a1111_generate(body, http)

    @app.post("/sdapi/v1/img2img")
    async def img2img(body: Img2ImgRequest, http: Request):
        return await a1111_generate(body, http)

    @app.get("/sdapi/v1/progress")
    async def progress(skip_current_image: bool = False):
        return a1111.progress(queue.current, queue.job_count, skip_current_image)

    @app.post("/sdapi/v1/interrupt")
    async def interrupt():
        for job in list(queue.running):  # a batch of several clients' jobs stops as a whole
            queue.cancel(job, "interrupted")
        return {}

    @app.get("/sdapi/v1/sd-models")
    async def sd_models():
        return a1111.sd_models(served.model, served.model_name, served.model_hash)

    @app.get("/sdapi/v1/samplers")
    async def samplers():
        return a1111.samplers()

    @app.get("/sdapi/v1/options")
    async def options():  # clients read the loaded checkpoint here; we report, never change, settings
        return {
            "sd_model_checkpoint": a1111.sd_models(served.model, served.model_name, served.model_hash)[0][
                "title"
            ],
            "samples_format": "png",
        }


def add_page_routes(app: FastAPI, served: Served, token: str | None) -> None:
    """The page, its files, its settings, its streaming generate and its cancel."""
    queue = served.queue

    @app.get("/api/config")
    async def config():
        return {
            "model": served.model_name,
            "model_hash": served.model_hash[:10],
            "default_size": served.default_size,
            "size_step": served.vae_factor,
            "limits": vars(served.limits),
            "samplers": a1111.samplers(),
            "modes": served.modes,
            "strength_defaults": {"img2img": DEFAULT_STRENGTH, "inpaint": 1.0},  # ldm-generate's
            "defaults": {
                **Img2ImgRequest().model_dump(),
                "steps": served.sampling.num_inference_steps,
                "cfg_scale": served.sampling.guidance_scale,
                "sampler_name": a1111.SAMPLER_NAMES[served.sampling.scheduler][0],
            },
        }

    @app.post("/api/generate")
    async def generate(body: Img2ImgRequest):
        _, job = served.submit(body if body.init_images else Txt2ImgRequest(**body.model_dump()))
        return StreamingResponse(job_events(queue, job), media_type="application/x-ndjson")

    @app.post("/api/jobs/{job_id}/cancel")
    async def cancel(job_id: str):
        job = queue.find(job_id)
        if job is None:
            raise HTTPException(404, f"no queued or running job {job_id}.")
        queue.cancel(job, "interrupted")
        return {"cancelled": job_id}

    @app.get("/")
    async def page(http: Request):
        response = FileResponse(STATIC / "index.html")
        if token and http.query_params.get("token"):
            response.set_cookie(TOKEN_COOKIE, http.query_params["token"], httponly=True, samesite="strict")
        return response

    @app.get("/static/{name}")
    async def static(name: str):
        path = STATIC / name
        if path.parent != STATIC or not path.is_file():
            raise HTTPException(404, f"no file {name}.")
        return FileResponse(path)


async def job_events(queue: JobQueue, job: Job):
    """NDJSON lines for the page: place in the queue, each new step with its preview, then the outcome.

    If the client goes away, Starlette cancels this generator; `finally` then cancels the job.
    """
    sent = ("queued", queue.position(job))  # the first line always carries the job id (position 0: running)
    yield line({"event": "queued", "job": job.id, "position": sent[1]})
    try:
        while True:
            position = queue.position(job)
            planned = job.total_steps is not None  # the engine has counted the job's steps
            if job.state == "queued" and sent != ("queued", position):
                sent = ("queued", position)
                yield line({"event": "queued", "job": job.id, "position": position})
            elif job.state == "running" and planned and sent != ("running", job.preview_number):
                sent = ("running", job.preview_number)
                yield line(progress_event(job))
            elif job.state in FINAL_STATES:
                if job.step and sent != ("running", job.preview_number):
                    yield line(progress_event(job))  # a job quicker than one poll still shows its last step
                yield line(outcome(job))
                return
            await asyncio.sleep(POLL_SECONDS)
    finally:
        queue.cancel(job, "disconnected")  # no-op once the job has finished


def progress_event(job: Job) -> dict:
    preview = None if job.preview is None else data_url(job.preview)
    return {"event": "progress", "job": job.id, "step": job.step, "total": job.total_steps, "preview": preview}


def outcome(job: Job) -> dict:
    event = {"done": "done", "cancelled": "cancelled", "failed": "error"}[job.state]
    return {
        "event": event,
        "job": job.id,
        "error": job.error,
        "seeds": job.seeds,
        "images": [data_url(png) for png in job.images],
    }


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def line(event: dict) -> bytes:
    return (json.dumps(event) + "\n").encode()
