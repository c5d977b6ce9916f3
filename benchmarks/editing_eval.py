"""Editing on a trained shapes model, read back with the shapes attribute reader: image-to-image strength sweep,
inpainting (blend, RePaint, --keep-unmasked) and outpainting.

    python benchmarks/editing_eval.py --model runs/quickstart/stage2 --out runs/edit/eval \
        --figures docs/images

- image-to-image: test scenes, each asked for with another colour or another shape; per strength, the share
  whose every stated attribute reads right and the share that kept the init's position, size and background;
- inpainting: the object's box (plus a margin, on the latent grid) masked and asked for with another colour and
  shape: share read right, PSNR of the unmasked region against the original (and the VAE's own
  reconstruction's, the ceiling without paste-back), and the RMS colour step across the mask border;
- outpainting: an edge strip cut off through the object and painted back: share where the whole scene reads
  right (object completed, background named), and the RMS distance of the new strip's background pixels from
  the true background colour.
Prints a table and writes editing_eval.json; with --figures, the strength curve and an example grid.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ldm.data.shapes import BACKGROUNDS, Scene, canonical_prompt, object_box, render_scene, scene_for_index
from ldm.eval.editing import box_mask, edit_target, kept_layout, masked_psnr, seam_step
from ldm.eval.metrics import adherence, prompt_statement
from ldm.eval.attributes import read_scene
from ldm.grid import make_grid
from ldm.guidance import guidance_scale_from_weight
from pipelines import ImageToImagePipeline, InpaintPipeline
from pipelines.edit_inputs import paste_weight
from pipelines.folder import load_pipeline
from pipelines.outpaint import outpaint
from pipelines.schedulers import make_scheduler

MARGIN = 2  # pixels around the object's box in the inpainting mask (then snapped out to the latent grid)
PASTE_BLUR = 2  # --mask-blur of the softened paste-back variant, in pixels
CUT = 8  # pixels cut off the object's side for outpainting: about half of a small object, a third of a large
CUT_SIDES = {"left": (CUT, 0, 0, 0), "top": (0, CUT, 0, 0), "right": (0, 0, CUT, 0), "bottom": (0, 0, 0, CUT)}


def to_uint8(images: np.ndarray) -> list[np.ndarray]:
    return list((np.clip(images, 0, 1) * 255).round().astype(np.uint8))


def generators(scene_index: int, seeds: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(1000 * scene_index + k) for k in range(seeds)]


def strength_sweep(pipe: ImageToImagePipeline, scenes: list[Scene], *, strengths, seeds, steps, scale, size):
    """Per strength: share read right and share with position, size and background kept; example images."""
    targets = [edit_target(s, ("colour", "shape")[i % 2], i // 2) for i, s in enumerate(scenes)]
    inits = [render_scene(s, size) for s in scenes]
    rows, examples = [], {}
    for strength in strengths:
        images = to_uint8(pipe(
            [canonical_prompt(t) for t in targets], image=[im for im in inits for _ in range(seeds)],
            strength=strength, num_inference_steps=steps, guidance_scale=scale, num_images_per_prompt=seeds,
            generator=[g for i in range(len(scenes)) for g in generators(i, seeds)], output_type="np",
        ).images)
        reads = [read_scene(im) for im in images]
        pairs = [(scenes[n // seeds], targets[n // seeds], read) for n, read in enumerate(reads)]
        rows.append({
            "strength": strength,
            "read_right": float(np.mean([adherence(prompt_statement(t), r) for _, t, r in pairs])),
            "kept_layout": float(np.mean([kept_layout(s, r) for s, _, r in pairs])),
        })
        examples[strength] = images[::seeds]
    return rows, {"init": inits, "targets": targets, "images": examples}


def text_to_image_reference(pipe, scenes, *, seeds, steps, scale, size) -> float:
    """Share of plain text-to-image samples of the image-to-image targets' prompts that read right: the
    ceiling an edit's "reads right" is compared with."""
    targets = [edit_target(s, ("colour", "shape")[i % 2], i // 2) for i, s in enumerate(scenes)]
    images = to_uint8(pipe([canonical_prompt(t) for t in targets], num_inference_steps=steps, guidance_scale=scale,
                           num_images_per_prompt=seeds, height=size, width=size, output_type="np",
                           generator=[g for i in range(len(scenes)) for g in generators(i, seeds)]).images)
    return float(np.mean([adherence(prompt_statement(targets[n // seeds]), read_scene(im))
                          for n, im in enumerate(images)]))


def vae_reconstruction(pipe, image: Image.Image) -> np.ndarray:
    pixels = pipe.image_processor.preprocess(image).to(pipe.device, pipe.vae.dtype)
    with torch.inference_mode():
        decoded = pipe.vae.decode(pipe.vae.encode(pixels).latent_dist.mode()).sample
    return to_uint8(pipe.image_processor.postprocess(decoded, output_type="np"))[0]


def inpaint_runs(pipe: InpaintPipeline, scenes, *, seeds, steps, scale, size, jump_length, jump_n_sample):
    """Blend and RePaint on each scene's box; keep-unmasked is the blend pasted onto the original."""
    records, examples = [], []
    for i, scene in enumerate(scenes):
        target = edit_target(edit_target(scene, "colour", i), "shape", i)
        init = render_scene(scene, size)
        mask = box_mask(scene.objects[0], size, margin=MARGIN, grid=pipe.vae_scale_factor)
        mask_image = Image.fromarray(mask.astype(np.uint8) * 255, mode="L")
        original = np.asarray(init)
        runs = {}
        for name, jumps in (("blend", 1), ("repaint", jump_n_sample)):
            runs[name] = to_uint8(pipe(
                canonical_prompt(target), image=init, mask_image=mask_image, num_inference_steps=steps,
                guidance_scale=scale, num_images_per_prompt=seeds, generator=generators(i, seeds),
                output_type="np", jump_length=jump_length, jump_n_sample=jumps,
            ).images)
        for name, blur in (("keep_unmasked", 0), (f"keep_unmasked_blur{PASTE_BLUR}", PASTE_BLUR)):
            weight = paste_weight(mask_image, blur)[..., None]
            runs[name] = [(weight * im + (1 - weight) * original).round().astype(np.uint8) for im in runs["blend"]]
        reconstruction = vae_reconstruction(pipe, init)
        for name, images in runs.items():
            for image in images:
                records.append({
                    "variant": name, "right": adherence(prompt_statement(target), read_scene(image)),
                    "psnr_unmasked": masked_psnr(image, original, ~mask),
                    "vae_psnr_unmasked": masked_psnr(reconstruction, original, ~mask),
                    "seam": seam_step(image, mask), "seam_vae": seam_step(reconstruction, mask),
                })
        examples.append([init, mask_image] + [Image.fromarray(runs[n][0]) for n in runs])
    return summarise(records), examples


def summarise(records: list[dict]) -> dict:
    """Mean of every numeric field per variant (inf PSNRs, i.e. exact regions, reported as inf)."""
    out = {}
    for variant in dict.fromkeys(r["variant"] for r in records):
        rows = [r for r in records if r["variant"] == variant]
        out[variant] = {key: float(np.mean([r[key] for r in rows])) for key in rows[0] if key != "variant"}
        out[variant]["n"] = len(rows)
    return out


def border_scenes(count: int) -> list[Scene]:
    """The first `count` single-object test scenes whose object is not in the centre (it can be cut off)."""
    scenes, index = [], 0
    while len(scenes) < count:
        scene = scene_for_index(index, split="test", max_objects=1)
        if scene.objects[0].position in CUT_SIDES:
            scenes.append(scene)
        index += 1
    return scenes


def outpaint_runs(pipe: InpaintPipeline, scenes, *, seeds, steps, scale, size):
    """Cut the object's side off and outpaint it back: scene read right, and background error in the strip."""
    records, examples = [], []
    for i, scene in enumerate(scenes):
        margins = CUT_SIDES[scene.objects[0].position]
        full = render_scene(scene, size)
        left, top, right, bottom = margins
        cropped = full.crop((left, top, size - right, size - bottom))
        images = to_uint8(outpaint(pipe, canonical_prompt(scene), cropped, margins, num_inference_steps=steps,
                                   guidance_scale=scale, num_images_per_prompt=seeds,
                                   generator=generators(i, seeds), output_type="np").images)
        strip = np.ones((size, size), dtype=bool)
        strip[top : size - bottom, left : size - right] = False
        x0, y0, x1, y1 = (int(round(v)) for v in object_box(scene.objects[0], size))
        strip[max(0, y0 - 1) : y1 + 1, max(0, x0 - 1) : x1 + 1] = False  # background pixels of the strip only
        background = np.array(BACKGROUNDS[scene.background], dtype=np.float64)
        for image in images:
            error = np.sqrt(np.mean(np.sum((image[strip].astype(np.float64) - background) ** 2, axis=-1)))
            completed = adherence(prompt_statement(scene), read_scene(image))
            records.append({"variant": "outpaint", "completed": completed, "background_rms": float(error)})
        examples.append([full, cropped, Image.fromarray(images[0])])
    return summarise(records), examples


def big(image) -> Image.Image:
    """3x nearest-neighbour enlargement, so 32 px tiles are visible in the README."""
    image = image if isinstance(image, Image.Image) else Image.fromarray(image)
    return image.resize((image.width * 3, image.height * 3), Image.NEAREST)


def save_figures(sweep, sweep_examples, inpaint_examples, outpaint_examples, folder: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    x = [r["strength"] for r in sweep]
    ax.plot(x, [r["read_right"] for r in sweep], "o-", label="edit reads right")
    ax.plot(x, [r["kept_layout"] for r in sweep], "s-", label="position, size, background kept")
    ax.set(xlabel="strength", ylabel="share of edits", ylim=(0, 1.02), title="Image-to-image trade-off")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "editing_strength.png")
    plt.close(fig)
    tiles, captions = [], []
    for n in range(3):
        tiles += [big(sweep_examples["init"][n])] + [big(sweep_examples["images"][s][n]) for s in x]
        captions += [f"init; asked: {canonical_prompt(sweep_examples['targets'][n])}"] + [f"s = {s}" for s in x]
    make_grid(tiles, captions=captions, ncols=len(x) + 1).save(folder / "editing_img2img.png")
    tiles, captions = [], []
    for row in inpaint_examples[:3]:
        tiles += [big(im) for im in row]
        captions += ["init", "mask", "blend", "RePaint", "keep unmasked", f"keep, blur {PASTE_BLUR}"]
    for row in outpaint_examples[:3]:
        tiles += [big(im) for im in row] + [Image.new("RGB", (96, 96), "white")] * 3
        captions += ["scene", "cut", "outpainted", "", "", ""]
    make_grid(tiles, captions=captions, ncols=6).save(folder / "editing_inpaint_outpaint.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", default="runs/edit/eval")
    parser.add_argument("--figures", default=None, help="folder for the README figures (e.g. docs/images)")
    parser.add_argument("--scenes", type=int, default=24, help="test scenes per task")
    parser.add_argument("--seeds", type=int, default=2, help="images per scene")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--w", type=float, default=1.0, help="guidance weight (guidance_scale = w + 1)")
    parser.add_argument("--strengths", default="0.2,0.4,0.6,0.8,1.0")
    parser.add_argument("--jump-length", type=int, default=5)
    parser.add_argument("--jump-n-sample", type=int, default=3)
    args = parser.parse_args()
    base = load_pipeline(args.model)
    size, scale = base.default_size, guidance_scale_from_weight(args.w)
    common = dict(seeds=args.seeds, steps=args.steps, scale=scale, size=size)
    scenes = [scene_for_index(i, split="test", max_objects=1) for i in range(args.scenes)]
    timings, results = {}, {"config": vars(args)}

    base.scheduler = make_scheduler("dpm++", base.scheduler.config)
    base.set_progress_bar_config(disable=True)
    results["text_to_image_read_right"] = text_to_image_reference(base, scenes, **common)
    # strength -> 0 is the VAE's reconstruction of the init: the ceiling of "kept" (and what the reader makes of it)
    results["vae_kept_layout"] = float(np.mean([
        kept_layout(s, read_scene(vae_reconstruction(base, render_scene(s, size)))) for s in scenes]))

    start = time.perf_counter()
    i2i = ImageToImagePipeline(**base.components)
    i2i.scheduler = make_scheduler("dpm++", base.scheduler.config)
    i2i.set_progress_bar_config(disable=True)
    strengths = [float(s) for s in args.strengths.split(",")]
    results["img2img"], sweep_examples = strength_sweep(i2i, scenes, strengths=strengths, **common)
    timings["img2img"] = time.perf_counter() - start

    start = time.perf_counter()
    inpaint = InpaintPipeline(**base.components)
    inpaint.scheduler = make_scheduler("ddim", base.scheduler.config)  # RePaint reruns steps: ddim or ddpm
    inpaint.set_progress_bar_config(disable=True)
    results["inpaint"], inpaint_examples = inpaint_runs(
        inpaint, scenes, jump_length=args.jump_length, jump_n_sample=args.jump_n_sample, **common)
    timings["inpaint"] = time.perf_counter() - start

    start = time.perf_counter()
    results["outpaint"], outpaint_examples = outpaint_runs(inpaint, border_scenes(args.scenes), **common)
    timings["outpaint"] = time.perf_counter() - start
    results["seconds"] = timings

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "editing_eval.json").write_text(json.dumps(results, indent=2) + "\n")
    print_tables(results)
    if args.figures:
        save_figures(results["img2img"], sweep_examples, inpaint_examples, outpaint_examples,
                     Path(args.figures))


def print_tables(results: dict) -> None:
    print(f"text-to-image of the same prompts reads right: {results['text_to_image_read_right']:.0%}")
    print(f"VAE reconstructions of the inits keep position, size and background: {results['vae_kept_layout']:.0%}")
    print("| strength | edit reads right | position, size, background kept |\n|---|---|---|")
    for row in results["img2img"]:
        print(f"| {row['strength']:.1f} | {row['read_right']:.0%} | {row['kept_layout']:.0%} |")
    print("\n| inpainting | reads right | PSNR unmasked (dB) | VAE recon. PSNR (dB) | seam step | VAE recon.'s |")
    print("|---|---|---|---|---|---|")
    for name, row in results["inpaint"].items():
        print(f"| {name} | {row['right']:.0%} | {row['psnr_unmasked']:.1f} | {row['vae_psnr_unmasked']:.1f} "
              f"| {row['seam']:.1f} | {row['seam_vae']:.1f} |")
    row = results["outpaint"]["outpaint"]
    print(f"\noutpainting: scene reads right {row['completed']:.0%}, strip background RMS error "
          f"{row['background_rms']:.1f} (n = {row['n']})")
    print("seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in results["seconds"].items()))


if __name__ == "__main__":
    main()
