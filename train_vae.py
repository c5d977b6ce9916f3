"""Stage 1: train the KL autoencoder (diffusers AutoencoderKL) with the LDM paper's objective.

    accelerate launch train_vae.py --data shapes --output-dir runs/vae --preset cpu-f4 --max-steps 2000
    python train_vae.py ...                      # one process, same result as 1-process accelerate

Writes OUT/config.json, OUT/checkpoints/, OUT/samples/ (originals above, reconstructions below),
OUT/logs/ (TensorBoard), OUT/metrics.json (held-out PSNR / SSIM / LPIPS) and OUT/vae/, a stock
`AutoencoderKL.from_pretrained` folder whose `scaling_factor` is measured on training images.
"""
from __future__ import annotations

import json
import logging
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset

from autoencoder import VAE_PRESETS, AutoencoderLoss, PatchDiscriminator, build_vae, load_lpips
from autoencoder import measure_scaling_factor, psnr, ssim
from ldm import recipe
from ldm.data import open_dataset
from ldm.data.transforms import to_pil
from ldm.grid import make_grid
from ldm.cli import option, run_command, save_config
from ldm.training import (LR_SCHEDULES, CheckpointManager, StepBatchSampler, StopOnInterrupt,
                          TrainingProgress, average_gradients, check_finite, ema_weights, make_accelerator,
                          make_adamw, make_ema, make_lr_scheduler, sliced_randn, step_generator, stop_if_requested)
from ldm.training.periodic import due

logger = logging.getLogger("train_vae")

CONFIG_FILE = "train_config.json"  # the same name as train_ldm.py's
SAMPLE_IMAGES = 8  # held-out images in each reconstruction grid
VAL_IMAGES = 256  # held-out images for validation metrics, when the data allows


@dataclass
class TrainVAEConfig:
    """Train a KL autoencoder (stage 1 of latent diffusion)."""

    data: str = option("", "(required) image source: 'shapes', 'emoji', a folder, a HF save_to_disk folder")
    output_dir: str = option("", "(required) run folder: checkpoints/, logs/, samples/, metrics.json, vae/")
    preset: Optional[str] = option(None, "VAE architecture (default: cpu-f4 up to 32 px, cpu-f8 above; ldm.recipe)",
                                   choices=sorted(VAE_PRESETS))
    config: Optional[str] = option(None, "JSON file of AutoencoderKL arguments instead of a preset")
    pretrained: Optional[str] = option(None, "diffusers VAE folder (or pipeline folder) to fine-tune")
    resolution: int = option(32, "training and validation image size in pixels")
    max_steps: int = option(2000, "optimizer steps in total (a resumed run continues up to this)")
    batch_size: int = option(16, "images per process per micro-batch (16: the most PSNR per second measured)")
    lr: Optional[float] = option(None, "AdamW learning rate of VAE and discriminator (default: 2e-3 from scratch, "
                                       "1e-5 with --pretrained; ldm.recipe)")
    lr_schedule: str = option("cosine", "learning-rate schedule", choices=LR_SCHEDULES)
    warmup_steps: int = option(0, "linear learning-rate warm-up steps")
    grad_accum: int = option(1, "micro-batches per optimizer step")
    mixed_precision: str = option("no", "autocast dtype", choices=["no", "bf16", "fp16"])
    ema: bool = option(False, "keep an EMA of the VAE weights; validate, sample and save it")
    ema_decay: float = option(0.999, "EMA decay (with diffusers' warm-up ramp)")
    kl_weight: float = option(1e-6, "KL weight (LDM paper: 1e-6)")
    rec_loss: str = option("l2", "pixel reconstruction loss (l2 measured better than the LDM paper's l1 here: "
                                 "README, stage 1)", choices=["l1", "l2"])
    lpips_vgg: Optional[str] = option(None, "torchvision VGG16 state dict, for the LPIPS loss and metric")
    lpips_heads: Optional[str] = option(None, "LPIPS v0.1 linear-heads file (vgg.pth)")
    disc_start: int = option(50001, "step at which the PatchGAN loss switches on (CompVis KL configs: 50001)")
    disc_weight: float = option(0.5, "GAN weight on top of the adaptive weight; 0 turns the GAN off")
    checkpoint_every: int = option(500, "save a resumable checkpoint every N steps (0: only at the end)")
    keep_checkpoints: int = option(2, "newest checkpoints to keep")
    sample_every: int = option(500, "write a reconstruction grid every N steps (0: only at the end)")
    val_every: int = option(500, "held-out PSNR / SSIM metrics every N steps (0: only at the end)")
    val_images: Optional[int] = option(None, f"held-out images used for validation (default {VAL_IMAGES}; a folder "
                                             "without a test split holds out at most a tenth of its images)")
    scaling_images: int = option(512, "training images used to measure scaling_factor")
    num_workers: int = option(0, "DataLoader worker processes")
    resume: Optional[str] = option(None, "'latest' or a checkpoint folder to continue from")
    seed: int = option(0, "seed for initialisation, data order and noise")

    def __post_init__(self):
        if not self.data or not self.output_dir:
            raise ValueError("--data and --output-dir are required.")
        if sum(x is not None for x in (self.preset, self.config, self.pretrained)) > 1:
            raise ValueError("give at most one of --preset, --config and --pretrained.")
        if (self.lpips_vgg is None) != (self.lpips_heads is None):
            raise ValueError("LPIPS needs both --lpips-vgg and --lpips-heads.")
        for name in ("resolution", "max_steps", "batch_size", "grad_accum", "val_images", "scaling_images"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}.")
        for name in ("checkpoint_every", "sample_every", "val_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 0 (0: only at the end), "
                                 f"got {getattr(self, name)}.")
        self._choices = recipe.fill(self, recipe.stage1_rules(self))
        if self.lr <= 0:
            raise ValueError(f"--lr must be positive, got {self.lr}.")

    @property
    def chosen_defaults(self) -> list[recipe.Choice]:
        """The options ldm.recipe filled in, with why."""
        return self._choices


def main(argv: list[str] | None = None) -> int:
    """`ldm-train-vae`: 0 on success; a user mistake is one `error: ...` line and exit status 2 (`ldm.cli`)."""
    return run_command(train, TrainVAEConfig, argv, prog="ldm-train-vae")


def train(config: TrainVAEConfig) -> None:
    # --- setup
    out = Path(config.output_dir)
    checkpoints = CheckpointManager(out, keep_last=config.keep_checkpoints)
    resume_from = checkpoints.resolve(config.resume) if config.resume else None  # fails before any work
    accelerator = make_accelerator(output_dir=out, mixed_precision=config.mixed_precision,
                                   gradient_accumulation_steps=config.grad_accum, seed=config.seed,
                                   project_name="train_vae")
    rank, world, device = accelerator.process_index, accelerator.num_processes, accelerator.device
    if accelerator.is_main_process:
        save_config(config, out / CONFIG_FILE)
        for choice in config.chosen_defaults:
            logger.info("default %s", choice.line())

    # --- data: center crops, no flips, so item i is the same image whenever it is read (exact resume)
    train_set, val_set = open_splits(config.data, resolution=config.resolution, val_images=config.val_images,
                                     seed=config.seed)

    # --- model, losses, optimizers
    vae = build_vae(preset=config.preset, config_path=config.config, pretrained=config.pretrained,
                    sample_size=config.resolution).to(device).train()
    discriminator = PatchDiscriminator(in_channels=vae.config.out_channels).to(device).train()
    lpips = load_lpips(config.lpips_vgg, config.lpips_heads).to(device) if config.lpips_vgg else None
    loss_fn = AutoencoderLoss(discriminator=discriminator, lpips=lpips, reconstruction=config.rec_loss,
                              kl_weight=config.kl_weight, disc_weight=config.disc_weight,
                              disc_start=config.disc_start)
    vae_opt = make_adamw(vae.parameters(), lr=config.lr)
    disc_opt = make_adamw(discriminator.parameters(), lr=config.lr)
    # Optimizers are prepared (mixed-precision scaling); models are not wrapped in DDP because the VAE is
    # called through encode/decode and the discriminator from inside the loss: gradients are averaged by hand.
    vae_opt, disc_opt = accelerator.prepare(vae_opt, disc_opt)
    schedulers = [make_lr_scheduler(opt, name=config.lr_schedule, warmup_steps=config.warmup_steps,
                                    max_steps=config.max_steps, accelerator=accelerator)
                  for opt in (vae_opt, disc_opt)]
    # Both schedules follow the global step; the discriminator's optimizer is not stepped before disc_start
    # (step_optimizers), which PyTorch warns about at the first step although it is what we mean.
    warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before `optimizer.step\(\)`")
    accelerator.register_for_checkpointing(vae, discriminator)
    ema = make_ema(vae, accelerator=accelerator, decay=config.ema_decay) if config.ema else None

    step = checkpoints.load(accelerator, resume_from) if resume_from else 0
    accum = config.grad_accum  # the sampler counts micro-batches
    sampler = StepBatchSampler(len(train_set), batch_size=config.batch_size, start_step=step * accum,
                               end_step=config.max_steps * accum, seed=config.seed, rank=rank,
                               world_size=world)
    batches = iter(DataLoader(train_set, batch_sampler=sampler, num_workers=config.num_workers))

    # --- loop: one optimizer step of the VAE, then one of the discriminator, on the same reconstructions
    start = time.perf_counter()  # for metrics.json's elapsed_s: wall time of this process's training
    stop = StopOnInterrupt(enabled=world == 1)
    with stop, TrainingProgress(accelerator, total_steps=config.max_steps, initial_step=step,
                                global_batch_size=config.batch_size * world * accum) as progress:
        while step < config.max_steps:
            logs = {}
            for micro in range(step * accum, (step + 1) * accum):
                pixel_values = next(batches)["pixel_values"].to(device)
                logs = accumulate_gradients(vae, loss_fn, pixel_values, accelerator=accelerator, step=step,
                                            generator=step_generator(config.seed, micro),
                                            last_checkpoint=checkpoints.last_saved)
            step_optimizers([(vae, vae_opt), (discriminator, disc_opt)], accelerator)
            for scheduler in schedulers:
                scheduler.step()
            if ema is not None:
                ema.step(vae.parameters())
            step += 1
            progress.update(step, {**logs, "lr": schedulers[0].get_last_lr()[0]})

            if due(step, config.checkpoint_every, last_step=config.max_steps):
                checkpoints.save(accelerator, step)
            if accelerator.is_main_process and due(step, config.sample_every, last_step=config.max_steps):
                with ema_weights(ema, vae):
                    save_reconstruction_grid(vae, val_set, out / "samples" / f"step-{step:07d}.png")
            if accelerator.is_main_process and due(step, config.val_every, last_step=config.max_steps):
                with ema_weights(ema, vae):
                    metrics = validate(vae, val_set, lpips=lpips, batch_size=config.batch_size)
                accelerator.log({f"val/{k}": v for k, v in metrics.items()}, step=step)
                metrics["elapsed_s"] = time.perf_counter() - start
                append_metrics(out / "metrics.json", step, metrics)
            accelerator.wait_for_everyone()
            stop_if_requested(stop, checkpoints, accelerator, step=step)

    # --- save: measured scaling_factor in the config, the one place stage 2 and samplers read it
    if accelerator.is_main_process:
        with ema_weights(ema, vae):
            save_vae(vae, train_set, out / "vae", num_images=config.scaling_images,
                     batch_size=config.batch_size, seed=config.seed)
    accelerator.wait_for_everyone()
    accelerator.end_training()


def step_optimizers(pairs: list[tuple[torch.nn.Module, torch.optim.Optimizer]], accelerator) -> None:
    """For each (model, optimizer): average the gradients over processes, step, zero them.

    A model none of whose parameters got a gradient (the discriminator before disc_start) is not stepped: under
    fp16, accelerate's GradScaler refuses an optimizer it recorded no gradients for (it stopped train_vae on
    CUDA), and in fp32 the step would change nothing. Which models have gradients depends only on the step,
    so every process skips the same all-reduce.
    """
    for model, optimizer in pairs:
        if any(p.grad is not None for p in model.parameters()):
            average_gradients(model.parameters(), accelerator)
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def accumulate_gradients(vae, loss_fn: AutoencoderLoss, pixel_values: torch.Tensor, *, accelerator, step: int,
                         generator: torch.Generator, last_checkpoint: Path | None) -> dict[str, float]:
    """Forward a micro-batch (B, 3, R, R) in [-1, 1]; add generator and discriminator gradients; return logs.

    The posterior sample z = μ + σ·ε takes ε from the step's generator, drawn for the global batch and sliced,
    so the run does not depend on the number of processes or on resumes.
    """
    with accelerator.autocast():
        posterior = vae.encode(pixel_values).latent_dist
        noise = sliced_randn(tuple(posterior.mean.shape), generator=generator, rank=accelerator.process_index,
                             world_size=accelerator.num_processes, device=pixel_values.device)
        reconstructions = vae.decode(posterior.mean + posterior.std * noise).sample
        loss, logs = loss_fn.generator_loss(pixel_values, reconstructions, posterior,
                                            last_layer=vae.decoder.conv_out.weight, global_step=step)
    # Reduced over processes, so every process stops at the same step and none waits in a collective.
    check_finite(accelerator.reduce(loss.detach(), reduction="mean"), step + 1, last_checkpoint=last_checkpoint)
    accelerator.backward(loss)
    with accelerator.autocast():
        d_loss, d_logs = loss_fn.discriminator_loss(pixel_values, reconstructions, global_step=step)
    accelerator.backward(d_loss)
    return {**logs, **d_logs}


def open_splits(source: str, *, resolution: int, val_images: int | None, seed: int) -> tuple[Dataset, Dataset]:
    """(train, validation): the source's "test" split, or else its last `val_images` items held out (None: up to
    VAL_IMAGES, at most a tenth of the items, so that a small folder trains by default)."""
    train_set = open_dataset(source, resolution=resolution, split="train", seed=seed)
    if isinstance(train_set, IterableDataset):
        raise ValueError(f"{source} streams (tar shards); train_vae.py needs an indexable source "
                         "for exact resume.")
    try:
        val_set = open_dataset(source, resolution=resolution, split="test", seed=seed)
    except ValueError:  # folders have no splits
        if val_images is None:
            val_images = max(1, min(VAL_IMAGES, len(train_set) // 10))
        if len(train_set) <= val_images:
            raise ValueError(f"{source} has {len(train_set)} images, too few to hold out {val_images} "
                             "for validation; lower --val-images.") from None
        cut = len(train_set) - val_images
        logger.info("%s has no test split: holding out its last %d images for validation", source, val_images)
        return Subset(train_set, range(cut)), Subset(train_set, range(cut, len(train_set)))
    if len(train_set) == 0 or len(val_set) == 0:
        raise ValueError(f"{source} gave no usable images for training or validation.")
    return train_set, Subset(val_set, range(min(val_images or VAL_IMAGES, len(val_set))))


@torch.no_grad()
def reconstruct(vae, pixel_values: torch.Tensor) -> torch.Tensor:
    """Deterministic reconstruction through the posterior mean: (B, 3, R, R) in [-1, 1] → same shape."""
    posterior = vae.encode(pixel_values.to(vae.device, vae.dtype)).latent_dist
    return vae.decode(posterior.mean).sample.float().clamp(-1, 1)


def _batches(dataset, indices: list[int], batch_size: int):
    for start in range(0, len(indices), batch_size):
        yield torch.stack([dataset[i]["pixel_values"] for i in indices[start:start + batch_size]])


def validate(vae, val_set, *, lpips, batch_size: int) -> dict[str, float]:
    """Mean PSNR (dB), SSIM and (when `lpips` is given) LPIPS of posterior-mean reconstructions."""
    vae.eval()
    totals: dict[str, float] = {}
    for pixel_values in _batches(val_set, list(range(len(val_set))), batch_size):
        reconstructions = reconstruct(vae, pixel_values).cpu()
        scores = {"psnr": psnr(pixel_values, reconstructions), "ssim": ssim(pixel_values, reconstructions)}
        if lpips is not None:
            with torch.no_grad():
                distances = lpips(pixel_values.to(vae.device), reconstructions.to(vae.device))
                scores["lpips"] = distances.flatten().cpu()
        for name, values in scores.items():
            totals[name] = totals.get(name, 0.0) + values.double().sum().item()
    vae.train()
    return {name: total / len(val_set) for name, total in totals.items()}


def append_metrics(path: Path, step: int, metrics: dict[str, float]) -> None:
    """OUT/metrics.json: the latest held-out metrics at top level, every validation in `history`
    (entries after `step`, left by a run that was resumed from an earlier checkpoint, are dropped)."""
    history = json.loads(path.read_text())["history"] if path.is_file() else []
    history = [entry for entry in history if entry["step"] < step] + [{"step": step, **metrics}]
    path.write_text(json.dumps({"step": step, **metrics, "history": history}, indent=2) + "\n")


def save_reconstruction_grid(vae, val_set, path: Path) -> None:
    """Originals (top row) above their reconstructions (bottom row), via ldm.grid.make_grid."""
    vae.eval()
    pixel_values = next(_batches(val_set, list(range(min(SAMPLE_IMAGES, len(val_set)))), SAMPLE_IMAGES))
    reconstructions = reconstruct(vae, pixel_values).cpu()
    vae.train()
    images = [to_pil(x) for x in pixel_values] + [to_pil(x) for x in reconstructions]
    path.parent.mkdir(parents=True, exist_ok=True)
    make_grid(images, ncols=len(pixel_values)).save(path)


def save_vae(vae, train_set, folder: Path, *, num_images: int, batch_size: int, seed: int) -> float:
    """Measure scaling_factor = 1/std(z) on `num_images` training images, write it into the config, save."""
    vae.eval()
    order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(seed))
    picked = order[:num_images].tolist()
    generator = torch.Generator().manual_seed(seed)  # CPU noise: the same factor on any device
    scaling_factor = measure_scaling_factor(vae, _batches(train_set, picked, batch_size), generator=generator)
    vae.register_to_config(scaling_factor=scaling_factor)
    vae.save_pretrained(folder)
    logger.info("saved %s with scaling_factor %.5f", folder, scaling_factor)
    return scaling_factor


if __name__ == "__main__":
    sys.exit(main())
