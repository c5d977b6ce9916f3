"""LoRA adapters on pipelines: `--lora PATH[:SCALE]` for ldm-generate / ldm-eval, and `ldm-lora fuse`.

    ldm-lora fuse --model BASE --lora runs/lora/colour/pytorch_lora_weights.safetensors:0.8 --out FUSED

`fuse` writes a full pipeline folder whose weights are `W + Σ scale · (alpha / r) · B A` (`ldm.lora.fuse_loras`),
so it samples like the base with the adapters loaded at those scales, with no LoRA code at load time. New words an
adapter brings (`ldm.new_tokens`) are added to the tokenizer and text encoder, on loading and in the fused folder.
"""
from __future__ import annotations

import functools
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ldm.lora import LORA_WEIGHTS_NAME, file_sha256, fuse_loras, load_loras, parse_lora_spec
from ldm.cli import run_subcommands
from ldm.new_tokens import load_vectors, read_vectors
from pipelines.folder import load_pipeline, save_pipeline_folder

logger = logging.getLogger("ldm-lora")

LORA_HELP = ("LoRA adapter file (or a training output folder) with an optional scale, PATH[:SCALE] (default 1); "
             "repeat for several adapters at once")
FUSE_RECORD = "lora_fuse.json"


def lora_specs(values: Sequence[str]) -> list[tuple[str, float]]:
    """`--lora` values → [(file, scale), ...]; a folder stands for its pytorch_lora_weights.safetensors.
    Raises a one-sentence ValueError for a bad scale or a missing file."""
    specs = []
    for value in values:
        path, scale = parse_lora_spec(value)
        if Path(path).is_dir():
            path = str(Path(path) / LORA_WEIGHTS_NAME)
        if not Path(path).is_file():
            raise ValueError(f"--lora {value!r}: no such LoRA file {path}.")
        specs.append((path, scale))
    return specs


def add_new_tokens(pipe, specs: Sequence[tuple[str, float]]) -> None:
    """Give `pipe`'s tokenizer and text encoder the new words each adapter brings (`ldm.new_tokens`: bundled in
    a kohya file or in the `_emb` file beside a diffusers one); their vectors do not scale with the adapter."""
    for path, _ in specs:
        vectors = read_vectors(path)
        load_vectors(pipe.tokenizer, pipe.text_encoder, vectors, source=path)
        if vectors:
            logger.info("LoRA %s adds the tokens %s", path, ", ".join(vectors))


def apply_loras(pipe, specs: Sequence[tuple[str, float]]) -> list[dict]:
    """Load the adapters into `pipe`'s U-Net and text encoder, all active at their scales, with the new words
    they bring; return one record `{"path", "sha256", "scale"}` each (for manifests and PNG metadata)."""
    if not specs:
        return []
    records = load_loras({"unet": pipe.unet, "text_encoder": pipe.text_encoder}, specs)
    add_new_tokens(pipe, specs)
    for record in records:
        logger.info("LoRA %s at scale %g (sha256 %s…)", record["path"], record["scale"], record["sha256"][:12])
    return records


@functools.lru_cache(maxsize=64)
def _cached_sha256(path: str) -> str:
    return file_sha256(path)


def lora_records(values: Sequence[str]) -> list[dict]:
    """The records of `--lora` values without loading anything (sha256 computed once per file)."""
    return [{"path": path, "sha256": _cached_sha256(path), "scale": scale} for path, scale in lora_specs(values)]


def fuse_into_folder(*, model: str | Path, specs: Sequence[tuple[str, float]], out: str | Path) -> Path:
    """Write the pipeline `model` with the adapters `specs` fused into its weights as a folder at `out`."""
    pipe = load_pipeline(model)
    records = fuse_loras({"unet": pipe.unet, "text_encoder": pipe.text_encoder}, specs)
    add_new_tokens(pipe, specs)
    out = save_pipeline_folder(out, vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer,
                               unet=pipe.unet, scheduler=pipe.scheduler)
    (out / FUSE_RECORD).write_text(json.dumps({"base": str(model), "loras": records}, indent=2) + "\n")
    return out


@dataclass
class FuseConfig:
    """Fuse LoRA adapters into a full pipeline folder."""

    model: str = field(default="", metadata={"help": "the base pipeline folder the adapters were trained on"})
    lora: tuple[str, ...] = field(default=(), metadata={"help": LORA_HELP})
    out: str = field(default="", metadata={"help": "the new pipeline folder"})

    def __post_init__(self):
        if not self.model or not self.out or not self.lora:
            raise ValueError("ldm-lora fuse needs --model, --out and at least one --lora.")
        if Path(self.out).resolve() == Path(self.model).resolve():
            raise ValueError("--out must differ from --model: fusing never overwrites the base.")


def fuse(config: FuseConfig) -> Path:
    """`ldm-lora fuse`: write the fused folder and say where."""
    out = fuse_into_folder(model=config.model, specs=lora_specs(config.lora), out=config.out)
    print(f"wrote {out}")
    return out


def main(argv: list[str] | None = None) -> int:
    """`ldm-lora fuse ...`: 0 on success, 2 with one `error: ...` line for a user mistake (`ldm.cli`)."""
    return run_subcommands("ldm-lora", {"fuse": (FuseConfig, fuse)}, argv, description="LoRA adapter tools.")


if __name__ == "__main__":
    sys.exit(main())
