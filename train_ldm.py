"""Stage 2: train a text-conditioned U-Net in a frozen VAE's latent space.

    accelerate launch train_ldm.py --data shapes --vae OUT/vae --output-dir OUT2 --preset cpu-small

(plain `python train_ldm.py ...` works too). The output is a diffusers pipeline folder that stock
`StableDiffusionPipeline.from_pretrained(OUT2)` loads, plus `train_config.json`, checkpoints, TensorBoard logs
and validation grids. With `--pretrained DIR --lora-rank R` the base stays frozen, only LoRA adapters train
(`ldm.lora`), and the output is `OUT2/pytorch_lora_weights.safetensors` instead of a pipeline folder.
All diffusion maths lives in `ldm.objective`, the text conditioning in `ldm.conditioning`.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch
from accelerate.utils import set_seed
from transformers import CLIPTokenizer

from autoencoder.presets import build_vae, vae_scale_factor
from ldm.attention import ATTENTION_BACKENDS, check_attention, set_attention
from ldm.bucket_grid import grid_sizes, sample_rows
from ldm.cli import option, run_command, save_config
from ldm.data import open_dataset
from ldm.data.buckets import BucketSpec, default_spec
from ldm.encode_shards import build_latent_cache, cache_source, shard_cache_key
from ldm.grid import make_grid
from ldm.latent_cache import vae_weights_hash
from ldm.latent_shards import CACHE_DTYPES, TRAINING_CACHE_DIR, ShardedLatentCache
from ldm.lora import (DEFAULT_UNET_TARGETS, FORMATS, KOHYA_WEIGHTS_NAME, LORA_WEIGHTS_NAME,
                      TEXT_ENCODER_TARGETS, adapter_state_dict, add_lora, resolve_targets, save_lora)
from ldm import recipe
from ldm.new_tokens import (NewTokenEmbedding, add_trainable_tokens, bundle_tensors, parse_new_tokens,
                            save_sidecar, trained_vectors)
from ldm.objective import make_noise_scheduler
from ldm.stage2 import CaptionEmbedder, backward_micro_steps, micro_step_loss
from ldm.text_encoder import TEXT_ENCODER_PRESETS, build_text_encoder, load_text_encoder
from ldm.tokenizer import learn_tokenizer
from ldm.training.accelerator import average_gradients, make_accelerator
from ldm.training.batches import bucket_batches, step_generator
from ldm.training.checkpoint import CheckpointManager
from ldm.training.ema import ema_weights, make_ema
from ldm.training.guards import check_finite
from ldm.training.interrupt import StopOnInterrupt
from ldm.training.optim import LR_SCHEDULES, make_adamw, make_lr_scheduler
from ldm.training.periodic import end_of_step
from ldm.training.progress import TrainingProgress
from ldm.unet import UNET_PRESETS, build_unet
from pipelines.folder import save_pipeline_folder
from pipelines.pipeline_text_to_image import TextToImagePipeline
from pipelines.schedulers import DEFAULT_SCHEDULER, make_scheduler

logger = logging.getLogger("train_ldm")

CONFIG_FILE = "train_config.json"


@dataclass
class TrainConfig:
    """Train a text-to-image latent diffusion U-Net (stage 2) in a frozen VAE's latent space."""

    data: str = option("", "training data: 'shapes', 'emoji', an image folder, tar shards or an HF dataset "
                           "(optional with a finished --latent-cache)")
    vae: str = option("", "the stage-1 VAE folder (train_vae.py output) or a pipeline folder with vae/")
    output_dir: str = option("", "where the pipeline folder, checkpoints, logs and samples go")
    data_size: int | None = option(None, "number of items to use (procedural sources: how many to render)")
    caption_column: str = option("text", "caption column for metadata / HF datasets")
    resolution: int = option(32, "image side in pixels (latents are resolution / VAE factor)")
    # Latent cache (ldm.latent_shards): on disk, every process encoding its share.
    latent_cache: str | None = option(None, "latent cache folder: one built by `ldm-data cache` to train from "
                                            "(then --data may be left out), or where to build it; default "
                                            "OUTPUT_DIR/latent_cache")
    cache_dtype: str = option("float16", "storage of the cached posterior mean and std",
                              choices=tuple(CACHE_DTYPES))
    encode_workers: int = option(2, "DataLoader workers per process decoding images while the cache is encoded")
    # Aspect-ratio buckets (kohya's names): every batch from one bucket of about resolution² pixels.
    buckets: bool = option(False, "resize each image to the aspect-ratio bucket nearest its own instead of a "
                                  "centre square (square-only is the default)")
    min_bucket_reso: int | None = option(None, "smallest bucket side in pixels (default resolution / 2)")
    max_bucket_reso: int | None = option(None, "largest bucket side in pixels (default 2 x resolution)")
    bucket_step: int | None = option(None, "bucket sides are multiples of this (default resolution / 8, at "
                                           "least 8); latents must stay divisible by the U-Net's downsampling")
    # Text side: from scratch (tokenizer learned from the captions) unless --text-encoder is given.
    text_encoder: str | None = option(None, "pretrained CLIP text encoder (transformers/SD pipeline folder)")
    train_text_encoder: bool = option(False, "also train a pretrained --text-encoder (from scratch: always)")
    text_preset: str = option("tiny", "from-scratch text encoder size", choices=sorted(TEXT_ENCODER_PRESETS))
    tokenizer_vocab_size: int = option(1024, "from-scratch BPE vocabulary size (>= 515)")
    # U-Net: exactly one of preset / config / pretrained.
    preset: str | None = option(None, f"U-Net preset (default {recipe.UNET_PRESET})", choices=sorted(UNET_PRESETS))
    config: str | None = option(None, "U-Net config JSON (UNet2DConditionModel arguments)")
    pretrained: str | None = option(None, "fine-tune the unet/ of this pipeline folder")
    norm_num_groups: int | None = option(None, "GroupNorm groups of a new U-Net (default: the preset's or "
                                               "config's); must divide every block's channels")
    # LoRA (ldm.lora): frozen --pretrained base, only low-rank adapters train; the output is one adapter file.
    lora_rank: int | None = option(None, "train a LoRA adapter of this rank on the frozen --pretrained model "
                                         "(output OUT/pytorch_lora_weights.safetensors, not a pipeline)")
    lora_alpha: float | None = option(None, "LoRA alpha: the update is scaled by alpha / rank (default: rank)")
    lora_targets: str = option(",".join(DEFAULT_UNET_TARGETS), "U-Net modules to adapt, comma-separated: "
                               "module names or groups attn (attention projections), ff, proj, conv")
    lora_text_encoder: bool = option(False, "also adapt the text encoder (how a LoRA teaches a new word)")
    lora_format: str = option("diffusers", "adapter file layout; kohya also writes "
                              f"OUT/{KOHYA_WEIGHTS_NAME} for AUTOMATIC1111 / ComfyUI", choices=FORMATS)
    lora_new_tokens: str = option("", "new words, comma-separated, each added to the tokenizer as one token "
                                      "with a trained input embedding (pivotal tuning; ldm.new_tokens)")
    # Objective (ldm.objective).
    # Options left unset are chosen by ldm.recipe (logged one line each, saved in train_config.json).
    prediction_type: str | None = option(None, "what the U-Net predicts (default: v_prediction from scratch, the "
                                               "base's with --pretrained)", choices=("epsilon", "v_prediction"))
    beta_schedule: str | None = option(None, "noise schedule (default: DDPM linear 1e-4..0.02 from scratch, the "
                                             "base's with --pretrained)",
                                       choices=("linear", "scaled_linear", "cosine"))
    num_train_timesteps: int | None = option(None, "T, the number of diffusion steps (default: 1000, or the base's)")
    min_snr_gamma: float | None = option(None, "min-SNR-γ loss weighting (arXiv:2303.09556; default 5, 0 turns it "
                                               "off)")
    snr_floor: float | None = option(None, "lower bound on the x0-space loss weight under min-SNR, so high-noise "
                                           "steps keep weight (1: truncated SNR; default 0.1 from scratch, 0 off)")
    offset_noise: float = option(0.0, "offset-noise strength, e.g. 0.1 (Guttenberg 2023, crosslabs.org)")
    zero_terminal_snr: bool = option(False, "rescale betas to zero terminal SNR (arXiv:2305.08891)")
    cond_dropout: float = option(0.1, "probability of replacing a caption by the empty prompt (for guidance)")
    caption_word_dropout: float = option(0.0, "probability of deleting each word of a caption at each step, so "
                                              "that every word carries its own meaning (e.g. 0.15)")
    # Optimisation.
    max_steps: int = option(2000, "optimizer steps")
    batch_size: int | None = option(None, "images per process per micro-step (default 64 from scratch, 4 with "
                                          "--pretrained)")
    grad_accum: int = option(1, "micro-steps per optimizer step")
    lr: float | None = option(None, "AdamW learning rate of the U-Net and a trainable text encoder (default: 1e-3 "
                                    "from scratch with a CPU preset, 1e-4 larger, 1e-5 fine-tuning, 1e-4 LoRA)")
    text_encoder_lr: float | None = option(None, "learning rate of a trained text encoder (kohya's "
                                                 "text_encoder_lr; default: --lr)")
    lr_schedule: str = option("cosine", "learning-rate schedule after warm-up", choices=LR_SCHEDULES)
    warmup_steps: int = option(100, "linear learning-rate warm-up steps")
    weight_decay: float = option(1e-2, "AdamW weight decay")
    max_grad_norm: float = option(1.0, "gradient clipping norm")
    use_8bit_adam: bool = option(False, "bitsandbytes 8-bit AdamW (needs bitsandbytes)")
    mixed_precision: str = option("no", "autocast precision (bf16 also works on CPU)",
                                  choices=("no", "fp16", "bf16"))
    gradient_checkpointing: bool = option(False, "trade compute for memory in the U-Net")
    attention: str = option("auto", "U-Net attention kernel: auto (xformers on CUDA when installed, else "
                            "PyTorch SDPA), sdpa, xformers", choices=ATTENTION_BACKENDS)
    ema: bool | None = option(None, "keep an EMA of the trained weights (U-Net, and the text encoder when it "
                                    "trains), used for validation and the saved model (default: on, off for LoRA)")
    ema_decay: float | None = option(None, "EMA decay (default: a window of ~40%% of --max-steps, in "
                                           "[0.99, 0.9999])")
    # Bookkeeping.
    checkpoint_every: int = option(500, "save a resumable checkpoint every N steps (0: only at the end)")
    resume: str | None = option(None, "'latest' or a checkpoint folder to resume from")
    sample_every: int = option(0, "write a sample grid of --sample-prompts every N steps (0: only at the end), "
                                  "as train_vae.py's --sample-every writes its reconstruction grid")
    sample_prompts: str = option("", "prompts of the sample grids, separated by '|' (empty: no sample grids)")
    sample_guidance_scale: float = option(4.0, "guidance scale of the sample grids (w + 1)")
    sample_steps: int = option(25, "sampler steps of the sample grids")
    seed: int = option(0, "seed for initialisation, data order and every per-step random draw")

    def __post_init__(self):
        if self.pretrained and not self.vae:
            self.vae = self.pretrained  # a pipeline folder holds its VAE
        for name in ("vae", "output_dir") if self.latent_cache else ("data", "vae", "output_dir"):
            if not getattr(self, name):
                raise ValueError(f"--{name.replace('_', '-')} is required.")
        chosen = [name for name in ("preset", "config", "pretrained") if getattr(self, name)]
        if len(chosen) > 1:
            raise ValueError(f"give one of --preset, --config, --pretrained, not {', '.join(chosen)}.")
        self._choices: list[recipe.Choice] = []
        if not chosen:
            self.preset = recipe.UNET_PRESET
            self._choices.append(recipe.Choice("preset", self.preset, "measured most adherence per minute on 2 "
                                                                      "CPU cores (pass --preset for a GPU)"))
        if self.pretrained and not self.text_encoder:
            self.text_encoder = self.pretrained  # the U-Net's cross-attention expects that pipeline's encoder
        self._base = self._base_scheduler()  # {} from scratch
        self._choices += recipe.fill(self, recipe.stage2_rules(self, self._base))
        if not 0.0 <= self.cond_dropout <= 1.0:
            raise ValueError(f"--cond-dropout must be in [0, 1], got {self.cond_dropout}.")
        if self.norm_num_groups is not None and (self.norm_num_groups < 1 or self.pretrained):
            raise ValueError(f"--norm-num-groups must be at least 1, for a new U-Net (not --pretrained); got "
                             f"{self.norm_num_groups}.")
        if not 0.0 <= self.caption_word_dropout < 1.0:
            raise ValueError(f"--caption-word-dropout must be in [0, 1), got {self.caption_word_dropout}.")
        # A bad bucket option raises its one-sentence ValueError here, before any work.
        self._buckets = default_spec(self.resolution, min_reso=self.min_bucket_reso, max_reso=self.max_bucket_reso,
                                     step=self.bucket_step) if self.buckets else None
        if self.encode_workers < 0:
            raise ValueError(f"--encode-workers must be at least 0, got {self.encode_workers}.")
        for name in ("max_steps", "batch_size", "grad_accum", "resolution"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}.")
        if self.lr <= 0 or (self.text_encoder_lr is not None and self.text_encoder_lr <= 0):
            raise ValueError(f"--lr and --text-encoder-lr must be positive, got {self.lr} and "
                             f"{self.text_encoder_lr}.")
        if self.min_snr_gamma < 0:
            raise ValueError(f"--min-snr-gamma must be positive (0: off), got {self.min_snr_gamma}.")
        if self.snr_floor < 0 or (self.snr_floor > 0 and not 0 < self.snr_floor <= self.min_snr_gamma):
            raise ValueError(f"--snr-floor must be at most --min-snr-gamma {self.min_snr_gamma:g} and needs it on "
                             f"(0: off), got {self.snr_floor}.")
        if not 0 < self.ema_decay < 1:
            raise ValueError(f"--ema-decay must be in (0, 1), got {self.ema_decay}.")
        check_attention(self.attention, "cuda" if torch.cuda.is_available() else "cpu")
        self._check_lora()
        if self.use_8bit_adam and importlib.util.find_spec("bitsandbytes") is None:
            raise ValueError("--use-8bit-adam needs bitsandbytes (pip install bitsandbytes).")

    def _check_lora(self) -> None:
        if self.lora_rank is None:
            if self.lora_text_encoder or self.lora_alpha is not None or self.lora_new_tokens:
                raise ValueError("--lora-alpha, --lora-text-encoder and --lora-new-tokens need --lora-rank.")
            return
        parse_new_tokens(self.lora_new_tokens)
        if self.lora_rank < 1 or not self.pretrained:
            raise ValueError(f"--lora-rank must be at least 1 and needs --pretrained (the base to adapt), got "
                             f"{self.lora_rank}{'' if self.pretrained else ' without --pretrained'}.")
        if self.train_text_encoder:
            raise ValueError("--train-text-encoder trains every text-encoder weight; with --lora-rank use "
                             "--lora-text-encoder.")
        resolve_targets(self.lora_targets.split(","))
        encoder_file = Path(self.text_encoder or self.pretrained) / "text_encoder" / "config.json"
        if self.lora_text_encoder and encoder_file.is_file() and \
                json.loads(encoder_file.read_text()).get("num_hidden_layers") == 0:
            raise ValueError("--lora-text-encoder: this text encoder has no transformer layers to adapt (preset "
                             "'embeddings'); each word piece reaches the U-Net's cross-attention as it is, so "
                             "the U-Net adapter alone learns new words.")
        base = self._base
        for name in ("prediction_type", "beta_schedule", "num_train_timesteps"):
            if name in base and base[name] != getattr(self, name):  # an adapter must learn the base's objective
                raise ValueError(f"the base {self.pretrained} was trained with {name} {base[name]}; pass "
                                 f"--{name.replace('_', '-')} {base[name]} (got {getattr(self, name)}).")

    def _base_scheduler(self) -> dict:
        """The --pretrained model's scheduler config ({} from scratch or when it has none)."""
        path = Path(self.pretrained) / "scheduler" / "scheduler_config.json" if self.pretrained else None
        if path is None or not path.is_file():
            return {}
        try:
            return json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path} is not valid JSON ({err}).") from None

    @property
    def chosen_defaults(self) -> list[recipe.Choice]:
        """The options ldm.recipe filled in, with why."""
        return self._choices

    @property
    def bucket_spec(self) -> BucketSpec | None:
        """The aspect-ratio buckets of --buckets, None for square crops."""
        return self._buckets

    @property
    def prompts(self) -> list[str]:
        return [p.strip() for p in self.sample_prompts.split("|") if p.strip()]


def load_text_side(config: TrainConfig, captions: Callable[[], Iterable[str]], output_dir: Path, accelerator):
    """(text_encoder, tokenizer, trainable): pretrained from --text-encoder, or learned from the captions."""
    if config.text_encoder:
        text_encoder, tokenizer = load_text_encoder(config.text_encoder)
        trainable = config.train_text_encoder
    else:
        tokenizer_dir = output_dir / "tokenizer"
        with accelerator.main_process_first():  # the main process learns it, the others read it
            if accelerator.is_main_process and not config.resume:
                learn_tokenizer(captions(), captions(), out_dir=tokenizer_dir, vocab_size=config.tokenizer_vocab_size)
            tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir))
        # Re-seed: encoding the data (only without a finished cache) draws from the global RNG, and every
        # process must start from the same weights.
        set_seed(config.seed)
        text_encoder = build_text_encoder(tokenizer=tokenizer, preset=config.text_preset)
        trainable = True
    text_encoder.requires_grad_(trainable)
    text_encoder.train(trainable)
    return text_encoder, tokenizer, trainable


def open_latent_cache(config: TrainConfig, vae, output_dir: Path, accelerator) -> ShardedLatentCache:
    """The latent cache of `config`: built (or resumed, or reused) from --data into --latent-cache or
    OUTPUT_DIR/latent_cache; without --data, the finished --latent-cache as it is, checked against --vae."""
    cache_dir = Path(config.latent_cache) if config.latent_cache else output_dir / TRAINING_CACHE_DIR
    if not config.data:
        cache = ShardedLatentCache(cache_dir)
        if cache.key["vae"] != vae_weights_hash(vae):
            raise ValueError(f"{cache_dir} was encoded with another VAE than --vae {config.vae}; rebuild it "
                             f"with `ldm-data cache ... --vae {config.vae}`.")
        return cache
    spec = config.bucket_spec
    dataset = open_dataset(config.data, resolution=config.resolution, crop="center", buckets=spec,
                           caption_column=config.caption_column, size=config.data_size)
    key = shard_cache_key(source=cache_source(config.data, size=config.data_size,
                                              caption_column=config.caption_column),
                          resolution=config.resolution, vae=vae, dtype=config.cache_dtype,
                          buckets=spec.key if spec else "")
    return build_latent_cache(vae, dataset, cache_dir=cache_dir, key=key, rank=accelerator.process_index,
                              world_size=accelerator.num_processes, barrier=accelerator.wait_for_everyone,
                              num_workers=config.encode_workers, device=accelerator.device)


def make_optimizer(parameters: list, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW, or bitsandbytes' 8-bit AdamW (optimizer state in 8 bits: ~4x less memory); `parameters` are
    tensors or param groups."""
    if not config.use_8bit_adam:
        return make_adamw(parameters, lr=config.lr, weight_decay=config.weight_decay)
    import bitsandbytes as bnb  # optional dependency; TrainConfig checked that it is installed

    return bnb.optim.AdamW8bit(parameters, lr=config.lr, weight_decay=config.weight_decay)


@torch.no_grad()
def sample_grid(*, vae, text_encoder, tokenizer, unet, scheduler, config: TrainConfig, path: Path,
                sizes: list[tuple[int, int]] | None = None):
    """Sample `config.prompts` (--sample-prompts) with guidance into one captioned image grid saved at `path`;
    with `sizes` ((width, height) of the most-used buckets, `ldm.bucket_grid`), one row per size."""
    pipe = TextToImagePipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                               scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    options = {"num_inference_steps": config.sample_steps, "guidance_scale": config.sample_guidance_scale}
    if sizes:
        images, captions = sample_rows(pipe, config.prompts, sizes, seed=config.seed, **options)
        grid = make_grid(images, captions=captions, ncols=len(config.prompts))
    else:
        generator = torch.Generator().manual_seed(config.seed)  # the same noise at every validation
        images = pipe(config.prompts, generator=generator, **options).images
        grid = make_grid(images, captions=config.prompts)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    logger.info("validation grid written to %s", path)
    return grid


def attach_adapters(config: TrainConfig, *, unet, text_encoder, tokenizer) -> bool:
    """Freeze the base and add LoRA adapters (`ldm.lora.add_lora`) and the new tokens' vectors
    (`ldm.new_tokens`); return whether anything of the text encoder trains."""
    add_lora(unet, rank=config.lora_rank, alpha=config.lora_alpha,
             targets=resolve_targets(config.lora_targets.split(",")))
    if config.lora_text_encoder:
        add_lora(text_encoder, rank=config.lora_rank, alpha=config.lora_alpha, targets=TEXT_ENCODER_TARGETS)
    words = parse_new_tokens(config.lora_new_tokens)
    if words:
        add_trainable_tokens(tokenizer, text_encoder, words)
    trains = config.lora_text_encoder or bool(words)
    text_encoder.train(trains)
    return trains


def save_adapters(config: TrainConfig, output_dir: Path, *, unet, text_encoder, tokenizer) -> None:
    """OUT/pytorch_lora_weights.safetensors (diffusers' format), and the kohya layout when asked."""
    models = {"unet": unet, "text_encoder": text_encoder if config.lora_text_encoder else None}
    state_dict, metadata = adapter_state_dict(models)
    embedding = text_encoder.get_input_embeddings()
    vectors = trained_vectors(embedding, tokenizer) if isinstance(embedding, NewTokenEmbedding) else {}
    save_lora(output_dir / LORA_WEIGHTS_NAME, state_dict, metadata)
    if vectors:  # stock load_lora_weights rejects non-LoRA keys: diffusers' pivotal-tuning sidecar file
        logger.info("new-token vectors (%s) saved to %s", ", ".join(vectors),
                    save_sidecar(output_dir / LORA_WEIGHTS_NAME, vectors))
    if config.lora_format == "kohya":
        save_lora(output_dir / KOHYA_WEIGHTS_NAME, state_dict, metadata, lora_format="kohya",
                  extra=bundle_tensors(vectors))
    logger.info("LoRA adapter (%d tensors) saved to %s", len(state_dict), output_dir / LORA_WEIGHTS_NAME)


def train(config: TrainConfig) -> Path:
    """Run stage 2 from `config`; return the output pipeline folder."""
    output_dir = Path(config.output_dir)
    checkpoints = CheckpointManager(output_dir)
    resume_from = checkpoints.resolve(config.resume) if config.resume else None  # fails before any work
    accelerator = make_accelerator(output_dir=output_dir, mixed_precision=config.mixed_precision,
                                   seed=config.seed, project_name="train_ldm")
    if accelerator.is_main_process:
        save_config(config, output_dir / CONFIG_FILE)
        for choice in config.chosen_defaults:
            logger.info("default %s", choice.line())

    # Frozen VAE → on-disk latent cache (every process encodes its share), or one built by `ldm-data cache`.
    vae = build_vae(pretrained=config.vae).to(accelerator.device).requires_grad_(False).eval()
    cache = open_latent_cache(config, vae, output_dir, accelerator)
    resolution = int(cache.key["resolution"])

    # Text encoder, U-Net and noise schedule.
    text_encoder, tokenizer, train_text = load_text_side(config, cache.iter_captions, output_dir, accelerator)
    text_encoder.to(accelerator.device)
    vae_factor = vae_scale_factor(vae)
    sample_sizes = grid_sizes(cache.bucket_sizes, vae_factor=vae_factor) if cache.key["buckets"] else None
    set_seed(config.seed + 1)  # the same U-Net initialisation whatever ran before
    unet = build_unet(preset=config.preset, config_path=config.config, pretrained=config.pretrained,
                      cross_attention_dim=text_encoder.config.hidden_size,
                      sample_size=resolution // vae_factor, in_channels=vae.config.latent_channels,
                      norm_num_groups=config.norm_num_groups)
    logger.info("attention: %s", set_attention(unet, config.attention, accelerator.device))
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        if train_text:
            text_encoder.gradient_checkpointing_enable()
    noise_scheduler = make_noise_scheduler(beta_schedule=config.beta_schedule,
                                           prediction_type=config.prediction_type,
                                           zero_terminal_snr=config.zero_terminal_snr,
                                           num_train_timesteps=config.num_train_timesteps)
    sampler = make_scheduler(DEFAULT_SCHEDULER, noise_scheduler.config)  # same betas and prediction_type
    if config.lora_rank:
        train_text = attach_adapters(config, unet=unet, text_encoder=text_encoder, tokenizer=tokenizer)
    embedder = CaptionEmbedder(text_encoder, tokenizer, trainable=train_text, captions=cache.iter_captions())

    # Optimizer, EMA, checkpoints. The text encoder stays outside DDP (it runs twice per step: captions and
    # the null prompt), so its gradients are averaged by hand.
    unet_parameters = [p for p in unet.parameters() if p.requires_grad]  # under LoRA: the adapters only
    text_parameters = [p for p in text_encoder.parameters() if p.requires_grad] if train_text else []
    parameters = unet_parameters + text_parameters
    optimizer = make_optimizer([{"params": unet_parameters}] + ([{"params": text_parameters, "lr": config.text_encoder_lr
                                                                  or config.lr}] if text_parameters else []), config)
    lr_scheduler = make_lr_scheduler(optimizer, name=config.lr_schedule, warmup_steps=config.warmup_steps,
                                     max_steps=config.max_steps, accelerator=accelerator)
    unet, optimizer = accelerator.prepare(unet, optimizer)
    if train_text:
        accelerator.register_for_checkpointing(text_encoder)
    # The EMA covers every trained weight: sampling must pair the averaged U-Net with the averaged text encoder
    # it was trained against, not with the encoder's last step.
    trained = torch.nn.ModuleList([accelerator.unwrap_model(unet)] + ([text_encoder] if train_text else []))
    if config.lora_rank:
        trained = torch.nn.ParameterList(parameters)  # average the adapters only: the base does not move
    ema = make_ema(trained, accelerator=accelerator, decay=config.ema_decay) if config.ema else None
    start = checkpoints.load(accelerator, resume_from) if resume_from else 0

    def validate(name: str) -> None:
        if config.prompts and accelerator.is_main_process:
            with ema_weights(ema, trained):
                model = accelerator.unwrap_model(unet)
                model.eval(), text_encoder.eval()
                sample_grid(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=model,
                            scheduler=sampler, config=config, path=output_dir / "samples" / f"{name}.png",
                            sizes=sample_sizes)
                model.train(), text_encoder.train(train_text)
        accelerator.wait_for_everyone()

    max_words = cache.max_words  # columns of the word-dropout draws: fixed for the run
    batches = bucket_batches(cache, unet=accelerator.unwrap_model(unet), vae_factor=vae_factor, seed=config.seed,
                             global_batch_size=config.batch_size * accelerator.num_processes)

    def loss_of(micro_step: int) -> torch.Tensor:
        indices = batches.indices(micro_step)
        return micro_step_loss(unet=unet, embedder=embedder, cache=cache, noise_scheduler=noise_scheduler,
                               indices=indices, generator=step_generator(config.seed, micro_step),
                               rank=accelerator.process_index, world_size=accelerator.num_processes,
                               device=accelerator.device, scaling_factor=vae.config.scaling_factor,
                               cond_dropout=config.cond_dropout, caption_word_dropout=config.caption_word_dropout,
                               max_words=max_words, offset_noise=config.offset_noise,
                               min_snr_gamma=config.min_snr_gamma or None, snr_floor=config.snr_floor or None)

    # Training loop. Closing the progress bar also on errors puts an error message on a line of its own.
    global_batch = config.batch_size * accelerator.num_processes * config.grad_accum
    stop = StopOnInterrupt(enabled=accelerator.num_processes == 1)
    with stop, contextlib.closing(TrainingProgress(accelerator, total_steps=config.max_steps, initial_step=start,
                                                   global_batch_size=global_batch)) as progress:
        for step in range(start, config.max_steps):
            loss = backward_micro_steps(step, unet=unet, accelerator=accelerator, grad_accum=config.grad_accum,
                                        loss_of=loss_of)
            check_finite(loss, step + 1, last_checkpoint=checkpoints.last_saved)
            if train_text:
                average_gradients(text_encoder.parameters(), accelerator)
            accelerator.clip_grad_norm_(parameters, config.max_grad_norm)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.step(trained.parameters())
            progress.update(step + 1, {"loss": loss.item(), "lr": lr_scheduler.get_last_lr()[0]})
            end_of_step(step + 1, max_steps=config.max_steps, checkpoint_every=config.checkpoint_every,
                        sample_every=config.sample_every, checkpoints=checkpoints, accelerator=accelerator,
                        sample=validate, stop=stop)

    # The pipeline folder (EMA weights when on) and a last validation grid.
    validate("final")
    if accelerator.is_main_process:
        with ema_weights(ema, trained):
            if config.lora_rank:
                save_adapters(config, output_dir, unet=accelerator.unwrap_model(unet),
                              text_encoder=text_encoder, tokenizer=tokenizer)
            else:
                save_pipeline_folder(output_dir, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                     unet=accelerator.unwrap_model(unet), scheduler=sampler)
                logger.info("pipeline saved to %s", output_dir)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return output_dir


def main(argv: list[str] | None = None) -> int:
    """`ldm-train` / `accelerate launch train_ldm.py`: 0 on success; a user mistake is one `error: ...` line and
    exit status 2, a non-finite loss exit status 1 (`ldm.cli`)."""
    return run_command(train, TrainConfig, argv, prog="ldm-train")


if __name__ == "__main__":
    sys.exit(main())
