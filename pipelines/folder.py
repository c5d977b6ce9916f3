"""Pipeline folders on disk, both ways: write a Stable-Diffusion-format folder that stock
`diffusers.DiffusionPipeline.from_pretrained` loads, and load any SD-1.x/2.x folder into
`TextToImagePipeline`.

Layout (what diffusers writes): model_index.json, vae/, text_encoder/, tokenizer/, unet/, scheduler/.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from diffusers.utils import logging as diffusers_logging

from pipelines.pipeline_text_to_image import TextToImagePipeline

logger = logging.getLogger(__name__)

COMPONENTS = ("vae", "text_encoder", "tokenizer", "unet", "scheduler")
WEIGHTED = ("vae", "text_encoder", "unet")  # components whose folders must hold a weights file
WEIGHT_SUFFIXES = (".safetensors", ".bin")


def save_pipeline_folder(out_dir: str | Path, *, vae, text_encoder, tokenizer, unet, scheduler) -> Path:
    """Write a diffusers pipeline folder with safetensors weights; return its path.

    model_index.json names `StableDiffusionPipeline` with null safety_checker/feature_extractor, so stock
    diffusers (and tools built on it) load it as-is; `TextToImagePipeline.from_pretrained` loads it too.
    The tokenizer folder also gets `vocab.json` + `merges.txt`, which transformers 5 no longer writes but
    transformers 4 and other CLIP readers need.
    """
    out_dir = Path(out_dir)
    pipe = TextToImagePipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=sampling_scheduler(scheduler),
    )
    pipe.save_pretrained(out_dir, safe_serialization=True)
    _write_bpe_files(tokenizer, out_dir / "tokenizer")
    index_path = out_dir / "model_index.json"
    index = json.loads(index_path.read_text())
    index.update(
        {
            "_class_name": "StableDiffusionPipeline",
            "safety_checker": [None, None],
            "feature_extractor": [None, None],
            "requires_safety_checker": False,
        }
    )
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return out_dir


def sampling_scheduler(scheduler):
    """A copy of `scheduler` with the settings stock StableDiffusionPipeline would force at load time.

    Stock rewrites `steps_offset` to 1 and `clip_sample` to False (clipping x0 to [-1, 1] is wrong for
    latents); writing them ourselves means stock and `TextToImagePipeline` sample a saved folder identically.
    """
    overrides = {
        key: value for key, value in (("steps_offset", 1), ("clip_sample", False)) if key in scheduler.config
    }
    return type(scheduler).from_config(scheduler.config, **overrides)


def _write_bpe_files(tokenizer, folder: Path) -> None:
    """Write CLIP's `vocab.json` + `merges.txt` from the tokenizer's BPE model (no-op if already there)."""
    if (folder / "vocab.json").exists() and (folder / "merges.txt").exists():
        return
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        backend.model.save(str(folder))  # a `tokenizers` BPE model writes exactly these two files
    elif hasattr(tokenizer, "save_vocabulary"):
        tokenizer.save_vocabulary(str(folder))
    if not ((folder / "vocab.json").exists() and (folder / "merges.txt").exists()):
        logger.warning(
            "could not write vocab.json/merges.txt for %s; only transformers 5 will read it", folder
        )


def check_pipeline_folder(path: str | Path) -> Path:
    """Raise a one-sentence `FileNotFoundError` / `ValueError` unless `path` is a loadable pipeline folder."""
    path = Path(path)
    if not (path / "model_index.json").is_file():
        inside = sorted(p.parent for p in path.glob("*/model_index.json")) if path.is_dir() else []
        hint = f"; did you mean {', '.join(map(str, inside))}?" if inside else "."
        raise FileNotFoundError(f"{path} is not a pipeline folder (no model_index.json){hint}")
    for name in COMPONENTS:
        if not (path / name).is_dir():
            raise FileNotFoundError(f"pipeline folder {path} is missing its {name}/ component.")
    for name in WEIGHTED:
        weights = [p for p in sorted((path / name).iterdir()) if p.name.endswith(WEIGHT_SUFFIXES)]
        if not weights:
            raise FileNotFoundError(f"pipeline folder {path} has no weights file in {name}/.")
        for weight_file in weights:
            _check_weights_readable(weight_file)
    return path


def _check_weights_readable(weight_file: Path) -> None:
    """Open a weights file without unpickling anything; one-sentence ValueError if it is unreadable."""
    try:
        if weight_file.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(weight_file), framework="pt") as handle:
                next(iter(handle.keys()), None)
        else:
            torch.load(weight_file, map_location="meta", weights_only=True)
    except Exception as error:  # safetensors and torch raise several types for a damaged file
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(f"unreadable weights file {weight_file}: {reason}") from None


def load_pipeline(
    path: str | Path, *, device: str | torch.device | None = None, dtype: torch.dtype | None = None
) -> TextToImagePipeline:
    """Load a diffusers SD-1.x/2.x folder (ours or stock; unused components ignored) on `device`/`dtype`."""
    path = check_pipeline_folder(path)
    try:
        # Cast after loading: the load-time keyword is torch_dtype or dtype depending on the diffusers release.
        pipe = TextToImagePipeline.from_pretrained(str(path))
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(f"could not load the pipeline in {path}: {reason}") from None
    if dtype is None:
        return pipe.to(device=device)
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # a cast warns per model about fp32-only modules, even with none
    try:
        return pipe.to(device=device, dtype=dtype)
    finally:
        diffusers_logging.set_verbosity(verbosity)
