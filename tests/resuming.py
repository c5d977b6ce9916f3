"""A run folder as a run killed after one of its checkpoints would have left it, to resume and compare.

Resuming a run that was stopped part-way must continue it exactly. A shorter run (`--max-steps N`) is not a
stopped longer one: the learning-rate schedule (cosine by default) and the EMA decay depend on --max-steps.
So the exact-resume tests train straight through, cut a copy of that run back to a middle checkpoint, resume
the copy with the same options, and compare the final weights bit for bit.
"""
import shutil
from pathlib import Path

# What a finished run writes besides its checkpoints: the resumed copy must write these again.
OUTPUTS = ("unet", "text_encoder", "vae", "scheduler", "model_index.json", "pytorch_lora_weights.safetensors",
           "pytorch_lora_weights_kohya.safetensors", "pytorch_lora_weights_emb.safetensors", "samples")


def cut_back_to(run: Path, step: int, copy: Path) -> Path:
    """Copy `run` to `copy` keeping only checkpoints up to `step`, with `latest` naming step-`step` and the
    run's outputs deleted; return `copy`. The run must have kept that checkpoint."""
    shutil.copytree(run, copy)
    checkpoints = copy / "checkpoints"
    if not (checkpoints / f"step-{step}").is_dir():
        raise FileNotFoundError(f"{run} kept no step-{step} checkpoint")
    for folder in checkpoints.glob("step-*"):
        if int(folder.name.split("-")[1]) > step:
            shutil.rmtree(folder)
    (checkpoints / "latest").write_text(f"step-{step}\n")
    for name in OUTPUTS:
        path = copy / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    return copy
