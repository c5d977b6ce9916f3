"""`ldm-eval`: prompt adherence and diversity over a sweep of guidance weights, on the built-in shapes data.

    ldm-eval --model PIPELINE_DIR --out EVALDIR --weights 0,1,2,4,8 --seeds-per-prompt 4

Prompts are `canonical_prompt`s of shapes scenes: "seen" ones from the test split (colour–shape pairs the
model trained on) and "held-out" ones whose first object is a `HELD_OUT` pair (never seen together in
training). Each prompt is sampled with the same seeds at every w (guidance_scale = w + 1), each image is
read back with `ldm.eval.attributes.read_scene`, and EVALDIR gets eval.json (every number and every image's
reading), adherence_vs_guidance.png, grid_w{w}.png and the PNGs under samples/.

`--task emoji` evaluates a model trained on the built-in emoji data instead (`pipelines/evaluate_emoji.py`).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from autoencoder.metrics import psnr, ssim

from ldm.attention import set_attention
from ldm.cli import run_command, save_config
from ldm.data import shapes
from ldm.data.dataset import ShapesDataset, open_dataset, parse_source
from ldm.data.transforms import to_pil
from ldm.eval import metrics
from ldm.eval.plot import plot_guidance_sweep
from ldm.eval.attributes import read_scene
from ldm.grid import make_grid
from ldm.guidance import guidance_scale_from_weight
from pipelines.few_step import SamplingDefaults, resolve_sampling
from pipelines.folder import load_pipeline
from pipelines.lora import LORA_HELP, apply_loras, lora_specs
from pipelines.schedulers import DEFAULT_SCHEDULER, SCHEDULERS, make_scheduler

logger = logging.getLogger("ldm-eval")

EVAL_SPLITS = {"seen": "test", "held_out": "heldout"}  # our split name → shapes split the scenes come from
GRID_SEEDS = 4  # images per prompt shown in each grid_w*.png (all are saved under samples/)
GRID_CELL = 128  # grid tiles are enlarged (nearest neighbour) to about this side, so captions fit under them
VAE_BATCH = 32
EVAL_STEPS = 20  # sampler steps for a folder without few-step defaults (pipelines.few_step)
TASKS = ("shapes", "emoji")  # the built-in data a task's prompts and readers come from
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"  # the file name torch-fidelity downloads


@dataclass
class EvalConfig:
    """Evaluate a pipeline folder on shapes or emoji prompts: adherence and diversity against the guidance weight."""
    model: str = field(default="", metadata={"help": "pipeline folder to evaluate (required)"})
    task: str = field(default="shapes", metadata={
        "help": "prompts and readers: shapes scenes, or emoji names read back by the emoji retrieval and skin-tone "
                "readers (for a model trained on emoji:heldouttones=1)", "choices": list(TASKS)})
    out: str = field(default="eval", metadata={"help": "output folder: eval.json, the plot, grids, samples"})
    weights: str = field(default="0,1,2,4,8", metadata={
        "help": "comma-separated guidance weights w; the pipeline runs at guidance_scale = w + 1"})
    # 48 prompts x 4 seeds rather than 12 x 8: the 8 seeds of one prompt mostly agree, so the prompts, not the
    # seeds, set the error of an adherence figure (a standard deviation of 13 points at 12 x 8, 8 at 36 x 4; README).
    # 48 = 2 x 24 covers every (held-out pair, background, size) cell twice.
    seeds_per_prompt: int = field(default=4, metadata={"help": "images per prompt at each w (same seeds)"})
    prompts_per_split: int = field(default=48, metadata={
        "help": "distinct prompts per split, spread evenly over colour-shape pairs, backgrounds and sizes"})
    objects: int = field(default=shapes.DEFAULT_MAX_OBJECTS, metadata={
        "help": "at most this many objects per prompt scene (1-3); match what the model was trained on"})
    simple: bool = field(default=False, metadata={
        "help": "prompts of the simple variant (one large centred object, colour and shape only), for a model "
                "trained on shapes:simple=1; implies --objects 1"})
    steps: int | None = field(default=None, metadata={
        "help": f"sampler steps per image (default: the model folder's few-step default, else {EVAL_STEPS})"})
    # The quickstart's model on 2 cores, dpm++ 20 steps, guidance on: one prompt's 4 seeds per call took 97 ms an
    # image, 4 prompts (16 images) 42 ms, 16 prompts (64) 37 ms; small batches pay per-call and per-step overhead.
    batch_size: int = field(default=64, metadata={
        "help": "images per pipeline call: whole prompts (all their seeds) are sampled together up to this many; "
                "an image depends only on its prompt and seed, not on the batch it ran in"})
    scheduler: str | None = field(default=None, metadata={
        "help": f"sampler (default: the model folder's, else {DEFAULT_SCHEDULER})", "choices": list(SCHEDULERS)})
    resolution: int = field(default=32, metadata={"help": "image side in pixels"})
    seed: int = field(default=0, metadata={"help": "picks the prompt scenes and the sampling seeds"})
    vae_data: str = field(default="", metadata={
        "help": "data for the VAE's PSNR/SSIM (any open_dataset source; built-ins use their test split; "
                "default: the --task's data)"})
    vae_samples: int = field(default=256, metadata={"help": "images for the VAE figures; 0 skips them"})
    fid_weights: str = field(default="", metadata={
        "help": f"torch-fidelity Inception weights ({INCEPTION_FILE} or its folder) for FID/KID; "
                "never downloaded"})
    device: str = field(default="auto", metadata={"help": "auto (CUDA if available), cpu, cuda, cuda:N"})
    lora: tuple[str, ...] = field(default=(), metadata={"help": LORA_HELP})

    def __post_init__(self):
        if not self.model:
            raise ValueError("--model is required (a pipeline folder).")
        self.lora = tuple(self.lora or ())
        lora_specs(self.lora)  # a bad scale or a missing file fails before any work
        self.guidance_weights()  # raises on a bad list
        for name in ("seeds_per_prompt", "prompts_per_split", "steps", "batch_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}.")
        if not 1 <= self.objects <= 3:
            raise ValueError(f"--objects must be 1, 2 or 3, got {self.objects}.")
        if self.task not in TASKS:
            raise ValueError(f"--task must be one of {', '.join(TASKS)}, got {self.task!r}.")
        if self.task == "emoji" and self.simple:
            raise ValueError("--simple applies to --task shapes only.")
        self.vae_data = self.vae_data or self.task
        if self.simple:
            self.objects = 1
        if self.resolution < 16:
            raise ValueError(f"--resolution must be at least 16 pixels, got {self.resolution}.")
        if self.vae_samples < 0:
            raise ValueError(f"--vae-samples must be >= 0, got {self.vae_samples}.")
        if self.scheduler is not None and self.scheduler not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {self.scheduler!r}; choose one of: {', '.join(SCHEDULERS)}.")

    def guidance_weights(self) -> list[float]:
        """The --weights list as floats (w ≥ 0, distinct, in the given order)."""
        try:
            values = [float(item) for item in self.weights.split(",") if item.strip()]
        except ValueError:
            raise ValueError(f"--weights must be comma-separated numbers, got {self.weights!r}.") from None
        if not values or min(values) < 0 or len(set(values)) != len(values):
            raise ValueError(f"--weights must be distinct numbers >= 0, got {self.weights!r}.")
        return values


@dataclass
class EvalPrompt:
    split: str  # "seen" or "held_out"
    prompt: str
    scene: shapes.Scene  # ground truth the prompt was written from


Cell = tuple[tuple[str, str], str | None, str | None]  # (colour–shape pair, background, size) a prompt states


def prompt_cells(split: str, *, seed: int, simple: bool = False) -> list[Cell]:
    """The cells a split's prompts are drawn from, in drawing order: (colour–shape pair of the first object,
    its stated background, its stated size; None where simple prompts state neither).

    With P pairs (in an order shuffled by `seed`), B backgrounds, S sizes and L = lcm(P, B), the k-th cell
    takes pair k mod P, background k mod B and size (k + ⌊k / L⌋) mod S. Every L consecutive cells are balanced
    over pairs and backgrounds and alternate sizes; the list holds each (pair, background, size) once: 24 cells
    for the 4 held-out pairs, 120 for the 20 seen ones. The size matters: a small yellow cross on a grey or
    black background fails where a large one or one on white does not, which cells of pair and background
    alone left to chance (README Results)."""
    pairs = sorted(shapes.HELD_OUT) if split == "held_out" else list(shapes.SEEN_PAIRS)
    order = np.random.default_rng([seed, len(pairs)]).permutation(len(pairs))
    backgrounds = [None] if simple else list(shapes.BACKGROUNDS)
    sizes = [None] if simple else list(shapes.SIZES)
    period = math.lcm(len(pairs), len(backgrounds))
    return [(pairs[order[k % len(pairs)]], backgrounds[k % len(backgrounds)], sizes[(k + k // period) % len(sizes)])
            for k in range(period * len(sizes))]


def _cell(scene: shapes.Scene) -> Cell:
    first = metrics.prompt_statement(scene).objects[0]
    return (first.colour, first.shape), metrics.prompt_statement(scene).background, first.size


def build_prompt_set(*, prompts_per_split: int, max_objects: int, seed: int,
                     simple: bool = False) -> list[EvalPrompt]:
    """`prompts_per_split` distinct canonical prompts per split (seen first, then held-out), stratified: the
    k-th prompt of a split comes from cell k of `prompt_cells` (cycled), so a split's prompts spread evenly
    over its colour–shape pairs, backgrounds and sizes instead of wherever random draws fall. Within a cell, scenes
    come in the order of the split's scene stream. Fewer prompts where a cell runs out of distinct ones (the
    simple variant has one prompt per pair: 20 seen and 4 held-out)."""
    prompts = []
    for split, shapes_split in EVAL_SPLITS.items():
        cells = prompt_cells(split, seed=seed, simple=simple)
        wanted = {cell: len(range(k, prompts_per_split, len(cells))) for k, cell in enumerate(cells)}
        found: dict[Cell, list[tuple[str, shapes.Scene]]] = {cell: [] for cell in cells}
        taken: set[str] = set()
        for index in range(1000 * prompts_per_split):  # far more draws than distinct prompts ever need
            scene = shapes.scene_for_index(index, seed=seed, split=shapes_split, max_objects=max_objects,
                                           simple=simple)
            prompt, cell = shapes.canonical_prompt(scene), _cell(scene)
            if prompt not in taken and len(found[cell]) < wanted[cell]:
                taken.add(prompt)
                found[cell].append((prompt, scene))
                if all(len(found[c]) == wanted[c] for c in cells):
                    break
        for k in range(prompts_per_split):
            cell, turn = cells[k % len(cells)], k // len(cells)
            if turn < len(found[cell]):
                prompts.append(EvalPrompt(split, *found[cell][turn]))
    return prompts


def sample_seeds(*, seed: int, prompt_index: int, count: int) -> list[int]:
    """Seeds of one prompt's images: distinct across prompts, identical at every w (paired comparison)."""
    return [seed * 1_000_003 + prompt_index * 1000 + k for k in range(count)]


def sample_prompts(pipe, prompts: list[str], *, seeds: list[list[int]], guidance_scale: float, steps: int,
                   resolution: int) -> list[list]:
    """Several prompts with all their seeds (`seeds[i]` for `prompts[i]`, equally many each) in one batched
    call, one generator per image; returns each prompt's PIL images."""
    per_prompt = len(seeds[0])
    generators = [torch.Generator("cpu").manual_seed(s) for group in seeds for s in group]
    images = pipe(prompts, num_inference_steps=steps, guidance_scale=guidance_scale,
                  num_images_per_prompt=per_prompt, generator=generators, height=resolution, width=resolution,
                  output_type="pil").images
    return [images[i * per_prompt:(i + 1) * per_prompt] for i in range(len(prompts))]


def score_prompt(item: EvalPrompt, images, *, w: float, seeds, files) -> tuple[list[dict], float | None]:
    """Read each image back; returns (one record dict per image, diversity or None for a single image)."""
    statement = metrics.prompt_statement(item.scene)
    rows = []
    for image, seed, file in zip(images, seeds, files):
        seen = read_scene(image)
        rows.append({"w": w, "split": item.split, "prompt": item.prompt, "seed": seed, "file": file,
                     "adherent": metrics.adherence(statement, seen),
                     "attributes": metrics.attribute_matches(statement, seen),
                     "read": dataclasses.asdict(seen)})
    return rows, (metrics.diversity(images) if len(images) > 1 else None)


def sample_and_save(pipe, indexed: list[tuple[int, object]], config: EvalConfig, w: float, out_dir: Path):
    """Sample every (index, prompt item) of `indexed` at guidance weight `w` with its seeds, whole prompts per
    call up to `config.batch_size` images, and save each image under OUT/samples/w{w}/. Yields
    (index, item, seeds, images, files) per prompt; shared by the shapes and emoji sweeps."""
    (out_dir / "samples" / f"w{w:g}").mkdir(parents=True, exist_ok=True)
    per_call = max(1, config.batch_size // config.seeds_per_prompt)
    for start in range(0, len(indexed), per_call):
        chunk = indexed[start:start + per_call]
        seeds = [sample_seeds(seed=config.seed, prompt_index=index, count=config.seeds_per_prompt)
                 for index, _ in chunk]
        batches = sample_prompts(pipe, [item.prompt for _, item in chunk], seeds=seeds,
                                 guidance_scale=guidance_scale_from_weight(w), steps=config.steps,
                                 resolution=config.resolution)
        for (index, item), item_seeds, images in zip(chunk, seeds, batches):
            files = [f"samples/w{w:g}/{item.split}-{index:03d}-seed{s}.png" for s in item_seeds]
            for image, file in zip(images, files):
                image.save(out_dir / file)
            yield index, item, item_seeds, images, files


def run_sweep(pipe, prompts: list[EvalPrompt], config: EvalConfig,
              out_dir: Path) -> tuple[list[dict], list[dict]]:
    """Sample, save and read every (w, prompt, seed); write one grid per w. Returns (samples, diversities)."""
    samples, diversities = [], []
    indexed = list(enumerate(prompts))
    for w in config.guidance_weights():
        started, grid_images, grid_captions = time.perf_counter(), [], []
        for _, item, item_seeds, images, files in sample_and_save(pipe, indexed, config, w, out_dir):
            rows, value = score_prompt(item, images, w=w, seeds=item_seeds, files=files)
            samples += rows
            if value is not None:
                diversities.append({"w": w, "split": item.split, "prompt": item.prompt, "diversity": value})
            scale = max(1, GRID_CELL // config.resolution)
            grid_images += [im.resize((im.width * scale, im.height * scale), Image.NEAREST)
                            for im in images[:GRID_SEEDS]]
            grid_captions += [f"{'held-out' if item.split == 'held_out' else 'seen'}: {item.prompt}"] + \
                [""] * (min(GRID_SEEDS, len(images)) - 1)
        make_grid(grid_images, captions=grid_captions, ncols=min(GRID_SEEDS, config.seeds_per_prompt)).save(
            out_dir / f"grid_w{w:g}.png")
        at_w = [s for s in samples if s["w"] == w]
        logger.info("w = %g: adherence %.1f%% over %d images (%.1f s)", w,
                    100 * np.mean([s["adherent"] for s in at_w]), len(at_w), time.perf_counter() - started)
    return samples, diversities


@torch.no_grad()
def _reconstruct(vae, dataset, count: int) -> tuple[torch.Tensor, torch.Tensor, list]:
    """PSNR and SSIM per image, and the reconstructions (posterior mean, decoded) of `dataset`'s first `count`."""
    psnrs, ssims, images = [], [], []
    for start in range(0, count, VAE_BATCH):
        indices = range(start, min(start + VAE_BATCH, count))
        pixel_values = torch.stack([dataset[i]["pixel_values"] for i in indices])
        pixel_values = pixel_values.to(device=vae.device, dtype=vae.dtype)
        reconstructions = vae.decode(vae.encode(pixel_values).latent_dist.mode()).sample
        psnrs.append(psnr(pixel_values, reconstructions).float().cpu())
        ssims.append(ssim(pixel_values, reconstructions).float().cpu())
        images += [to_pil(x) for x in reconstructions.float()]
    return torch.cat(psnrs), torch.cat(ssims), images


def evaluate_vae(vae, *, data: str, samples: int, resolution: int) -> dict:
    """PSNR (dB) and SSIM of VAE reconstructions (posterior mean, decoded) on up to `samples` held-out
    images. On shapes data also how readable the reconstructions are (`readback`), and the same on scenes of
    the held-out colour-shape pairs (`readback_held_out`): a VAE that cannot reconstruct a pair caps what
    stage 2 can draw of it."""
    split = "test" if parse_source(data)[0] in ("shapes", "emoji") else "train"  # folders have no test split
    dataset = open_dataset(data, resolution=resolution, split=split, size=samples)
    count = min(samples, len(dataset))
    psnr_values, ssim_values, images = _reconstruct(vae, dataset, count)
    finite = psnr_values[torch.isfinite(psnr_values)]  # a perfect reconstruction has infinite PSNR
    result = {"data": data, "split": split, "images": count,
              "psnr": float(finite.mean()) if len(finite) else None, "ssim": float(ssim_values.mean())}
    if isinstance(dataset, ShapesDataset):  # ground truth known: how readable are the reconstructions?
        result["readback"] = metrics.readback(images, [dataset.scene(i) for i in range(count)])
        held_out = open_dataset(data, resolution=resolution, split="heldout", size=samples)
        result["readback_held_out"] = metrics.readback(_reconstruct(vae, held_out, count)[2],
                                                       [held_out.scene(i) for i in range(count)])
    return result


def fid_kid(samples: list[dict], prompts: list[EvalPrompt], *, weights_path: str, out_dir: Path,
            resolution: int) -> dict:
    """FID and KID per w against renders of the prompts' own scenes, via torch-fidelity and local Inception
    weights; {"skipped": reason} when either is missing (nothing is ever downloaded)."""
    if not weights_path:
        return {"skipped": "no --fid-weights given"}
    if importlib.util.find_spec("torch_fidelity") is None:
        return {"skipped": "torch-fidelity is not installed (pip install torch-fidelity)"}
    path = Path(weights_path)
    path = path / INCEPTION_FILE if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"--fid-weights: no Inception weights file at {path}.")
    import torch_fidelity

    reference = out_dir / "fid_reference"
    reference.mkdir(exist_ok=True)
    scenes = {item.prompt: item.scene for item in prompts}
    first_w = samples[0]["w"]
    for k, row in enumerate(s for s in samples if s["w"] == first_w):  # one render per generated image
        shapes.render_scene(scenes[row["prompt"]], resolution).save(reference / f"{k:05d}.png")
    count = len(list(reference.glob("*.png")))
    results = {}
    for w in dict.fromkeys(s["w"] for s in samples):
        scores = torch_fidelity.calculate_metrics(
            input1=str(out_dir / "samples" / f"w{w:g}"), input2=str(reference), fid=True, kid=True,
            kid_subset_size=min(1000, count), feature_extractor_weights_path=str(path),
            cuda=torch.cuda.is_available(), verbose=False, cache=False)
        results[f"{w:g}"] = {"fid": scores["frechet_inception_distance"],
                             "kid": scores["kernel_inception_distance_mean"]}
    return results


def _best_weight(sweep: list[dict]) -> dict:
    """The w with the highest held-out adherence (ties: the smaller w, i.e. the more diverse)."""
    rated = [entry for entry in sweep if entry["adherence"]["held_out"]["rate"] is not None]
    best = max(rated, key=lambda entry: (entry["adherence"]["held_out"]["rate"], -entry["w"]))
    return {"w": best["w"], "held_out_adherence": best["adherence"]["held_out"]["rate"],
            "seen_adherence": best["adherence"]["seen"]["rate"]}


def prepare_pipeline(config: EvalConfig, out_dir: Path) -> tuple[EvalConfig, object, list, str]:
    """Create `out_dir`, settle the sampler (flag, else the folder's few-step defaults, else ours), save
    eval_config.json and load the pipeline with its LoRAs: (config as run, pipe, lora records, device)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    chosen = resolve_sampling(config.model, given=SamplingDefaults(config.scheduler, config.steps),
                              usual=SamplingDefaults(DEFAULT_SCHEDULER, EVAL_STEPS), loras=config.lora)
    config = dataclasses.replace(config, scheduler=chosen.scheduler, steps=chosen.num_inference_steps)
    save_config(config, out_dir / "eval_config.json")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if config.device == "auto" else config.device
    pipe = load_pipeline(config.model, device=device)
    loras = apply_loras(pipe, lora_specs(config.lora))
    set_attention(pipe, "auto", device)
    pipe.scheduler = make_scheduler(config.scheduler, pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return config, pipe, loras, device


def plot_sweep(sweep: list[dict], out_dir: Path) -> None:
    """OUT/adherence_vs_guidance.png: seen and held-out adherence and diversity against w (every task)."""
    plot_guidance_sweep(out_dir / "adherence_vs_guidance.png", weights=[e["w"] for e in sweep],
                        adherence_seen=[e["adherence"]["seen"]["rate"] for e in sweep],
                        adherence_held_out=[e["adherence"]["held_out"]["rate"] for e in sweep],
                        diversity=[e["diversity"]["all"] for e in sweep])


def vae_figures(pipe, config: EvalConfig) -> dict:
    """The pipeline VAE's PSNR / SSIM on --vae-data, or {"skipped": why}."""
    if config.vae_samples and getattr(pipe, "vae", None) is not None:
        return evaluate_vae(pipe.vae, data=config.vae_data, samples=config.vae_samples,
                            resolution=config.resolution)
    return {"skipped": "--vae-samples 0" if not config.vae_samples else "the pipeline has no vae"}


def evaluate(config: EvalConfig) -> dict:
    """Run the whole evaluation and write EVALDIR; returns the eval.json content."""
    if config.task == "emoji":
        from pipelines.evaluate_emoji import evaluate_emoji  # it imports this module: a late import, no cycle

        return evaluate_emoji(config)
    out_dir = Path(config.out)
    config, pipe, loras, device = prepare_pipeline(config, out_dir)
    prompts = build_prompt_set(prompts_per_split=config.prompts_per_split, max_objects=config.objects,
                               seed=config.seed, simple=config.simple)
    logger.info("%d prompts (%d seen, %d held-out) x %d seeds x %d weights on %s", len(prompts),
                sum(p.split == "seen" for p in prompts), sum(p.split == "held_out" for p in prompts),
                config.seeds_per_prompt, len(config.guidance_weights()), device)

    started = time.perf_counter()
    samples, diversities = run_sweep(pipe, prompts, config, out_dir)
    sampling_s = time.perf_counter() - started
    # The background each prompt states (None for a simple prompt, which leaves it to the model).
    backgrounds = {p.prompt: metrics.prompt_statement(p.scene).background for p in prompts}
    records = [metrics.SampleRecord(s["w"], s["split"], s["prompt"], s["seed"], s["adherent"],
                                    s["attributes"], backgrounds[s["prompt"]]) for s in samples]
    per_prompt = [metrics.PromptDiversity(**d) for d in diversities]
    sweep = metrics.summarise_sweep(records, per_prompt, weights=config.guidance_weights())
    plot_sweep(sweep, out_dir)
    vae = vae_figures(pipe, config)
    fidelity = fid_kid(samples, prompts, weights_path=config.fid_weights, out_dir=out_dir,
                       resolution=config.resolution)
    if "skipped" in fidelity:
        logger.info("FID/KID skipped: %s", fidelity["skipped"])

    report = {
        "config": dataclasses.asdict(config), "device": device, "sampling_seconds": round(sampling_s, 2),
        "diversity_metric": "mean pairwise RMS pixel distance in [0, 1] between the images of one prompt",
        "best": _best_weight(sweep), "sweep": sweep, "vae": vae, "fid_kid": fidelity, "loras": loras,
        "prompts": [{"split": p.split, "prompt": p.prompt, "scene": dataclasses.asdict(p.scene)}
                    for p in prompts],
        "diversity_per_prompt": diversities, "samples": samples,
    }
    (out_dir / "eval.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def evaluate_and_print(config: EvalConfig) -> dict:
    """Run `evaluate` and print the adherence table."""
    if config.task == "emoji":
        from pipelines.evaluate_emoji import evaluate_emoji_and_print

        return evaluate_emoji_and_print(config)
    report = evaluate(config)
    print("w     seen    held-out  diversity")
    for entry in report["sweep"]:
        rates = [entry["adherence"][s]["rate"] for s in metrics.SPLITS] + [entry["diversity"]["all"]]
        print(f"{entry['w']:<5g} " + "  ".join("   -    " if r is None else f"{r:8.3f}" for r in rates))
    print(f"wrote {Path(config.out) / 'eval.json'}, adherence_vs_guidance.png and grid_w*.png")
    return report


def main(argv: list[str] | None = None) -> int:
    """`ldm-eval`: 0 on success; a user mistake is one `error: ...` line and exit status 2 (`ldm.cli`)."""
    return run_command(evaluate_and_print, EvalConfig, argv, prog="ldm-eval")


if __name__ == "__main__":
    sys.exit(main())
