"""A run folder as a run killed after one of its checkpoints would have left it, to resume and compare.

Resuming a run that was stopped part-way must continue it exactly. A shorter run (`--max-steps N`) is not a
stopped longer one: the learning-rate schedule (cosine by default) and the EMA decay depend on --max-steps.
So the exact-resume tests train straight through, cut a copy of that run back to a middle checkpoint, resume
the copy with the same options, and compare the final weights bit for bit. A command whose schedule does not
depend on --max-steps (the distiller's constant rate) can instead be stopped by a shorter run and resumed
(`straight_and_resumed`).
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


def straight_and_resumed(main, args_for, tmp_path: Path, *, steps: int = 4) -> tuple[Path, Path]:
    """Run `main(args_for(out, *extra))` for `steps` steps straight into tmp_path/straight, and for `steps // 2`
    then `--resume latest` up to `steps` into tmp_path/split, checkpointing every `steps // 2`; each run must
    exit 0. Returns (straight, split). Only for commands whose schedule does not depend on --max-steps."""
    every = ("--checkpoint-every", str(steps // 2))
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main(args_for(straight, "--max-steps", str(steps), *every)) == 0
    assert main(args_for(split, "--max-steps", str(steps // 2), *every)) == 0
    assert main(args_for(split, "--max-steps", str(steps), "--resume", "latest", *every)) == 0
    return straight, split
