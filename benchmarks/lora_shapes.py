"""LoRA against a full fine-tune, teaching a trained shapes model a colour and a shape it never saw.

    python benchmarks/lora_shapes.py --base /work/runs/quickstart/stage2 --out /work/runs/lora/bench

Trains, from the same base and on the same data for the same steps: a LoRA (U-Net attention + text encoder,
since "pink" is a word the base's tokenizer never learned) and a full fine-tune (every U-Net and text-encoder
weight) on `shapes:objects=1,novelcolour=1` (pink on circles and squares only), and a second LoRA on
`novelshape=1` (diamonds in red, green and blue only). Then it samples and reads back (`ldm.eval.attributes`):
- adherence on the trained pairs (pink circle/square) and on pairs never trained (pink triangle/cross);
- retention: adherence on the base's own evaluation prompts (seen and held-out pairs), against the base;
- both adapters at once on "pink diamond" prompts, a pair neither adapter saw;
and prints a table with trainable parameters, file size, seconds per step and peak memory of each training.
A first row, "vae ceiling", reads the data's own images of each novel set after the base's VAE has encoded
and decoded them: a stage-2 model cannot draw what its decoder cannot. Everything goes to OUT (results.json,
table.md, figure.png); `--reuse` skips trainings already done.
`--new-tokens pink` gives the colour LoRA the word as a new token with a trained vector (`--lora-new-tokens`);
`--models` trains and evaluates only the models named (the trainings they need).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from ldm.data import shapes
from ldm.eval import metrics
from ldm.eval.attributes import read_scene
from ldm.grid import make_grid
from ldm.guidance import guidance_scale_from_weight
from ldm.lora import LORA_WEIGHTS_NAME
from ldm.new_tokens import sidecar_path
from pipelines.evaluate import build_prompt_set, sample_prompts, sample_seeds
from pipelines.folder import load_pipeline
from pipelines.lora import apply_loras
from pipelines.schedulers import make_scheduler

REPO = Path(__file__).resolve().parents[1]
DATA = {"colour": "shapes:objects=1,novelcolour=1", "shape": "shapes:objects=1,novelshape=1"}


MODELS = ("base", "lora_colour", "full_colour", "lora_shape", "lora_colour+shape")
# Which novel draw and split each novel prompt set shows (for the VAE's ceiling row).
NOVEL_SETS = {"colour_trained": ("colour", "test"), "colour_unseen": ("colour", "heldout"),
              "shape_trained": ("shape", "test"), "shape_unseen": ("shape", "heldout"),
              "pink_diamond": ("both", "test")}
OBJECTIVE = ("prediction_type", "beta_schedule", "num_train_timesteps", "min_snr_gamma", "snr_floor",
             "offset_noise", "zero_terminal_snr")


def objective_flags(base: str) -> list[str]:
    """The base's training objective as train_ldm.py flags (from its train_config.json), so that the adapter
    and the fine-tune learn what the base learned."""
    path = Path(base) / "train_config.json"
    saved = json.loads(path.read_text()) if path.is_file() else {}
    flags = []
    for name in OBJECTIVE:
        value = saved.get(name)
        if value is None or value is False:
            continue
        flags += [f"--{name.replace('_', '-')}"] + ([] if value is True else [str(value)])
    return flags


def text_encoder_layers(base: str) -> int:
    return json.loads((Path(base) / "text_encoder" / "config.json").read_text())["num_hidden_layers"]


def data_source(kind: str, share: int) -> str:
    """The training source: the novel concept, mixed with the base's own scenes below share = 100 percent."""
    return DATA[kind] + (f",novelshare={share}" if share < 100 else "")


def train(name: str, *, base: str, out: Path, data: str, args, extra: list[str]) -> dict:
    """Run train_ldm.py in a child process; return its wall time, seconds per step and peak RSS."""
    folder = out / name
    done = folder / (LORA_WEIGHTS_NAME if "--lora-rank" in extra else "model_index.json")
    if args.reuse and done.is_file() and (folder / "timing.json").is_file():
        return json.loads((folder / "timing.json").read_text())
    command = [sys.executable, str(REPO / "train_ldm.py"), "--pretrained", base, "--data", data,
               "--data-size", str(args.images), "--output-dir", str(folder), "--max-steps", str(args.steps),
               "--batch-size", str(args.batch_size), "--warmup-steps", "20", "--checkpoint-every", "0",
               "--sample-prompts", "", "--seed", "0", *extra]
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=open(out / f"{name}.log", "w"))
    _, status, usage = os.wait4(child.pid, 0)  # this child's own peak memory, not the benchmark's
    wall = time.perf_counter() - started
    if status != 0:
        raise SystemExit(f"{name}: train_ldm.py failed (see {out / f'{name}.log'})")
    loop = _loop_seconds((out / f"{name}.log").read_text())
    timing = {"wall_s": round(wall, 1), "loop_s": loop, "s_per_step": round(loop / args.steps, 3),
              "peak_rss_mb": round(usage.ru_maxrss / 1024), "command": " ".join(command)}
    (folder / "timing.json").write_text(json.dumps(timing, indent=1))
    return timing


def _loop_seconds(log: str) -> float:
    """The training loop's own time: the elapsed field of the last progress update (a terminal bar's
    "[mm:ss<", or the plain line's "elapsed mm:ss" when the log is a file), which leaves out start-up, data
    encoding and saving."""
    stamps = re.findall(r"train:[^\[\n\r]*(?:\[|elapsed )(\d+(?::\d+)+)[<,]", log)  # not the save bars
    if not stamps:
        return float("nan")
    seconds = 0
    for part in stamps[-1].split(":"):
        seconds = 60 * seconds + int(part)
    return float(seconds)


def novel_prompts(novel: str, split: str, count: int, tokenizer) -> list[tuple[str, shapes.Scene]]:
    """Up to `count` distinct prompts of the novel concept's `split` that name colour and shape only ("an image
    of a pink circle", or "a pink diamond" where that is too long), with the scene they state: size, position
    and background None, unchecked. Full canonical prompts do not fit: "pink" is 4 pieces of the quickstart's
    tokenizer and "diamond" 7, and its model reads 16 tokens."""
    found: dict[str, shapes.Scene] = {}
    for index in range(100 * count):
        scene = shapes.scene_for_index(index, seed=0, split=split, max_objects=1, novel=novel)
        obj = scene.objects[0]
        prompt = f"an image of a {obj.colour} {obj.shape}"
        if len(tokenizer(prompt).input_ids) > tokenizer.model_max_length:
            prompt = f"a {obj.colour} {obj.shape}"
        stated = shapes.Scene(objects=(shapes.ShapeObject(obj.shape, obj.colour, None, None),), background=None)
        found.setdefault(prompt, stated)
        if len(found) == count:
            break
    return list(found.items())


def prompt_sets(count: int, tokenizer, base_prompts: int) -> dict[str, list[tuple[str, shapes.Scene]]]:
    # The base's own evaluation prompts (ldm-eval's, 48 per split by default), the same prompts and seeds for
    # every model, so retention is a paired comparison.
    base = build_prompt_set(prompts_per_split=base_prompts, max_objects=1, seed=0)
    novel = {"colour": "colour", "shape": "shape"}
    sets = {f"{kind}_{name}": novel_prompts(novel[kind], split, count, tokenizer)
            for kind in novel for name, split in (("trained", "test"), ("unseen", "heldout"))}
    return {**sets, "pink_diamond": novel_prompts("both", "test", count, tokenizer),
            "base_seen": [(p.prompt, p.scene) for p in base if p.split == "seen"],
            "base_held_out": [(p.prompt, p.scene) for p in base if p.split == "held_out"]}


@torch.no_grad()
def adherence(pipe, items, *, args, guidance_scale: float) -> tuple[float, list]:
    """Fraction of images whose read-back scene matches what the prompt states. Every prompt gets the same
    seeds, at least args.seeds and enough for args.images_per_set images (the novel sets have 1–3 prompts)."""
    per_prompt = max(args.seeds, math.ceil(args.images_per_set / len(items)))
    flags, shown = [], []
    step = max(1, 64 // per_prompt)  # prompts per pipeline call: about 64 images
    for start in range(0, len(items), step):
        chunk = items[start:start + step]
        seeds = [sample_seeds(seed=0, prompt_index=start + k, count=per_prompt) for k in range(len(chunk))]
        images = sample_prompts(pipe, [p for p, _ in chunk], seeds=seeds, guidance_scale=guidance_scale,
                                steps=args.sampler_steps, resolution=args.resolution)
        for (prompt, scene), group in zip(chunk, images):
            statement = scene if scene.background is None else metrics.prompt_statement(scene)
            flags += [metrics.adherence(statement, read_scene(image)) for image in group]
            shown.append(group[0])
    return sum(flags) / len(flags), shown


@torch.no_grad()
def vae_ceiling(vae, *, count: int, resolution: int) -> dict[str, float]:
    """Per novel prompt set, the fraction of the data's own images of it whose colour and shape still read right
    after the base's VAE encodes and decodes them (posterior mean): no stage-2 model on this VAE can draw what
    its decoder cannot, so this bounds the LoRA and the fine-tune from above."""
    ceiling = {}
    for set_name, (novel, split) in NOVEL_SETS.items():
        scenes = [shapes.scene_for_index(i, seed=0, split=split, max_objects=1, novel=novel) for i in range(count)]
        pixels = torch.stack([torch.from_numpy(np.asarray(shapes.render_scene(scene, resolution), np.float32))
                              for scene in scenes]).permute(0, 3, 1, 2) / 127.5 - 1
        decoded = vae.decode(vae.encode(pixels).latent_dist.mean).sample
        images = ((decoded.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
        hits = 0
        for scene, image in zip(scenes, images):
            obj = scene.objects[0]
            stated = shapes.Scene(objects=(shapes.ShapeObject(obj.shape, obj.colour, None, None),), background=None)
            hits += metrics.adherence(stated, read_scene(image))
        ceiling[set_name] = round(hits / count, 3)
    return ceiling


def _short(prompt: str) -> str:
    """'an image of a pink circle' -> 'pink circle', for the figure's captions."""
    return prompt.removeprefix("an image of ").removeprefix("a ").removeprefix("an ")


def load(folder: str, loras=()):
    pipe = load_pipeline(folder)
    pipe.scheduler = make_scheduler("dpm++", pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    apply_loras(pipe, list(loras))
    return pipe


def sizes(folder: Path, *, lora: bool) -> dict:
    """Trainable parameters and bytes on disk of what a run produced (adapter file and its new-token vectors,
    or U-Net + text encoder)."""
    if lora:
        adapter = folder / LORA_WEIGHTS_NAME
        files = [adapter] + ([sidecar_path(adapter)] if sidecar_path(adapter).is_file() else [])
    else:
        files = [folder / "unet" / "diffusion_pytorch_model.safetensors", folder / "text_encoder" / "model.safetensors"]
    params = 0
    for path in files:
        with safe_open(str(path), framework="pt") as handle:
            params += sum(_numel(handle.get_slice(key).get_shape()) for key in handle.keys())
    return {"trainable_params": params, "file_bytes": sum(p.stat().st_size for p in files)}


def _numel(shape: list[int]) -> int:
    total = 1
    for dim in shape:
        total *= dim
    return total


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the base pipeline folder (quickstart stage2)")
    parser.add_argument("--out", default="runs/lora/bench")
    parser.add_argument("--images", type=int, default=500, help="training images of the new concept")
    parser.add_argument("--steps", type=int, default=400, help="optimizer steps of every training")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--share", type=int, default=100, help="percent of training images that show the new "
                        "concept; the rest are the base's own scenes (prior preservation)")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--lora-targets", default="attn", help="the LoRAs' --lora-targets, e.g. attn,conv")
    parser.add_argument("--lora-lr", type=float, default=2e-3)
    parser.add_argument("--full-lr", type=float, default=5e-4)
    parser.add_argument("--prompts", type=int, default=24, help="prompts per novel set, at most")
    parser.add_argument("--base-prompts", type=int, default=48, help="prompts per split of the base's own set")
    parser.add_argument("--seeds", type=int, default=4, help="images per prompt, at least")
    parser.add_argument("--images-per-set", type=int, default=48, help="images per prompt set, at least")
    parser.add_argument("--w", type=float, default=1.0, help="guidance weight (guidance_scale = w + 1)")
    parser.add_argument("--sampler-steps", type=int, default=20)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--reuse", action="store_true", help="keep trainings whose outputs exist")
    parser.add_argument("--new-tokens", default="", help="words the colour LoRA adds as new tokens with trained "
                        "vectors (--lora-new-tokens), e.g. pink")
    parser.add_argument("--models", default="", help="comma-separated subset of the models to train and "
                        f"evaluate (default all: {', '.join(MODELS)})")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    objective = objective_flags(args.base)
    # A text encoder without layers (the quickstart's) passes each word piece on as it is: the U-Net adapter
    # alone learns the new word; with layers, the text encoder gets an adapter too.
    lora = ["--lora-rank", str(args.rank), "--lora-targets", args.lora_targets, "--lr", str(args.lora_lr),
            *objective] + (
        ["--lora-text-encoder"] if text_encoder_layers(args.base) else [])
    chosen = [name.strip() for name in args.models.split(",") if name.strip()] or list(MODELS)
    new_tokens = ["--lora-new-tokens", args.new_tokens] if args.new_tokens else []
    trainings = {"lora_colour": ("colour", lora + new_tokens),
                 "full_colour": ("colour", ["--train-text-encoder", "--lr", str(args.full_lr), *objective]),
                 "lora_shape": ("shape", lora)}
    needed = set(chosen) | ({"lora_colour", "lora_shape"} if "lora_colour+shape" in chosen else set())
    runs = {name: train(name, base=args.base, out=out, data=data_source(kind, args.share), args=args, extra=extra)
            for name, (kind, extra) in trainings.items() if name in needed}
    for name, timing in runs.items():
        timing.update(sizes(out / name, lora=name.startswith("lora")))
    base_sizes = sizes(Path(args.base), lora=False)

    base = load_pipeline(args.base)  # its tokenizer for the prompt sets, its VAE for the ceiling
    sets = prompt_sets(args.prompts, base.tokenizer, args.base_prompts)
    colour, shape = (str(out / "lora_colour" / LORA_WEIGHTS_NAME), 1.0), (str(out / "lora_shape" /
                                                                               LORA_WEIGHTS_NAME), 1.0)
    models = {"base": (args.base, ()), "lora_colour": (args.base, (colour,)),
              "full_colour": (str(out / "full_colour"), ()), "lora_shape": (args.base, (shape,)),
              "lora_colour+shape": (args.base, (colour, shape))}
    wanted = {"base": list(sets), "lora_colour": ["colour_trained", "colour_unseen", "base_seen", "base_held_out",
                                                  "pink_diamond"],
              "full_colour": ["colour_trained", "colour_unseen", "base_seen", "base_held_out"],
              "lora_shape": ["shape_trained", "shape_unseen", "base_seen", "base_held_out", "pink_diamond"],
              "lora_colour+shape": ["pink_diamond", "base_seen", "base_held_out"]}
    guidance = guidance_scale_from_weight(args.w)
    scores = {"vae ceiling": vae_ceiling(base.vae, count=args.images_per_set, resolution=args.resolution)}
    print("vae ceiling", scores["vae ceiling"], flush=True)
    figure = []
    for name, (folder, loras) in models.items():
        if name not in chosen:
            continue
        pipe = load(folder, loras)
        scores[name] = {}
        for set_name in wanted[name]:
            rate, shown = adherence(pipe, sets[set_name], args=args, guidance_scale=guidance)
            scores[name][set_name] = round(rate, 3)
            if set_name in ("colour_trained", "colour_unseen", "pink_diamond"):
                figure += [(image.resize((64, 64), 0), f"{name}: {_short(prompt)}")  # 0: nearest, pixels seen
                           for image, (prompt, _) in zip(shown[:3], sets[set_name])]
        print(name, scores[name], flush=True)
    make_grid([i for i, _ in figure], captions=[c for _, c in figure], ncols=6).save(out / "figure.png")
    results = {"args": vars(args), "runs": runs, "base_files": base_sizes, "adherence": scores}
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "table.md").write_text(table(results) + "\n")
    print(table(results))
    return results


def table(results: dict) -> str:
    """The README table: one row per model, adherence per prompt set, then cost of training."""
    columns = ["colour_trained", "colour_unseen", "shape_trained", "shape_unseen", "pink_diamond", "base_seen",
               "base_held_out"]
    lines = ["| model | " + " | ".join(columns) + " | trainable params | file | s/step | peak RSS |",
             "|---" * (len(columns) + 5) + "|"]
    for name, scores in results["adherence"].items():
        run = results["runs"].get(name.split("+")[0], {})
        cells = [f"{100 * scores[c]:.0f}%" if c in scores else "" for c in columns]
        cost = ([f"{run['trainable_params']:,}", f"{run['file_bytes'] / 1e6:.2f} MB", f"{run['s_per_step']:.2f}",
                 f"{run['peak_rss_mb']} MB"] if run and "+" not in name else ["", "", "", ""])
        lines.append(f"| {name} | " + " | ".join(cells + cost) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
