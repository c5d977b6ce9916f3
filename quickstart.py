"""The README's main job: stage 1, stage 2 and evaluation on the built-in shapes data, resumable.

Each stage runs as its own process (the same commands a user would type), writes into its own folder under
`--output-dir`, and is skipped when its output is already there; a stage that was interrupted resumes from its
last checkpoint. Wall time per stage is kept in `timings.json`.
"""
from __future__ import annotations

import json
import logging
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ldm.cli import USER_ERROR, RunFailed, run_command, save_config
from ldm.guidance import guidance_scale_from_weight
from ldm.training.interrupt import INTERRUPTED_EXIT_STATUS, StopOnInterrupt, TrainingInterrupted

logger = logging.getLogger("quickstart")


@dataclass
class QuickstartConfig:
    """Train both stages on built-in data and evaluate the result, resuming whatever is unfinished."""

    output_dir: str = field(default="runs/quickstart", metadata={"help": "where every stage writes"})
    data: str = field(default="shapes", metadata={
        "help": "built-in data: 'shapes' (procedural, read back exactly) or 'emoji' (real artwork with CLDR names; "
                "stage 2 never sees one skin tone of each toned emoji, `emoji:heldouttones=1`)",
        "choices": ["shapes", "emoji"]})
    objects: int = field(default=1, metadata={"help": "objects per shapes image (1-3), in training and evaluation"})
    simple: bool = field(default=False, metadata={
        "help": "the simple shapes variant (one large centred object, captions name colour and shape only): "
                "the baseline notes' kind of data"})
    resolution: int | None = field(default=None, metadata={
        "help": "image side in pixels (default 32; 64 with --data emoji)"})
    vae_pairs: str = field(default="all", metadata={
        "help": "colour-shape pairs stage 1 trains on: 'all' (the VAE sees no captions, and one trained without "
                "the held-out pairs cannot reconstruct them) or 'seen' (only stage 2's pairs)",
        "choices": ["all", "seen"]})
    vae_steps: int | None = field(default=None, metadata={
        "help": "stage-1 optimisation steps (default 1500; 1200 with --simple, 800 with --data emoji)"})
    vae_batch_size: int | None = field(default=None, metadata={"help": "stage-1 batch size (default: train_vae's)"})
    # Stage 2 trains with train_ldm.py's defaults (ldm.recipe); only the data's step counts are the quickstart's.
    ldm_batch_size: int | None = field(default=None, metadata={"help": "stage-2 batch size (default: train_ldm's)"})
    ldm_steps: int | None = field(default=None, metadata={
        "help": "stage-2 optimisation steps (default 2400; 3600 with --simple)"})
    ldm_data_size: int | None = field(default=None, metadata={
        "help": "distinct training images stage 2 encodes and cycles through (default 20000; 8000 with --simple)"})
    eval_weights: str = field(default="0,1,2,4,8", metadata={"help": "guidance weights w to evaluate"})
    eval_prompts: int | None = field(default=None, metadata={
        "help": "evaluation prompts per split (default 48; 12 with --simple, which has 4 held-out prompts)"})
    eval_seeds: int | None = field(default=None, metadata={
        "help": "images per prompt and weight (default 4; 24 with --simple)"})
    eval_steps: int = field(default=20, metadata={"help": "sampler steps during evaluation"})
    seed: int = field(default=0, metadata={"help": "seed of every stage"})

    def __post_init__(self):
        if not 1 <= self.objects <= 3:
            raise ValueError(f"--objects must be 1, 2 or 3, got {self.objects}.")
        if self.simple and self.objects != 1:
            raise ValueError(f"--simple draws one object per image; --objects {self.objects} does not apply.")
        if self.data == "emoji" and (self.simple or self.objects != 1):
            raise ValueError("--simple and --objects describe the shapes data, not --data emoji.")
        for name, value in VARIANT_DEFAULTS[self.variant].items():
            if getattr(self, name) is None:  # a value the user gave wins
                setattr(self, name, value)
        for name in ("resolution", "vae_steps", "ldm_steps", "ldm_data_size", "eval_prompts", "eval_seeds",
                     "eval_steps", "vae_batch_size", "ldm_batch_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}.")

    @property
    def variant(self) -> str:
        """The key of VARIANT_DEFAULTS: 'full', 'simple' or 'emoji'."""
        return "emoji" if self.data == "emoji" else "simple" if self.simple else "full"


# What is specific to the data: step counts, stage 2's number of images and the evaluation's seeds per variant,
# each measured in timed runs on 2 cores (docs/experiments.md); everything else is the trainers' defaults
# (ldm.recipe). Full data: 1,500 stage-1 steps rather than 1,200 (29.6 -> 32.2 dB, reconstructions read right
# 89 -> 98%) doubled stage 2's held-out adherence, and 20,000 stage-2 images instead of 8,000, with a stage 1
# trained on every colour-shape pair, took it from 79% to 97%. Simple data (large centred objects): 1,200
# stage-1 steps already read 100% right, so the minutes go to stage 2 instead; it has four held-out prompts, so
# it evaluates more seeds of each. Both variants train stage 1 on every pair (a VAE that never saw green squares
# reconstructed them readably 26% of the time).
VARIANT_DEFAULTS = {
    "full": {"resolution": 32, "vae_steps": 1500, "ldm_steps": 2400, "ldm_data_size": 20000, "eval_prompts": 48,
             "eval_seeds": 4},
    "simple": {"resolution": 32, "vae_steps": 1200, "ldm_steps": 3600, "ldm_data_size": 8000, "eval_prompts": 12,
               "eval_seeds": 24},
    # Emoji: every glyph of the train split (ldm_data_size None) at 64 px, where a stage-1 step costs four times
    # one at 32 px (the first block runs at full size), so stage 1 gets 800 steps to keep the run near 25 min;
    # stage 2 trains in 8x8 latents as at 32 px (train_vae picks an f = 8 VAE above 32 px).
    "emoji": {"resolution": 64, "vae_steps": 800, "ldm_steps": 2400, "ldm_data_size": None, "eval_prompts": 48,
              "eval_seeds": 4},
}


def _given(flag: str, value) -> list[str]:
    """[flag, value] when the user gave the value, else nothing (the trainer's default applies)."""
    return [] if value is None else [flag, str(value)]


def stage_commands(cfg: QuickstartConfig, out: Path) -> list[tuple[str, Path, list[str]]]:
    """(name, folder, argv) for each stage; a stage is done when its marker file exists."""
    stage1, stage2, evaluation = out / "stage1", out / "stage2", out / "eval"
    common = ["--resolution", str(cfg.resolution), "--seed", str(cfg.seed)]
    if cfg.data == "emoji":  # stage 1 sees every tone (a codec without captions), stage 2 not the held-out ones
        data = "emoji:heldouttones=1"
        vae_data = "emoji" if cfg.vae_pairs == "all" else data
        task = ["--task", "emoji"]
    else:
        data = f"shapes:objects={cfg.objects}" + (",simple=1" if cfg.simple else "")
        vae_data = data + (",allpairs=1" if cfg.vae_pairs == "all" else "")
        task = ["--objects", str(cfg.objects), *(["--simple"] if cfg.simple else [])]
    return [
        ("stage1", stage1, ["-m", "train_vae", "--data", vae_data,
                            "--output-dir", str(stage1), "--max-steps", str(cfg.vae_steps),
                            *_given("--batch-size", cfg.vae_batch_size), *common]),
        ("stage2", stage2, ["-m", "train_ldm", "--data", data, "--vae", str(stage1 / "vae"),
                            "--output-dir", str(stage2), "--max-steps", str(cfg.ldm_steps),
                            *_given("--data-size", cfg.ldm_data_size), *_given("--batch-size", cfg.ldm_batch_size),
                            *common]),
        ("eval", evaluation, ["-m", "pipelines.evaluate", "--model", str(stage2), "--out", str(evaluation),
                              "--weights", cfg.eval_weights, "--seeds-per-prompt", str(cfg.eval_seeds),
                              "--prompts-per-split", str(cfg.eval_prompts),
                              "--steps", str(cfg.eval_steps), "--resolution", str(cfg.resolution),
                              "--vae-data", data, *task]),
    ]


_DONE_MARKERS = {"stage1": "vae/config.json", "stage2": "model_index.json", "eval": "eval.json"}


def _run_stage(name: str, folder: Path, argv: list[str], timings: dict) -> None:
    """Run one stage unless finished; resume it from its last checkpoint when one exists."""
    if (folder / _DONE_MARKERS[name]).exists():
        logger.info("%s: already finished in %s, reusing it", name, folder)
        return
    if (folder / "checkpoints" / "latest").exists():
        logger.info("%s: resuming from %s", name, folder / "checkpoints")
        argv = [*argv, "--resume", "latest"]
    logger.info("%s: %s", name, " ".join(["python", *argv]))
    start = time.perf_counter()
    # Ctrl-C reaches the stage too (one process group): wait while it saves its checkpoint instead of killing it.
    with StopOnInterrupt(message=f"waiting for {name} to save its checkpoint") as stop:
        result = subprocess.run([sys.executable, *argv], check=False)
    timings[name] = timings.get(name, 0.0) + time.perf_counter() - start
    if stop.requested or result.returncode == INTERRUPTED_EXIT_STATUS:
        raise TrainingInterrupted(f"{name} was interrupted; run the quickstart again to resume it.")
    if result.returncode == USER_ERROR:
        raise ValueError(f"{name} stopped on a bad option or path (exit {result.returncode}); see its error above.")
    if result.returncode != 0:
        raise RunFailed(f"{name} failed (exit {result.returncode}); run the quickstart again to resume it.")


def _summary(out: Path, timings: dict) -> str:
    """Where the results are, the stage times, the evaluation's best guidance weight and a command that samples
    a held-out prompt at it."""
    lines = [f"model (diffusers pipeline folder): {out / 'stage2'}",
             f"images and plot: {out / 'eval'}",
             f"metrics: {out / 'eval' / 'eval.json'}"]
    lines += [f"{name} wall time: {seconds / 60:.1f} min" for name, seconds in timings.items()]
    evaluation = json.loads((out / "eval" / "eval.json").read_text())
    best, prompts = evaluation["best"], evaluation["prompts"]
    scale = guidance_scale_from_weight(best["w"])
    lines.append(f"best guidance: w = {best['w']:g} (guidance_scale {scale:g}), adherence "
                 f"{best['held_out_adherence']:.0%} on held-out and {best['seen_adherence']:.0%} on seen prompts")
    prompt = next((p["prompt"] for p in prompts if p["split"] == "held_out"), prompts[0]["prompt"])
    lines.append(f"try: ldm-generate {shlex.quote(prompt)} --model {shlex.quote(str(out / 'stage2'))} "
                 f"--guidance-scale {scale:g} --out {shlex.quote(str(out / 'samples'))}")
    return "\n".join(lines)


def run(cfg: QuickstartConfig) -> None:
    """Run every unfinished stage in order, then print where the results are."""
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "quickstart_config.json")
    timings_path = out / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}
    for name, folder, stage_argv in stage_commands(cfg, out):
        try:
            _run_stage(name, folder, stage_argv, timings)
        finally:
            timings_path.write_text(json.dumps(timings, indent=2))
    print(_summary(out, timings))


def main(argv: list[str] | None = None) -> int:
    """`ldm-quickstart`: 0 on success; a user mistake is one `error: ...` line and exit status 2 (`ldm.cli`)."""
    return run_command(run, QuickstartConfig, argv, prog="ldm-quickstart")


if __name__ == "__main__":
    sys.exit(main())
