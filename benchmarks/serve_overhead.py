"""Serving overhead: `ldm-serve` over HTTP against `ldm-generate`'s pipeline called in-process, same work.

    python benchmarks/serve_overhead.py --model runs/quickstart/stage2 [--steps 25] [--rounds 3] [--clients 4]
    python benchmarks/serve_overhead.py --architecture-of runs/quickstart/stage2/train_config.json

The second form times a model before it is trained: a pipeline folder with the architecture that
train_config.json describes (its trained VAE, a fresh U-Net and text encoder), since speed does not depend on
the weights' values.

Starts a real `ldm-serve` process on a free localhost port and, interleaved with it (the server idles while
the baseline runs, and the other way round), times:
- one image: request → first live preview and → final image over the page's stream (`/api/generate`), and
  → answer over `/sdapi/v1/txt2img`, against one `pipe(...)` call as `ldm-generate` makes it;
- `--clients` clients sending one image each at once to `/sdapi/v1/txt2img`: images/s, against the same images
  made one call at a time in-process, and against one batched call (what `ldm-generate -n 4` does).
Prints medians over the rounds and the ratios server / baseline.

OMP_WAIT_POLICY=PASSIVE is set for both sides (before torch loads): on a CPU shared with other work, OpenMP's
spinning barriers made 25 steps of the tiny test model take 5–60 s on the main thread against 0.4 s in a
worker thread (2 cores, load 8); with passive waiting both take 0.4 s, so the ratios measure the server, not that.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts OpenMP; see the docstring

import torch  # noqa: E402

from pipelines.generate import GenerateConfig, pick_dtype, prepare_pipeline  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a red circle on the left"


def start_server(model: str, port: int, extra: list[str]) -> subprocess.Popen:
    command = [sys.executable, "-m", "pipelines.serve", "--model", model, "--port", str(port), *extra]
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"ldm-serve exited with {process.returncode}")
        with contextlib.suppress(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/sdapi/v1/samplers", timeout=5).close()
            return process
        time.sleep(0.5)
    process.terminate()
    raise SystemExit("ldm-serve did not start within 300 s")


def post(port: int, path: str, body: dict) -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    connection.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    return connection.getresponse()


def stream_timings(port: int, body: dict) -> tuple[float, float]:
    """Seconds from sending to the first preview and to the final image on the page's stream."""
    start = time.perf_counter()
    first_preview = None
    for raw in post(port, "/api/generate", body):
        event = json.loads(raw)
        if event["event"] == "progress" and event["preview"] and first_preview is None:
            first_preview = time.perf_counter() - start
        if event["event"] == "done":
            return first_preview, time.perf_counter() - start
    raise RuntimeError(f"the stream ended without images: {event}")


def api_seconds(port: int, body: dict) -> float:
    start = time.perf_counter()
    response = post(port, "/sdapi/v1/txt2img", body)
    assert response.status == 200, response.read()
    response.read()
    return time.perf_counter() - start


def concurrent_images_per_s(port: int, bodies: list[dict]) -> float:
    threads = [threading.Thread(target=api_seconds, args=(port, body)) for body in bodies]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return len(bodies) / (time.perf_counter() - start)


def direct(pipe, steps: int, seeds: list[int], *, batched: bool) -> float:
    """Seconds for `len(seeds)` images made as ldm-generate makes them (one generator per image)."""
    batches = [seeds] if batched else [[seed] for seed in seeds]
    start = time.perf_counter()
    for batch in batches:
        pipe(
            [PROMPT] * len(batch),
            num_inference_steps=steps,
            generator=[torch.Generator().manual_seed(s) for s in batch],
        )
    return time.perf_counter() - start


def in_thread(function, *args, **kwargs):
    """`function(*args, **kwargs)` run on a fresh thread, as the server's worker runs the pipeline."""
    result = []
    thread = threading.Thread(target=lambda: result.append(function(*args, **kwargs)))
    thread.start()
    thread.join()
    return result[0]


def architecture_folder(train_config: Path, out_dir: Path) -> Path:
    """A pipeline folder shaped as `train_ldm` with `train_config` would save it, untrained but for the VAE."""
    from transformers import CLIPTokenizer

    from autoencoder.presets import build_vae, vae_scale_factor
    from ldm.objective import make_noise_scheduler
    from ldm.text_encoder import build_text_encoder
    from ldm.unet import build_unet
    from pipelines.folder import save_pipeline_folder
    from pipelines.schedulers import DEFAULT_SCHEDULER, make_scheduler

    config = json.loads(train_config.read_text())
    vae = build_vae(pretrained=config["vae"])
    tokenizer = CLIPTokenizer.from_pretrained(str(train_config.parent / "tokenizer"))
    text_encoder = build_text_encoder(tokenizer=tokenizer, preset=config["text_preset"])
    factor = vae_scale_factor(vae)
    unet = build_unet(
        preset=config["preset"],
        cross_attention_dim=text_encoder.config.hidden_size,
        sample_size=config["resolution"] // factor,
        in_channels=vae.config.latent_channels,
        norm_num_groups=config["norm_num_groups"],
    )
    noise = make_noise_scheduler(
        beta_schedule=config["beta_schedule"],
        prediction_type=config["prediction_type"],
        zero_terminal_snr=config["zero_terminal_snr"],
        num_train_timesteps=config["num_train_timesteps"],
    )
    scheduler = make_scheduler(DEFAULT_SCHEDULER, noise.config)
    return save_pipeline_folder(
        out_dir, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="pipeline folder")
    source.add_argument(
        "--architecture-of",
        type=Path,
        help="a train_config.json: time an untrained folder of "
        "its architecture (written to a temporary folder)",
    )
    parser.add_argument("--steps", type=int, default=25, help="sampler steps (ldm-generate's default)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    parser.add_argument("--serve-args", default="", help="more ldm-serve flags, e.g. '--batch-wait-ms 50'")
    parser.add_argument("--clients", type=int, default=4, help="clients sending one image each at once")
    args = parser.parse_args()
    if args.architecture_of:
        torch.manual_seed(0)
        args.model = str(architecture_folder(args.architecture_of, Path(tempfile.mkdtemp()) / "pipe"))

    config = GenerateConfig(prompt=PROMPT, model=args.model)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    pipe = prepare_pipeline(config, device, pick_dtype("auto", device))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = start_server(args.model, port, shlex.split(args.serve_args))
    seeds = list(range(args.clients))
    body = {"prompt": PROMPT, "steps": args.steps, "seed": 0}
    rows = {
        name: []
        for name in (
            "direct_one",
            "thread_one",
            "preview",
            "stream_final",
            "api_one",
            "direct_seq",
            "direct_batch",
            "server_rate",
        )
    }
    try:
        direct(pipe, args.steps, [0], batched=True), api_seconds(port, body)  # warm-up, both sides
        for _ in range(args.rounds):
            rows["direct_one"].append(direct(pipe, args.steps, [0], batched=True))
            rows["thread_one"].append(in_thread(direct, pipe, args.steps, [0], batched=True))
            preview, final = stream_timings(port, body)
            rows["preview"].append(preview)
            rows["stream_final"].append(final)
            rows["api_one"].append(api_seconds(port, body))
            rows["direct_seq"].append(args.clients / direct(pipe, args.steps, seeds, batched=False))
            rows["direct_batch"].append(args.clients / direct(pipe, args.steps, seeds, batched=True))
            rows["server_rate"].append(concurrent_images_per_s(port, [{**body, "seed": s} for s in seeds]))
    finally:
        server.terminate()
        server.wait(30)
    m = {name: statistics.median(values) for name, values in rows.items()}
    print(
        f"model {args.model}, {args.steps} steps, {args.rounds} rounds, device {device}, "
        f"{torch.get_num_threads()} torch threads, OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}, "
        f"ldm-serve {args.serve_args or '(defaults)'}"
    )
    print(f"one image, in-process pipe call (ldm-generate):  {m['direct_one']:.3f} s")
    print(f"one image, the same call on a worker thread (as the server makes it): {m['thread_one']:.3f} s")
    thread_ratio = m["stream_final"] / m["thread_one"]
    stream, api = m["stream_final"] / m["direct_one"], m["api_one"] / m["direct_one"]
    print(f"one image, ldm-serve stream: first preview {m['preview']:.3f} s, ", end="")
    print(
        f"final image {m['stream_final']:.3f} s (x{stream:.3f} of in-process, x{thread_ratio:.3f} of the thread)"
    )
    print(f"one image, ldm-serve /sdapi/v1/txt2img: {m['api_one']:.3f} s (x{api:.3f} of in-process)")
    rate = m["server_rate"]
    print(f"{args.clients} clients at once: ldm-serve {rate:.3f} images/s")
    print(f"  in-process one at a time {m['direct_seq']:.3f} images/s (server x{rate / m['direct_seq']:.3f})")
    print(
        f"  in-process batch of {args.clients} {m['direct_batch']:.3f} images/s "
        f"(server x{rate / m['direct_batch']:.3f})"
    )


if __name__ == "__main__":
    main()
