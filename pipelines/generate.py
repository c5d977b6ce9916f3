"""`ldm-generate`: prompts in, PNGs + contact sheet + manifest.jsonl out, on one process or many.

    ldm-generate "a red circle on the left" --model DIR --out OUTDIR -n 4
    accelerate launch --multi_gpu --num_processes 2 -m pipelines.generate \
        --prompts-file prompts.txt --model DIR --out OUTDIR

Each image's noise comes from its own generator seeded from (seed, prompt index, image index), and the work is
split across processes in whole batches, so the union of a multi-process run's files equals the single-process
run's, file for file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from ldm.attention import check_attention, set_attention
from ldm.cli import run_command
from ldm.grid import make_grid
from pipelines.edit_inputs import EditInputs, check_edit_options, check_text_to_image_model, read_edit_inputs
from pipelines.few_step import SamplingDefaults, resolve_sampling
from pipelines.folder import load_pipeline
from pipelines.lora import LORA_HELP, apply_loras, lora_records, lora_specs
from pipelines.pipeline_text_to_image import DEFAULT_GUIDANCE_SCALE
from pipelines.schedulers import DEFAULT_SCHEDULER, SCHEDULERS, make_scheduler

logger = logging.getLogger("ldm-generate")

DTYPES = ("auto", "fp32", "bf16", "fp16")
GRID_MAX_IMAGES = 64  # a contact sheet of thousands of images is unreadable and huge; show the first 64
MANIFEST = "manifest.jsonl"


@dataclass
class GenerateConfig:
    prompt: str | None = field(default=None, metadata={"help": "the prompt (or use --prompts-file)",
                                                        "positional": True})
    model: str = field(default="", metadata={"help": "pipeline folder (ours or any diffusers SD-1.x/2.x)"})
    out: str = field(default="samples", metadata={"help": "output folder for PNGs, grid.png, manifest.jsonl"})
    num_images: int = field(default=4, metadata={"help": "images per prompt", "aliases": ["-n"]})
    # steps, guidance_scale, scheduler: None = the folder's few_step.json (a distilled model), else USUAL.
    steps: int | None = field(default=None, metadata={"help": "number of sampler steps (default: the model "
                                                                "folder's, else 25)"})
    guidance_scale: float | None = field(
        default=None,
        metadata={"help": f"classifier-free guidance scale w+1; <= 1 turns guidance off (default: the model "
                          f"folder's, else {DEFAULT_GUIDANCE_SCALE:g})"},
    )
    seed: int = field(
        default=0, metadata={"help": "base seed; image seeds derive from (seed, prompt, image)"}
    )
    scheduler: str | None = field(default=None, metadata={
        "help": f"sampler: {', '.join(SCHEDULERS)} (default: the model folder's, else {DEFAULT_SCHEDULER})"})
    negative_prompt: str | None = field(
        default=None, metadata={"help": "replaces the empty prompt in guidance"}
    )
    height: int | None = field(default=None, metadata={"help": "image height (without it, the model's size)"})
    width: int | None = field(default=None, metadata={"help": "image width (without it, the model's size)"})
    prompts_file: str | None = field(
        default=None,
        metadata={"help": "one prompt a line, or .jsonl with per-line prompt / negative_prompt / seed"},
    )
    batch_size: int = field(default=4, metadata={"help": "images per U-Net batch"})
    compile: bool = field(
        default=False,
        metadata={
            "help": "torch.compile the U-Net: ~1.8x at batch 1 on CPU after minutes of warm-up; for long runs"
        },
    )
    dtype: str = field(
        default="auto",
        metadata={
            "help": "auto (CUDA: bf16 or fp16; CPU: fp32), fp32, bf16 (CPU: autocast), fp16 (CUDA only)"
        },
    )
    lora: tuple[str, ...] = field(default=(), metadata={"help": LORA_HELP})
    attention: str = field(
        default="auto",
        metadata={"help": "attention kernel: auto (xformers on CUDA when installed, else PyTorch SDPA), sdpa, "
                          "xformers"},
    )
    # Editing (pipelines.edit_inputs): image-to-image with --image, inpainting with --mask-image or --outpaint.
    image: str | None = field(default=None, metadata={"help": "init image to edit (image-to-image, SDEdit)"})
    strength: float | None = field(
        default=None,
        metadata={"help": "how far to noise --image, in (0, 1]: runs int(steps * strength) steps "
                          "(without it: 0.8, or 1.0 with a mask)"},
    )
    mask_image: str | None = field(
        default=None, metadata={"help": "inpaint: greyscale mask of --image's size, white = repaint"}
    )
    mask_blur: int = field(
        default=0, metadata={"help": "pixels of Gaussian softening inside the mask's edge for --keep-unmasked"}
    )
    keep_unmasked: bool = field(
        default=False, metadata={"help": "paste the original pixels back outside the mask (exact there)"}
    )
    outpaint: str | None = field(
        default=None,
        metadata={"help": "LEFT,TOP,RIGHT,BOTTOM pixels to add around --image and paint (multiples of the "
                          "VAE factor)"},
    )
    repaint_jump_length: int = field(
        default=10, metadata={"help": "RePaint: steps per resampled block (with --repaint-jump-n-sample > 1)"}
    )
    repaint_jump_n_sample: int = field(
        default=1,
        metadata={"help": "RePaint: times each block is denoised (1 = plain blend; > 1 needs --scheduler "
                          "ddim or ddpm)"},
    )

    def __post_init__(self):
        if (self.prompt is None) == (self.prompts_file is None):
            raise ValueError("give either a prompt or --prompts-file (exactly one).")
        if not self.model:
            raise ValueError("--model is required (a pipeline folder).")
        for name in ("num_images", "steps", "batch_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}.")
        if self.guidance_scale is not None and self.guidance_scale < 0:
            raise ValueError(f"--guidance-scale must be >= 0, got {self.guidance_scale}.")
        if self.scheduler is not None and self.scheduler not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {self.scheduler!r}; choose one of: {', '.join(SCHEDULERS)}.")
        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}.")
        check_attention(self.attention, "cuda" if torch.cuda.is_available() else "cpu")
        self.lora = tuple(self.lora or ())
        lora_specs(self.lora)  # a bad scale or a missing file fails before any work
        for name in ("height", "width"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"--{name} must be positive, got {getattr(self, name)}.")
        check_edit_options(image=self.image, mask_image=self.mask_image, strength=self.strength,
                           mask_blur=self.mask_blur, keep_unmasked=self.keep_unmasked, outpaint=self.outpaint,
                           jump_length=self.repaint_jump_length, jump_n_sample=self.repaint_jump_n_sample)
        if self.image is not None and (self.height is not None or self.width is not None):
            raise ValueError("--height/--width do not apply with --image: the image (and --outpaint) sets the size.")


@dataclass
class ImageJob:
    """One output image: everything needed to make it and to record it."""

    prompt_index: int
    image_index: int
    prompt: str
    negative_prompt: str | None
    seed: int

    @property
    def file(self) -> str:
        return f"{self.prompt_index:05d}-{self.image_index:02d}.png"


def read_prompts(config: GenerateConfig) -> list[dict]:
    """Prompt records `{"prompt", "negative_prompt", "seed"}` from the command line or --prompts-file."""
    if config.prompts_file is None:
        if config.prompt.endswith((".txt", ".jsonl")) and Path(config.prompt).is_file():
            logger.warning("the prompt %r is the name of a file: it is used as the prompt text; pass "
                           "--prompts-file to read prompts from it", config.prompt)
        return [{"prompt": config.prompt, "negative_prompt": config.negative_prompt, "seed": None}]
    path = Path(config.prompts_file)
    if not path.is_file():
        raise FileNotFoundError(f"prompts file {path} does not exist.")
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        if path.suffix == ".jsonl":
            records.append(_parse_jsonl_line(line, number, path, config.negative_prompt))
        else:
            records.append({"prompt": line.strip(), "negative_prompt": config.negative_prompt, "seed": None})
    if not records:
        raise ValueError(f"prompts file {path} holds no prompts.")
    return records


def _parse_jsonl_line(line: str, number: int, path: Path, default_negative: str | None) -> dict:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        raise ValueError(f"line {number} of {path} is not valid JSON.") from None
    if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
        raise ValueError(f'line {number} of {path} needs a string "prompt" field.')
    seed = record.get("seed")
    if seed is not None and not isinstance(seed, int):
        raise ValueError(f'line {number} of {path}: "seed" must be an integer.')
    return {
        "prompt": record["prompt"],
        "negative_prompt": record.get("negative_prompt", default_negative),
        "seed": seed,
    }


def image_seed(seed: int, prompt_index: int, image_index: int, prompt_seed: int | None = None) -> int:
    """Seed of one image: a per-prompt seed (given, or hashed from (seed, prompt index)) plus the image index.

    A JSONL line's own seed with -n 1 reproduces exactly the image whose manifest row carries that seed.
    """
    if prompt_seed is None:
        prompt_seed = int(np.random.SeedSequence([seed, prompt_index]).generate_state(1)[0])
    return prompt_seed + image_index


def make_jobs(records: list[dict], *, seed: int, num_images: int) -> list[ImageJob]:
    return [
        ImageJob(p, i, r["prompt"], r["negative_prompt"], image_seed(seed, p, i, r["seed"]))
        for p, r in enumerate(records)
        for i in range(num_images)
    ]


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """Compute dtype: on CUDA auto means bf16 where supported, else fp16; on CPU auto means fp32."""
    if name == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if name == "fp16" and device.type != "cuda":
        raise ValueError("--dtype fp16 needs a CUDA GPU; use bf16 or fp32 on CPU.")
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def prepare_pipeline(config: GenerateConfig, device: torch.device, dtype: torch.dtype):
    """Load the folder, swap in the sampler, place weights (CPU bf16 = autocast over fp32 weights)."""
    weights_dtype = dtype if device.type == "cuda" else torch.float32
    pipe = load_pipeline(config.model, device=device, dtype=weights_dtype)
    pipe.scheduler = make_scheduler(config.scheduler, pipe.scheduler.config)
    if weights_dtype == torch.float16:
        pipe.vae.to(torch.float32)  # the SD VAE decoder overflows in fp16; decoding in fp32 is cheap
    logger.info("attention: %s", set_attention(pipe, config.attention, device))
    apply_loras(pipe, lora_specs(config.lora))
    if config.compile:
        pipe.unet.compile()  # in place, so the pipeline still sees a UNet2DConditionModel
    pipe.set_progress_bar_config(disable=True)  # one bar over all images instead of one per batch
    return pipe


def png_info(job: ImageJob, config: GenerateConfig, edit: EditInputs | None = None) -> PngInfo:
    info = PngInfo()
    for key, value in manifest_row(job, config, edit).items():
        if key != "file":
            info.add_text(key, json.dumps(value) if not isinstance(value, str) else value)
    return info


def manifest_row(job: ImageJob, config: GenerateConfig, edit: EditInputs | None = None) -> dict:
    edit_fields = {} if edit is None else edit.manifest_fields(image_path=config.image, mask_path=config.mask_image)
    return {
        "file": job.file,
        "prompt": job.prompt,
        "negative_prompt": job.negative_prompt,
        "seed": job.seed,
        "steps": config.steps,
        "guidance_scale": config.guidance_scale,
        "scheduler": config.scheduler,
        "model": config.model,
        **edit_fields,
        **({"loras": lora_records(config.lora)} if config.lora else {}),
    }


def run_batch(pipe, batch: list[ImageJob], config: GenerateConfig, out_dir: Path, autocast,
              edit: EditInputs | None = None) -> None:
    """Sample (or edit) one batch (one generator per image) and write its PNGs."""
    negatives = [job.negative_prompt for job in batch]
    generators = [torch.Generator("cpu").manual_seed(job.seed) for job in batch]
    with autocast:
        images = pipe(
            [job.prompt for job in batch],
            negative_prompt=None if all(n is None for n in negatives) else [n or "" for n in negatives],
            num_inference_steps=config.steps,
            guidance_scale=config.guidance_scale,
            generator=generators,
            output_type="pil",
            **(edit.pipeline_kwargs() if edit else {"height": config.height, "width": config.width}),
        ).images
    if edit is not None:
        images = edit.finish(images)
    for job, image in zip(batch, images):
        image.save(out_dir / job.file, pnginfo=png_info(job, config, edit))


def write_outputs(jobs: list[ImageJob], config: GenerateConfig, out_dir: Path,
                  edit: EditInputs | None = None) -> None:
    """Main process, after all images exist: manifest.jsonl in job order and the contact sheet."""
    with open(out_dir / MANIFEST, "w", encoding="utf-8") as manifest:
        for job in jobs:
            manifest.write(json.dumps(manifest_row(job, config, edit)) + "\n")
    shown = jobs[:GRID_MAX_IMAGES]
    images = [Image.open(out_dir / job.file).convert("RGB") for job in shown]
    make_grid(images, captions=[job.prompt for job in shown], ncols=config.num_images).save(
        out_dir / "grid.png"
    )


def check_writable(out_dir: Path, rank: int) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".write-test-{rank}"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise ValueError(f"cannot write to output folder {out_dir}: {error.strerror or error}.") from None


USUAL = SamplingDefaults(DEFAULT_SCHEDULER, 25, DEFAULT_GUIDANCE_SCALE)  # for a folder without its own


def with_sampling_defaults(config: GenerateConfig) -> GenerateConfig:
    """`config` with steps, guidance_scale and scheduler filled in: given, else the folder's, else USUAL."""
    given = SamplingDefaults(config.scheduler, config.steps, config.guidance_scale)
    chosen = resolve_sampling(config.model, given=given, usual=USUAL, loras=config.lora)
    return dataclasses.replace(config, scheduler=chosen.scheduler, steps=chosen.num_inference_steps,
                               guidance_scale=chosen.guidance_scale)


def generate(config: GenerateConfig) -> list[ImageJob]:
    """Run the whole command; under `accelerate launch` each process takes a share of the batches."""
    from accelerate import PartialState
    from tqdm.auto import tqdm

    # cpu=True without CUDA makes a torchrun-style launch a gloo process group (accelerate's MULTI_CPU).
    state = PartialState(cpu=not torch.cuda.is_available())
    config = with_sampling_defaults(config)
    out_dir = Path(config.out)
    jobs = make_jobs(read_prompts(config), seed=config.seed, num_images=config.num_images)
    check_writable(out_dir, state.process_index)  # every process, so none waits for one that failed
    edit = None if config.image is None else read_edit_inputs(
        image=config.image, mask_image=config.mask_image, strength=config.strength, mask_blur=config.mask_blur,
        keep_unmasked=config.keep_unmasked, outpaint=config.outpaint, jump_length=config.repaint_jump_length,
        jump_n_sample=config.repaint_jump_n_sample,
    )
    dtype = pick_dtype(config.dtype, state.device)
    pipe = prepare_pipeline(config, state.device, dtype)
    if edit is None:
        check_text_to_image_model(pipe)
        height, width = config.height or pipe.default_size, config.width or pipe.default_size
        pipe.check_inputs([jobs[0].prompt], None, height, width, config.steps, config.guidance_scale, 1, "pil")
    else:
        pipe = edit.pipeline(pipe, config.steps)
    autocast = (
        torch.autocast("cpu", dtype=torch.bfloat16)
        if state.device.type == "cpu" and dtype == torch.bfloat16
        else contextlib.nullcontext()
    )
    # Whole batches go to processes, so every image is computed in the same batch as in a 1-process run.
    batches = [jobs[i : i + config.batch_size] for i in range(0, len(jobs), config.batch_size)]
    with state.split_between_processes(batches) as my_batches:
        logger.info(
            "process %d of %d: %d of %d batches",
            state.process_index + 1,
            state.num_processes,
            len(my_batches),
            len(batches),
        )
        for batch in tqdm(my_batches, desc="batches", disable=not state.is_local_main_process):
            run_batch(pipe, batch, config, out_dir, autocast, edit)
    state.wait_for_everyone()
    if state.is_main_process:
        write_outputs(jobs, config, out_dir, edit)
        (out_dir / "generate_config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2) + "\n")
        logger.info("wrote %d images, grid.png and %s to %s", len(jobs), MANIFEST, out_dir)
    return jobs


def main(argv: list[str] | None = None) -> int:
    """`ldm-generate`: 0 on success; a user mistake is one `error: ...` line and exit status 2 (`ldm.cli`)."""
    return run_command(generate, GenerateConfig, argv, prog="ldm-generate")


if __name__ == "__main__":
    sys.exit(main())
