"""`ldm-serve`: load a pipeline folder once and serve the web page and the AUTOMATIC1111 API on it.

ldm-serve --model runs/quickstart/stage2                 # http://127.0.0.1:7860
ldm-serve --model DIR --host 0.0.0.0 --api-token SECRET  # reachable from other machines, token required
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import logging
import sys
from dataclasses import dataclass

import torch

from ldm.attention import check_attention
from ldm.cli import option, run_command
from pipelines.folder import check_pipeline_folder
from pipelines.few_step import SamplingDefaults, resolve_sampling
from pipelines.generate import DTYPES, USUAL, pick_dtype, prepare_pipeline
from pipelines.lora import LORA_HELP, lora_specs
from pipelines.schedulers import DEFAULT_SCHEDULER, SCHEDULERS
from pipelines.serve.engine import PREVIEWS

logger = logging.getLogger("ldm-serve")

LOOPBACK_NAMES = ("localhost",)


@dataclass
class ServeConfig:
    """Serve a pipeline folder as a web page and an AUTOMATIC1111-compatible API."""

    model: str = option("", "pipeline folder (ours or any diffusers SD-1.x/2.x)")
    host: str = option(
        "127.0.0.1", "address to listen on; anything but loopback needs --api-token or --insecure"
    )
    port: int = option(7860, "port (7860 is AUTOMATIC1111's, so its clients find us)")
    api_token: str | None = option(
        None,
        "token required on every route: 'Authorization: Bearer TOKEN', HTTP "
        "Basic password, or the page opened as /?token=TOKEN",
    )
    insecure: bool = option(False, "allow a non-loopback --host without --api-token")
    max_size: int = option(1024, "largest width/height (and input image side) a request may ask for, pixels")
    max_steps: int = option(150, "most sampler steps a request may ask for")
    max_images: int = option(8, "most images one request may ask for (batch_size × n_iter)")
    max_queue: int = option(16, "most requests waiting behind the running one; more get 503")
    batch_size: int = option(4, "images per U-Net batch, as ldm-generate's --batch-size")
    batch_wait_ms: int = option(
        0,
        "a request may wait this long for others to share its batch (several clients at once: more images/s; "
        "each request: up to this much later)",
    )
    preview_every: int = option(1, "send a live preview every N sampler steps")
    preview: str = option(
        "linear",
        "linear: a latent-to-RGB map fitted to the VAE (free, rough); vae: a real decode (exact, costs about a "
        "U-Net step each time; pair with --preview-every)",
        choices=PREVIEWS,
    )
    scheduler: str | None = option(
        None,
        f"sampler for requests that name none (each request may pick any); default: the model folder's "
        f"(few_step.json), else {DEFAULT_SCHEDULER}",
        choices=SCHEDULERS,
    )
    dtype: str = option(
        "auto",
        "auto (CUDA: bf16 or fp16; CPU: fp32), fp32, bf16 (CPU: autocast), fp16 (CUDA)",
        choices=DTYPES,
    )
    attention: str = option("auto", "attention kernel: auto, sdpa, xformers")
    compile: bool = option(False, "torch.compile the U-Net (minutes of warm-up; faster after)")
    lora: tuple[str, ...] = option((), LORA_HELP + "; loaded once, active for every request")

    def __post_init__(self):
        if not self.model:
            raise ValueError("--model is required (a pipeline folder).")
        for name in ("max_size", "max_steps", "max_images", "max_queue", "batch_size", "preview_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}.")
        if self.batch_wait_ms < 0:
            raise ValueError(f"--batch-wait-ms must be at least 0, got {self.batch_wait_ms}.")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"--port must be between 0 and 65535, got {self.port}.")
        if not is_loopback(self.host) and not (self.api_token or self.insecure):
            raise ValueError(
                f"--host {self.host} lets other machines use this server: give --api-token TOKEN "
                "(or --insecure to serve without one)."
            )
        check_attention(self.attention, "cuda" if torch.cuda.is_available() else "cpu")
        lora_specs(self.lora)  # a bad scale or a missing file fails before the model loads


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_server(config: ServeConfig):
    """Load the pipeline, start the worker, return `(app, queue)`; the caller runs the app."""
    from pipelines.serve.app import create_app
    from pipelines.serve.engine import Generator, model_hash
    from pipelines.serve.jobs import JobQueue

    check_pipeline_folder(config.model)
    # As ldm-generate: the folder's own sampling defaults (a distilled model's few_step.json) unless given.
    sampling = resolve_sampling(config.model, given=SamplingDefaults(scheduler=config.scheduler), usual=USUAL,
                                loras=config.lora)
    config = dataclasses.replace(config, scheduler=sampling.scheduler)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = pick_dtype(config.dtype, device)
    pipe = prepare_pipeline(config, device, dtype)  # reads model, scheduler, attention, compile
    autocast = (
        torch.autocast("cpu", dtype=torch.bfloat16)
        if device.type == "cpu" and dtype == torch.bfloat16
        else contextlib.nullcontext()
    )
    generator = Generator(
        pipe,
        model=config.model,
        autocast=autocast,
        batch_size=config.batch_size,
        preview_every=config.preview_every,
        preview=config.preview,
        loras=config.lora,
    )
    queue = JobQueue(generator, max_waiting=config.max_queue, batch_wait=config.batch_wait_ms / 1000).start()
    app = create_app(
        queue,
        model=config.model,
        model_hash=model_hash(config.model),
        limits=request_limits(config, pipe.scheduler.config.num_train_timesteps),
        token=config.api_token,
        default_size=pipe.default_size,
        vae_factor=pipe.vae_scale_factor,
        sampling=sampling,
    )
    logger.info(
        "model %s on %s (%s); modes: %s; requests that give none: %s, %d steps, guidance %g",
        config.model,
        device,
        dtype,
        ", ".join(generator.modes),
        sampling.scheduler,
        sampling.num_inference_steps,
        sampling.guidance_scale,
    )
    return app, queue


def request_limits(config: ServeConfig, num_train_timesteps: int):
    """The --max-* flags as `Limits`, steps capped at half the model's training timesteps: past that the
    samplers' grids degenerate (with 1000, ddpm indexes past the end at 1000 steps and dpm++ / unipc turn the
    latents into NaN at 999, measured on the tiny test model)."""
    from pipelines.serve.checks import Limits

    max_steps = min(config.max_steps, num_train_timesteps // 2)
    if max_steps < config.max_steps:
        logger.warning(
            "--max-steps %d lowered to %d, half the model's training timesteps", config.max_steps, max_steps
        )
    return Limits(max_size=config.max_size, max_steps=max_steps, max_images=config.max_images)


def serve(config: ServeConfig) -> None:
    import uvicorn

    if not is_loopback(config.host):
        logger.warning(
            "listening on %s: anyone who can reach this machine can use the server%s",
            config.host,
            "" if config.api_token else " (--insecure: no token!)",
        )
    app, queue = build_server(config)
    logger.info(
        "serving on http://%s:%d%s", config.host, config.port, "/?token=…" if config.api_token else ""
    )
    try:
        uvicorn.run(app, host=config.host, port=config.port, log_level="warning")
    finally:
        queue.stop()


def main(argv: list[str] | None = None) -> int:
    """`ldm-serve`: serves until stopped; a user mistake is one `error: ...` line and exit status 2 (`ldm.cli`)."""
    return run_command(serve, ServeConfig, argv, prog="ldm-serve")


if __name__ == "__main__":
    sys.exit(main())
