"""Few-step sampling: distil a trained pipeline folder into a student that draws in 1–8 U-Net calls.

    accelerate launch distill_ldm.py --teacher OUT2 --output-dir OUT3 --max-steps 500

(plain `python distill_ldm.py ...` and `ldm-distill` work too). Latent consistency distillation (LCD, Luo et al.
2023) with the guidance weight as an input: the student is the teacher's U-Net plus a zero-initialised
projection of a w embedding (`timestep_cond`), trained so that one call at any w ∈ [w_min, w_max] lands where
the teacher's guided ODE does. All the maths is in `ldm.distill`. The data are the teacher's own (its
`train_config.json`; its latent cache is reused when it matches) unless `--data` says otherwise. The output is
a pipeline folder with an `LCMScheduler` that stock `StableDiffusionPipeline.from_pretrained` samples, plus
`few_step.json` (default steps and guidance for `ldm-generate` / `ldm-eval`), checkpoints and sample grids.

With `--lora-rank R` it distils an **LCM-LoRA** instead (`ldm.lcm_lora`): a LoRA adapter on the frozen teacher
U-Net, no w input (w guides only the teacher, so the adapter draws at that guidance with guidance_scale 1), no
EMA target network; the output is `OUT/pytorch_lora_weights.safetensors`, which stock `load_lora_weights` and
`ldm-generate --model TEACHER --lora OUT/...` load (the file's metadata gives them lcm, 4 steps, guidance 1).
"""
from __future__ import annotations

import contextlib
import copy
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import LCMScheduler

from ldm.cli import option, run_command, save_config
from ldm.conditioning import null_prompt_embeds
from ldm.data import open_dataset
from ldm.distill import TIME_COND_PROJ_DIM, distillation_loss, make_student, skipping_timesteps, update_target
from ldm.encode_shards import build_latent_cache, cache_source, open_if_current, shard_cache_key
from ldm.grid import make_grid
from ldm.lcm_lora import LCM_LORA_SOLVER_STEPS, LCM_LORA_TARGETS, lcm_lora_metadata, make_lora_student
from ldm.latent_shards import TRAINING_CACHE_DIR, ShardedLatentCache
from ldm.lora import FORMATS, KOHYA_WEIGHTS_NAME, LORA_WEIGHTS_NAME, adapter_state_dict, resolve_targets, save_lora
from ldm.stage2 import CaptionEmbedder
from ldm.training.accelerator import make_accelerator
from ldm.training.batches import global_batch_indices, local_slice, step_generator
from ldm.training.checkpoint import CheckpointManager
from ldm.training.guards import check_finite
from ldm.training.interrupt import StopOnInterrupt
from ldm.training.optim import make_adamw, make_lr_scheduler
from ldm.training.periodic import end_of_step
from ldm.training.progress import TrainingProgress
from pipelines.few_step import SamplingDefaults, write_sampling_defaults
from pipelines.folder import load_pipeline, save_pipeline_folder
from pipelines.pipeline_text_to_image import TextToImagePipeline
# The one piece of stage 2 reused as is: per-item caption embeddings from a frozen text encoder.
from train_ldm import CONFIG_FILE as TEACHER_CONFIG_FILE

logger = logging.getLogger("distill_ldm")

CONFIG_FILE = "distill_config.json"


@dataclass
class DistillConfig:
    """Distil a pipeline folder into a few-step student (latent consistency distillation, w as an input)."""

    teacher: str = option("", "the teacher pipeline folder (train_ldm.py output or any SD-format folder)")
    output_dir: str = option("", "where the student's pipeline folder, checkpoints and samples go")
    data: str = option("", "training data (default: the teacher's, from its train_config.json)")
    data_size: int | None = option(None, "items to use (default: the teacher's)")
    caption_column: str | None = option(None, "caption column for metadata / HF datasets (default: the "
                                               "teacher's)")
    resolution: int | None = option(None, "image side in pixels (default: the teacher's)")
    # LCD (ldm.distill); defaults from the LCM paper and diffusers' train_lcm_distill_sd_wds.py.
    solver_steps: int = option(50, "N, the teacher's DDIM grid: each solver step skips T / N timesteps")
    w_min: float = option(0.0, "smallest guidance weight w (guidance_scale = w + 1) drawn per example")
    w_max: float = option(4.0, "largest guidance weight w drawn per example")
    time_cond_proj_dim: int = option(TIME_COND_PROJ_DIM, "width of the student's w embedding")
    loss: str = option("huber", "consistency loss", choices=("huber", "l2"))
    huber_c: float = option(1e-3, "pseudo-Huber constant c")
    target_decay: float = option(0.95, "decay μ of the target network θ⁻ ← μθ⁻ + (1 − μ)θ (an LCM-LoRA "
                                       "has none: its target is itself, μ = 0)")
    # LCM-LoRA (ldm.lcm_lora): an adapter on the frozen teacher instead of a new U-Net with a w input.
    lora_rank: int | None = option(None, "distil an LCM-LoRA of this rank on the frozen teacher (output "
                                         f"OUT/{LORA_WEIGHTS_NAME}, not a pipeline folder)")
    lora_alpha: float | None = option(None, "LoRA alpha: the update is scaled by alpha / rank (default: rank)")
    lora_targets: str = option(",".join(LCM_LORA_TARGETS), "U-Net modules to adapt, comma-separated: groups "
                                                          "attn, ff, proj, conv or module names (default: every "
                                                          "linear and convolution, as diffusers' LCM-LoRA script)")
    lora_format: str = option("diffusers", f"adapter file layout; kohya also writes OUT/{KOHYA_WEIGHTS_NAME} for "
                                           "AUTOMATIC1111 / ComfyUI", choices=FORMATS)
    # Optimisation.
    max_steps: int = option(500, "optimizer steps")
    batch_size: int = option(32, "images per process per step")
    lr: float = option(1e-4, "AdamW learning rate")
    warmup_steps: int = option(20, "linear learning-rate warm-up steps")
    weight_decay: float = option(1e-2, "AdamW weight decay")
    max_grad_norm: float = option(1.0, "gradient clipping norm")
    mixed_precision: str = option("no", "autocast precision", choices=("no", "fp16", "bf16"))
    # Sampling: validation grids, and the defaults written into few_step.json.
    sample_steps: int = option(4, "LCM steps for validation grids and the folder's default")
    sample_guidance_scale: float | None = option(None, "guidance_scale (w + 1) for validation grids and the "
                                                      "folder's default (default: 2; an LCM-LoRA: 1, no CFG)")
    sample_prompts: str = option("", "prompts of the sample grids, separated by '|' (empty: no grids)")
    sample_every: int = option(0, "write a sample grid every N steps (0: only at the end), as train_ldm.py")
    checkpoint_every: int = option(100, "save a resumable checkpoint every N steps (0: only at the end)")
    resume: str | None = option(None, "'latest' or a checkpoint folder to resume from")
    seed: int = option(0, "seed for data order and every per-step random draw")

    def __post_init__(self):
        for name in ("teacher", "output_dir"):
            if not getattr(self, name):
                raise ValueError(f"--{name.replace('_', '-')} is required.")
        for name in ("max_steps", "batch_size", "solver_steps", "sample_steps", "time_cond_proj_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}.")
        if not 0 <= self.w_min <= self.w_max:
            raise ValueError(f"need 0 <= --w-min <= --w-max, got {self.w_min} and {self.w_max}.")
        if not 0.0 <= self.target_decay < 1.0:
            raise ValueError(f"--target-decay must be in [0, 1), got {self.target_decay}.")
        if self.lr <= 0 or self.huber_c <= 0:
            raise ValueError(f"--lr and --huber-c must be positive, got {self.lr} and {self.huber_c}.")
        if self.sample_steps > self.solver_steps:
            raise ValueError(f"--sample-steps ({self.sample_steps}) cannot exceed --solver-steps "
                             f"({self.solver_steps}): LCM samples from the solver's grid.")
        self._check_lora()

    def _check_lora(self) -> None:
        if self.lora_rank is None:
            if self.lora_alpha is not None or self.lora_format != "diffusers":
                raise ValueError("--lora-alpha and --lora-format need --lora-rank (an LCM-LoRA).")
            return
        if self.lora_rank < 1:
            raise ValueError(f"--lora-rank must be at least 1, got {self.lora_rank}.")
        if self.solver_steps != LCM_LORA_SOLVER_STEPS:  # the adapter file carries no scheduler of its own
            raise ValueError(f"an LCM-LoRA samples with a stock LCMScheduler on the teacher, whose grid is "
                             f"{LCM_LORA_SOLVER_STEPS} steps: give --solver-steps {LCM_LORA_SOLVER_STEPS}.")
        resolve_targets(self.lora_targets.split(","))

    @property
    def guidance_scale(self) -> float:
        """The validation grids' and the output's default guidance_scale: the user's, else 2 for a student
        that takes w, 1 (no CFG) for an LCM-LoRA, whose w is in its weights."""
        if self.sample_guidance_scale is not None:
            return self.sample_guidance_scale
        return 1.0 if self.lora_rank else 2.0

    @property
    def prompts(self) -> list[str]:
        return [p.strip() for p in self.sample_prompts.split("|") if p.strip()]


def teacher_data(config: DistillConfig) -> dict:
    """The data options: the user's, else the teacher's train_config.json (one-sentence error if neither)."""
    path = Path(config.teacher) / TEACHER_CONFIG_FILE
    saved = json.loads(path.read_text()) if path.is_file() else {}
    data = {"data": config.data or saved.get("data"),
            "size": config.data_size if config.data_size is not None else saved.get("data_size"),
            "caption_column": config.caption_column or saved.get("caption_column", "text"),
            "resolution": config.resolution or saved.get("resolution")}
    if not data["data"] or not data["resolution"]:
        raise ValueError(f"the teacher has no {TEACHER_CONFIG_FILE} naming its data; give --data and "
                         f"--resolution.")
    return data


def latent_cache(vae, data: dict, *, teacher: Path, output_dir: Path, accelerator) -> ShardedLatentCache:
    """The teacher's on-disk latent cache when it holds exactly these data (read only), else one that every
    process encodes its share of into `output_dir` (`ldm.encode_shards`). Square (unbucketed) data only."""
    key = shard_cache_key(source=cache_source(data["data"], size=data["size"], caption_column=data["caption_column"]),
                          resolution=data["resolution"], vae=vae)
    cache = open_if_current(teacher / TRAINING_CACHE_DIR, key)
    if cache is not None:
        logger.info("reusing the teacher's latent cache (%d items)", len(cache))
    else:
        dataset = open_dataset(data["data"], resolution=data["resolution"], crop="center",
                               caption_column=data["caption_column"], size=data["size"])
        cache = build_latent_cache(vae, dataset, cache_dir=output_dir / TRAINING_CACHE_DIR, key=key,
                                   rank=accelerator.process_index, world_size=accelerator.num_processes,
                                   barrier=accelerator.wait_for_everyone, device=accelerator.device)
    if len(cache.bucket_sizes) > 1:
        raise ValueError("distillation draws square batches: give the teacher's data without --buckets.")
    return cache


def step_batch(step: int, *, cache, config: DistillConfig, scaling_factor: float, accelerator) -> dict:
    """This process's slice of step `step`'s global batch: every draw from the step's generator over the global
    batch, so the run depends on neither the process count nor where it was resumed (ldm.training.batches)."""
    rank, world = accelerator.process_index, accelerator.num_processes
    generator = step_generator(config.seed, step)
    indices = global_batch_indices(len(cache), config.batch_size * world, step, config.seed)
    latents = cache.sample(indices, scaling_factor=scaling_factor, generator=generator)
    noise = torch.randn(latents.shape, generator=generator)
    solver_index = torch.randint(0, config.solver_steps, (len(indices),), generator=generator)
    w = config.w_min + (config.w_max - config.w_min) * torch.rand(len(indices), generator=generator)
    batch = {"indices": indices, "latents": latents, "noise": noise, "solver_index": solver_index, "w": w}
    return {name: local_slice(value, rank, world) for name, value in batch.items()}


@torch.no_grad()
def sample_grid(*, teacher_pipe, student, scheduler, config: DistillConfig, path: Path) -> None:
    """The validation prompts drawn by the student in `sample_steps` LCM steps, one captioned grid at `path`."""
    pipe = TextToImagePipeline(vae=teacher_pipe.vae, text_encoder=teacher_pipe.text_encoder,
                               tokenizer=teacher_pipe.tokenizer, unet=student, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(config.prompts, num_inference_steps=config.sample_steps, guidance_scale=config.guidance_scale,
                  generator=torch.Generator().manual_seed(config.seed)).images
    path.parent.mkdir(parents=True, exist_ok=True)
    make_grid(images, captions=config.prompts).save(path)
    logger.info("validation grid written to %s", path)


def make_student_and_target(config: DistillConfig, teacher):
    """(student, target network) in training mode: the teacher plus a zero-initialised w projection and its EMA
    copy, or, with --lora-rank, the teacher plus an LCM-LoRA and None (its target is itself, `ldm.lcm_lora`)."""
    if config.lora_rank:
        student, _ = make_lora_student(teacher, rank=config.lora_rank, alpha=config.lora_alpha,
                                       targets=config.lora_targets)
        return student.train(), None
    student = make_student(teacher, time_cond_proj_dim=config.time_cond_proj_dim).train()
    return student, copy.deepcopy(student).requires_grad_(False).eval()


def save_lcm_lora(config: DistillConfig, output_dir: Path, student) -> None:
    """OUT/pytorch_lora_weights.safetensors (diffusers' format, `ldm.lora`) with the LCM-LoRA's sampling facts in
    its metadata, and the kohya layout when asked."""
    state_dict, metadata = adapter_state_dict({"unet": student})
    facts = lcm_lora_metadata(num_inference_steps=config.sample_steps, original_inference_steps=config.solver_steps,
                              guidance_weight_range=(config.w_min, config.w_max), teacher=config.teacher)
    path = save_lora(output_dir / LORA_WEIGHTS_NAME, state_dict, metadata, extra_metadata=facts)
    if config.lora_format == "kohya":
        save_lora(output_dir / KOHYA_WEIGHTS_NAME, state_dict, metadata, lora_format="kohya", extra_metadata=facts)
    logger.info("LCM-LoRA (%d tensors) saved to %s; sample with: ldm-generate PROMPT --model %s --lora %s",
                len(state_dict), path, config.teacher, path)


def distill(config: DistillConfig) -> Path:
    """Run the distillation from `config`; return the output folder (the student's pipeline folder, or the one
    holding the LCM-LoRA's adapter file)."""
    output_dir = Path(config.output_dir)
    checkpoints = CheckpointManager(output_dir)
    resume_from = checkpoints.resolve(config.resume) if config.resume else None  # fails before any work
    data = teacher_data(config)
    accelerator = make_accelerator(output_dir=output_dir, mixed_precision=config.mixed_precision,
                                   seed=config.seed, project_name="distill_ldm")
    if accelerator.is_main_process:
        save_config(config, output_dir / CONFIG_FILE)

    # Frozen teacher pieces, its data as latents, and the sampler the student will use.
    teacher_pipe = load_pipeline(config.teacher, device=accelerator.device)
    vae, text_encoder, tokenizer, teacher = (teacher_pipe.vae, teacher_pipe.text_encoder, teacher_pipe.tokenizer,
                                             teacher_pipe.unet)
    for model in (vae, text_encoder, teacher):
        model.requires_grad_(False).eval()
    cache = latent_cache(vae, data, teacher=Path(config.teacher), output_dir=output_dir, accelerator=accelerator)
    embedder = CaptionEmbedder(text_encoder, tokenizer, trainable=False, captions=cache.iter_captions())
    null = null_prompt_embeds(text_encoder, tokenizer)  # the ε(x) condition the teacher was trained with
    scheduler = LCMScheduler.from_config(teacher_pipe.scheduler.config, original_inference_steps=config.solver_steps)
    solver_timesteps = skipping_timesteps(num_train_timesteps=scheduler.config.num_train_timesteps,
                                          num_solver_steps=config.solver_steps)

    # Student (the teacher plus a w projection, or plus an LCM-LoRA), its target network, optimizer, checkpoints.
    student, target = make_student_and_target(config, teacher)
    optimizer = make_adamw([p for p in student.parameters() if p.requires_grad], lr=config.lr,
                           weight_decay=config.weight_decay)
    lr_scheduler = make_lr_scheduler(optimizer, name="constant", warmup_steps=config.warmup_steps,
                                     max_steps=config.max_steps, accelerator=accelerator)
    student, optimizer = accelerator.prepare(student, optimizer)
    if target is not None:
        accelerator.register_for_checkpointing(target)
    start = checkpoints.load(accelerator, resume_from) if resume_from else 0

    def validate(name: str) -> None:
        if config.prompts and accelerator.is_main_process:
            model = accelerator.unwrap_model(student).eval()
            sample_grid(teacher_pipe=teacher_pipe, student=model, scheduler=scheduler, config=config,
                        path=output_dir / "samples" / f"{name}.png")
            model.train()
        accelerator.wait_for_everyone()

    # Distillation loop.
    stop = StopOnInterrupt(enabled=accelerator.num_processes == 1)
    with stop, contextlib.closing(TrainingProgress(accelerator, total_steps=config.max_steps, initial_step=start,
                                                   global_batch_size=config.batch_size * accelerator.num_processes)
                                  ) as progress:
        for step in range(start, config.max_steps):
            batch = step_batch(step, cache=cache, config=config, scaling_factor=vae.config.scaling_factor,
                               accelerator=accelerator)
            prompt_embeds = embedder(cache.captions_of(batch["indices"]),
                                     torch.ones(len(batch["indices"]), dtype=torch.bool))
            with accelerator.autocast():
                loss = distillation_loss(
                    student=student, target=target if target is not None else accelerator.unwrap_model(student),
                    teacher=teacher,
                    latents=batch["latents"].to(accelerator.device), noise=batch["noise"].to(accelerator.device),
                    solver_index=batch["solver_index"], w=batch["w"], prompt_embeds=prompt_embeds,
                    null_embeds=null.expand_as(prompt_embeds), solver_timesteps=solver_timesteps,
                    alphas_cumprod=scheduler.alphas_cumprod, prediction_type=scheduler.config.prediction_type,
                    loss_kind=config.loss, huber_c=config.huber_c)
            accelerator.backward(loss)
            loss = accelerator.reduce(loss.detach(), reduction="mean")
            check_finite(loss, step + 1, last_checkpoint=checkpoints.last_saved)
            accelerator.clip_grad_norm_(student.parameters(), config.max_grad_norm)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if target is not None:
                update_target(target, accelerator.unwrap_model(student), decay=config.target_decay)
            progress.update(step + 1, {"loss": loss.item(), "lr": lr_scheduler.get_last_lr()[0]})
            end_of_step(step + 1, max_steps=config.max_steps, checkpoint_every=config.checkpoint_every,
                        sample_every=config.sample_every, checkpoints=checkpoints, accelerator=accelerator,
                        sample=validate, stop=stop)

    # The student's pipeline folder: the teacher's VAE and text side, the student U-Net, an LCMScheduler.
    validate("final")
    if accelerator.is_main_process and config.lora_rank:
        save_lcm_lora(config, output_dir, accelerator.unwrap_model(student))
    elif accelerator.is_main_process:
        save_pipeline_folder(output_dir, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                             unet=accelerator.unwrap_model(student), scheduler=scheduler)
        write_sampling_defaults(output_dir, SamplingDefaults("lcm", config.sample_steps, config.guidance_scale),
                                guidance_weight_range=[config.w_min, config.w_max], teacher=config.teacher)
        logger.info("few-step pipeline saved to %s", output_dir)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return output_dir


def main(argv: list[str] | None = None) -> int:
    """`ldm-distill` / `accelerate launch distill_ldm.py`: 0 on success; a user mistake is one `error: ...` line
    and exit status 2, a non-finite loss exit status 1, Ctrl-C 130 after saving the finished step (`ldm.cli`)."""
    return run_command(distill, DistillConfig, argv, prog="ldm-distill")


if __name__ == "__main__":
    sys.exit(main())
