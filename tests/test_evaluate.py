"""pipelines/evaluate.py (`ldm-eval`) end to end on a tiny random pipeline folder."""
import itertools
import json
import math
from collections import Counter

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline
from PIL import Image

from ldm.data import shapes
from ldm.data.dataset import open_dataset
from ldm.data.transforms import to_pil
from ldm.eval import metrics
from ldm.eval.plot import PLOT_SIZE
from ldm.eval.attributes import read_scene
from pipelines import evaluate
from pipelines.schedulers import make_scheduler
from tiny_components import tiny_pipeline_folder

WEIGHTS, SEEDS, PROMPTS, STEPS, VAE_SAMPLES = (0.0, 3.0), 2, 2, 2, 4
BATCH = evaluate.EvalConfig(model="x").batch_size  # the fixture's 8 images of a w run in one call


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    model = tiny_pipeline_folder(root / "model", scheduler=DDPMScheduler(num_train_timesteps=100))
    out = root / "out"
    argv = ["--model", str(model), "--out", str(out), "--weights", ",".join(f"{w:g}" for w in WEIGHTS),
            "--seeds-per-prompt", str(SEEDS), "--prompts-per-split", str(PROMPTS), "--steps", str(STEPS),
            "--vae-samples", str(VAE_SAMPLES), "--device", "cpu"]
    assert evaluate.main(argv) == 0
    return model, out, json.loads((out / "eval.json").read_text())


def test_eval_json_structure(evaluated):
    _, out, report = evaluated
    assert [e["w"] for e in report["sweep"]] == list(WEIGHTS)
    assert [e["guidance_scale"] for e in report["sweep"]] == [w + 1 for w in WEIGHTS]
    for entry in report["sweep"]:
        for split in metrics.SPLITS:
            assert entry["adherence"][split]["total"] == PROMPTS * SEEDS
            assert set(entry["attribute_accuracy"][split]) == set(metrics.ATTRIBUTES)
    assert len(report["samples"]) == len(WEIGHTS) * 2 * PROMPTS * SEEDS
    assert report["fid_kid"] == {"skipped": "no --fid-weights given"}
    assert report["best"]["w"] in WEIGHTS
    assert Image.open(out / "adherence_vs_guidance.png").size == PLOT_SIZE
    for w in WEIGHTS:
        assert (out / f"grid_w{w:g}.png").is_file()
    assert json.loads(json.dumps(report["config"]))["seeds_per_prompt"] == SEEDS


def test_numbers_agree_with_reading_the_saved_images_again(evaluated):
    _, out, report = evaluated
    scenes = {p["prompt"]: p["scene"] for p in report["prompts"]}
    for sample in report["samples"]:
        image = Image.open(out / sample["file"]).convert("RGB")
        assert image.size == (32, 32)
        read = read_scene(image)
        assert json.loads(json.dumps(_as_dict(read))) == sample["read"]
        truth = _scene(scenes[sample["prompt"]])
        assert metrics.adherence(metrics.prompt_statement(truth), read) == sample["adherent"]
    for entry in report["sweep"]:
        for split in metrics.SPLITS:
            flags = [s["adherent"] for s in report["samples"] if s["w"] == entry["w"] and s["split"] == split]
            assert entry["adherence"][split]["rate"] == pytest.approx(sum(flags) / len(flags))
            for background, rate in entry["adherence_by_background"][split].items():
                flags = [s["adherent"] for s in report["samples"] if s["w"] == entry["w"]
                         and s["split"] == split and scenes[s["prompt"]]["background"] == background]
                assert rate == {"rate": pytest.approx(sum(flags) / len(flags)), "correct": sum(flags),
                                "total": len(flags)}
            assert sum(r["total"] for r in entry["adherence_by_background"][split].values()) == PROMPTS * SEEDS
        per_prompt = []
        for prompt in scenes:
            files = [s["file"] for s in report["samples"] if s["w"] == entry["w"] and s["prompt"] == prompt]
            pixels = [np.asarray(Image.open(out / f), dtype=np.float64) / 255 for f in files]
            pairs = [math.sqrt(np.mean((a - b) ** 2)) for i, a in enumerate(pixels) for b in pixels[i + 1:]]
            per_prompt.append(sum(pairs) / len(pairs))
        assert entry["diversity"]["all"] == pytest.approx(sum(per_prompt) / len(per_prompt))


def test_images_are_stock_diffusers_samples_at_guidance_scale_w_plus_1(evaluated):
    """Same seed, scheduler and steps through stock StableDiffusionPipeline, one image per call, give each saved
    image, although the evaluation sampled all prompts and seeds of a w in one batch."""
    model, out, report = evaluated
    stock = StableDiffusionPipeline.from_pretrained(str(model), safety_checker=None,
                                                    requires_safety_checker=False)
    stock.scheduler = make_scheduler("dpm++", stock.scheduler.config)
    stock.set_progress_bar_config(disable=True)
    at_w = [s for s in report["samples"] if s["w"] == WEIGHTS[-1]]
    assert len({s["prompt"] for s in at_w}) == 2 * PROMPTS and 2 * PROMPTS * SEEDS <= BATCH
    for sample in at_w:
        image = stock(sample["prompt"], num_inference_steps=STEPS, guidance_scale=WEIGHTS[-1] + 1, height=32,
                      width=32, generator=torch.Generator("cpu").manual_seed(sample["seed"]),
                      output_type="np").images[0]
        saved = np.asarray(Image.open(out / sample["file"]), dtype=np.float64) / 255
        assert np.abs(image - saved).max() <= 1.5 / 255  # 8-bit rounding only


def test_seeds_are_paired_across_weights(evaluated):
    _, _, report = evaluated
    keys = {w: sorted((s["prompt"], s["seed"]) for s in report["samples"] if s["w"] == w) for w in WEIGHTS}
    assert keys[WEIGHTS[0]] == keys[WEIGHTS[1]]
    assert len(set(keys[WEIGHTS[0]])) == 2 * PROMPTS * SEEDS


def test_vae_figures_match_an_independent_psnr(evaluated):
    model, _, report = evaluated
    vae = AutoencoderKL.from_pretrained(str(model / "vae")).eval()
    data = open_dataset("shapes", resolution=32, split="test", size=VAE_SAMPLES)
    pixel_values = torch.stack([data[i]["pixel_values"] for i in range(VAE_SAMPLES)])
    with torch.no_grad():
        recon = vae.decode(vae.encode(pixel_values).latent_dist.mode()).sample
    unit = lambda t: ((t.double() + 1) / 2).clamp(0, 1)  # noqa: E731
    mse = ((unit(pixel_values) - unit(recon)) ** 2).mean(dim=(1, 2, 3))
    assert report["vae"]["images"] == VAE_SAMPLES and report["vae"]["split"] == "test"
    assert report["vae"]["psnr"] == pytest.approx(float((10 * torch.log10(1 / mse)).mean()), rel=1e-4)
    assert -1 <= report["vae"]["ssim"] <= 1
    # the readback of those same reconstructions, scored independently
    expected = metrics.readback([to_pil(x) for x in recon], [data.scene(i) for i in range(VAE_SAMPLES)])
    assert report["vae"]["readback"] == expected
    # and of the held-out pairs' scenes, which the VAE must also reconstruct for stage 2 to draw them
    held_out = open_dataset("shapes", resolution=32, split="heldout", size=VAE_SAMPLES)
    pixel_values = torch.stack([held_out[i]["pixel_values"] for i in range(VAE_SAMPLES)])
    with torch.no_grad():
        recon = vae.decode(vae.encode(pixel_values).latent_dist.mode()).sample
    expected = metrics.readback([to_pil(x) for x in recon], [held_out.scene(i) for i in range(VAE_SAMPLES)])
    assert report["vae"]["readback_held_out"] == expected


def test_prompt_set_splits():
    prompts = evaluate.build_prompt_set(prompts_per_split=6, max_objects=3, seed=0)
    assert [p.split for p in prompts] == ["seen"] * 6 + ["held_out"] * 6
    assert len({p.prompt for p in prompts}) == 12
    for p in prompts:
        pairs = {(o.colour, o.shape) for o in p.scene.objects}
        assert bool(pairs & shapes.HELD_OUT) == (p.split == "held_out")
        assert p.prompt == shapes.canonical_prompt(p.scene)


@pytest.mark.parametrize("per_split", [12, 24, 48])
def test_prompt_set_is_stratified_over_pairs_backgrounds_and_sizes(per_split):
    """Held-out prompts cover every (held-out pair, background) cell equally, and from 24 prompts on every
    (pair, background, size) cell; seen ones spread over backgrounds and sizes equally and use a distinct seen
    pair per prompt until the pairs run out."""
    prompts = evaluate.build_prompt_set(prompts_per_split=per_split, max_objects=1, seed=3)
    held_out = [p.scene for p in prompts if p.split == "held_out"]
    seen = [p.scene for p in prompts if p.split == "seen"]
    assert len(held_out) == len(seen) == per_split and len({p.prompt for p in prompts}) == 2 * per_split
    cells = Counter(((s.objects[0].colour, s.objects[0].shape), s.background) for s in held_out)
    assert set(cells) == set(itertools.product(shapes.HELD_OUT, shapes.BACKGROUNDS))
    assert set(cells.values()) == {per_split // 12}
    for scenes in (held_out, seen):
        assert Counter(s.objects[0].size for s in scenes) == {size: per_split // 2 for size in shapes.SIZES}
    if per_split % 24 == 0:
        cells = Counter(((s.objects[0].colour, s.objects[0].shape), s.background, s.objects[0].size)
                        for s in held_out)
        assert set(cells) == set(itertools.product(shapes.HELD_OUT, shapes.BACKGROUNDS, shapes.SIZES))
        assert set(cells.values()) == {per_split // 24}
    assert Counter(s.background for s in seen) == {b: per_split // 3 for b in shapes.BACKGROUNDS}
    seen_pairs = [(s.objects[0].colour, s.objects[0].shape) for s in seen]
    assert len(set(seen_pairs)) == min(per_split, len(shapes.SEEN_PAIRS))
    assert set(seen_pairs) <= set(shapes.SEEN_PAIRS)
    # a pure function of the seed; another seed draws other scenes
    assert evaluate.build_prompt_set(prompts_per_split=per_split, max_objects=1, seed=3) == prompts
    assert evaluate.build_prompt_set(prompts_per_split=per_split, max_objects=1, seed=4) != prompts


def test_simple_prompts_state_no_background_so_get_no_background_breakdown(evaluated, tmp_path):
    """A simple prompt ("a red circle") leaves the background to the model: nothing to group by."""
    model, _, _ = evaluated
    argv = ["--model", str(model), "--out", str(tmp_path), "--weights", "0", "--seeds-per-prompt", "1",
            "--prompts-per-split", "1", "--steps", "1", "--vae-samples", "0", "--device", "cpu", "--simple"]
    assert evaluate.main(argv) == 0
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["sweep"][0]["adherence_by_background"] == {"seen": {}, "held_out": {}}


def test_simple_prompt_set_names_colour_and_shape_only():
    prompts = evaluate.build_prompt_set(prompts_per_split=12, max_objects=1, seed=0, simple=True)
    held_out = [p for p in prompts if p.split == "held_out"]
    assert len(prompts) - len(held_out) == 12
    assert {(p.scene.objects[0].colour, p.scene.objects[0].shape) for p in held_out} == set(shapes.HELD_OUT)
    for p in prompts:
        assert p.scene.simple and p.prompt == shapes.canonical_prompt(p.scene) and len(p.prompt.split()) == 3
    assert evaluate.EvalConfig(model="x", simple=True).objects == 1


@pytest.mark.parametrize("argv, message", [
    (["--model", "/nonexistent/model"], "model_index.json"),
    (["--model", "x", "--weights", "0,a"], "--weights"),
    (["--model", "x", "--weights", "1,1"], "--weights"),
    (["--model", "x", "--seeds-per-prompt", "0"], "--seeds-per-prompt"),
    (["--model", "x", "--batch-size", "0"], "--batch-size"),
    (["--out", "y"], "--model is required"),
])
def test_bad_input_gives_one_line_error(argv, message, capsys, tmp_path):
    assert evaluate.main(argv + ["--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]


def _as_dict(scene):
    return {"objects": [vars(o) for o in scene.objects], "background": scene.background, "simple": scene.simple}


def _scene(data):
    objects = tuple(shapes.ShapeObject(**o) for o in data["objects"])
    return shapes.Scene(objects=objects, background=data["background"], simple=data["simple"])

