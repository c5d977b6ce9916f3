"""Our two trainers with their defaults against a plain stock-parts loop, at equal CPU time, on one data source.

    OMP_NUM_THREADS=2 python benchmarks/defaults_vs_stock.py --data shapes:objects=1 --out runs/dvs \\
        --vae-steps 1500 --ldm-steps 2400

Arm `defaults` is the run of a new user (issue 18): `train_vae.py --data D --output-dir .. --resolution R
--max-steps S1`, then `train_ldm.py --data D --vae .. --output-dir .. --resolution R --max-steps S2`, nothing else.

Arm `stock` is the loop a user writes from diffusers' training examples with stock parts and the recipe the
issue names: an `AutoencoderKL` of the architecture train_vae picks at that resolution (cpu-f4 up to 32 px,
cpu-f8 above: `ldm.recipe.vae_preset_for`) trained on MSE + 1e-6 KL (AdamW 1e-3, batch 32,
scaling factor 1/std of its latents); then a `UNet2DConditionModel` with cpu-small's blocks and diffusers'
32 GroupNorm groups, and a 2-layer `CLIPTextModel` trained with it, v-prediction, AdamW 1e-3 constant,
conditioning dropout 0.1, an EMA (0.999 with warm-up) of both, the VAE encoding every batch as the diffusers
example does; sampled with DPM++ 2M. Its tokenizer is learned from the captions with ours (no CLIP vocabulary
can be downloaded here).

Each stock stage trains for as much **CPU time** as the same stage of the defaults arm took, measured on the
processes themselves (`getrusage`), so that load from other work on the machine favours neither arm; wall times
are printed too. Both models are then scored by `ldm-eval` with the same prompts, seeds, sampler, steps and
guidance weights: `ldm-eval` for shapes sources, `ldm-eval --task emoji` for the emoji set (`--reader emoji`,
with `--data emoji:heldouttones=1 --vae-data emoji` as the quickstart trains it), `benchmarks/patterns.py eval`
for its pattern folder (`--reader patterns`).

    OMP_NUM_THREADS=2 python benchmarks/defaults_vs_stock.py --reader emoji --data emoji:heldouttones=1 \
        --vae-data emoji --out runs/dvs_emoji --vae-steps 1500 --ldm-steps 2400
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, DPMSolverMultistepScheduler, UNet2DConditionModel
from diffusers.training_utils import EMAModel
from transformers import CLIPTextConfig, CLIPTextModel

from autoencoder import measure_scaling_factor, vae_scale_factor
from autoencoder.presets import VAE_PRESETS
from ldm.data import open_dataset
from ldm.recipe import vae_preset_for
from ldm.tokenizer import train_clip_tokenizer
from pipelines.evaluate import evaluate_vae
from pipelines.folder import save_pipeline_folder

ROOT = Path(__file__).resolve().parents[1]
STOCK_UNET = dict(block_out_channels=(64, 128), layers_per_block=1, attention_head_dim=(2, 4),
                  down_block_types=("CrossAttnDownBlock2D",) * 2, up_block_types=("CrossAttnUpBlock2D",) * 2)
STOCK_TEXT = dict(num_hidden_layers=2, hidden_size=128, num_attention_heads=4, intermediate_size=512)


def cpu_seconds() -> float:
    """CPU seconds (user + system) of this process and its finished children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run_timed(argv: list[str], log: Path) -> tuple[float, float]:
    """Run `python argv` from the repository root; (CPU seconds, wall seconds)."""
    cpu, wall = cpu_seconds(), time.perf_counter()
    with open(log, "w") as stream:
        subprocess.run([sys.executable, *argv], cwd=ROOT, check=True, stdout=stream, stderr=subprocess.STDOUT)
    return cpu_seconds() - cpu, time.perf_counter() - wall


def load_all(data: str, resolution: int) -> tuple[torch.Tensor, list[str]]:
    """Every training image (N, 3, R, R) in [-1, 1] and its caption, in memory, as a folder loader would."""
    dataset = open_dataset(data, resolution=resolution, crop="center")
    items = [dataset[i] for i in range(len(dataset))]
    return torch.stack([item["pixel_values"] for item in items]), [item["caption"] for item in items]


def stock_stage1(images: torch.Tensor, *, budget: float, resolution: int, seed: int) -> tuple[AutoencoderKL, int]:
    """MSE + KL on a stock AutoencoderKL until `budget` CPU seconds are spent; (vae, steps)."""
    torch.manual_seed(seed)
    preset, _ = vae_preset_for(resolution)  # the same architecture as the defaults arm's
    vae = AutoencoderKL(**{**VAE_PRESETS[preset], "sample_size": resolution})
    optimizer = torch.optim.AdamW(vae.parameters(), lr=1e-3)
    start, step = cpu_seconds(), 0
    while cpu_seconds() - start < budget:
        x = images[torch.randint(len(images), (32,))]
        posterior = vae.encode(x).latent_dist
        loss = torch.nn.functional.mse_loss(vae.decode(posterior.sample()).sample, x) + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step += 1
    with torch.no_grad():  # the LDM paper's scale: unit variance of the latents
        vae.register_to_config(scaling_factor=measure_scaling_factor(vae, [images[:512]]))
    return vae.eval().requires_grad_(False), step


def stock_stage2(vae, images: torch.Tensor, captions: list[str], *, budget: float, out: Path,
                 seed: int) -> int:
    """The diffusers-example loop with stock parts until `budget` CPU seconds; saves a pipeline folder."""
    tokenizer = train_clip_tokenizer(captions, out_dir=out / "tokenizer_learned", vocab_size=1024,
                                     model_max_length=32)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), max_position_embeddings=32,
                                                bos_token_id=tokenizer.bos_token_id,
                                                eos_token_id=tokenizer.eos_token_id,
                                                pad_token_id=tokenizer.pad_token_id, **STOCK_TEXT))
    latent = images.shape[-1] // vae_scale_factor(vae)
    unet = UNet2DConditionModel(sample_size=latent, in_channels=4, out_channels=4, cross_attention_dim=128,
                                **STOCK_UNET)
    noise_scheduler = DDPMScheduler(num_train_timesteps=1000, prediction_type="v_prediction")
    trained = torch.nn.ModuleList([unet, text_encoder])
    optimizer = torch.optim.AdamW(trained.parameters(), lr=1e-3)
    ema = EMAModel(trained.parameters(), decay=0.999, use_ema_warmup=True, power=2 / 3)
    start, step = cpu_seconds(), 0
    while cpu_seconds() - start < budget:
        index = torch.randint(len(images), (64,))
        texts = ["" if torch.rand(()) < 0.1 else captions[i] for i in index.tolist()]
        ids = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids
        with torch.no_grad():
            latents = vae.encode(images[index]).latent_dist.sample() * vae.config.scaling_factor
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, 1000, (len(index),))
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        prediction = unet(noisy, timesteps, text_encoder(ids)[0]).sample
        loss = torch.nn.functional.mse_loss(prediction, noise_scheduler.get_velocity(latents, noise, timesteps))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        ema.step(trained.parameters())
        step += 1
    ema.copy_to(trained.parameters())
    sampler = DPMSolverMultistepScheduler.from_config(noise_scheduler.config)
    save_pipeline_folder(out, vae=vae, text_encoder=text_encoder.eval(), tokenizer=tokenizer, unet=unet.eval(),
                         scheduler=sampler)
    return step


def evaluate(model: Path, out: Path, args) -> dict:
    """{'psnr', 'best_w', 'held_out', 'seen', 'held_out_by_w', 'seen_by_w'} (adherence in %) of one arm."""
    if args.reader == "patterns":
        argv = ["benchmarks/patterns.py", "eval", "--model", str(model), "--out", str(out), "--weights", args.weights,
                "--prompts", str(args.prompts), "--seeds", str(args.seeds), "--resolution", str(args.resolution)]
        run_timed(argv, out.with_suffix(".log"))
        report = json.loads((out / "eval.json").read_text())
        vae = evaluate_vae(AutoencoderKL.from_pretrained(str(model / "vae")), data=args.vae_data, samples=256,
                           resolution=args.resolution)
        by_w = {split: {e["w"]: round(100 * e[split], 1) for e in report["sweep"]} for split in ("held_out", "seen")}
        best = report["best"]
        return {"psnr": vae.get("psnr"), "best_w": best["w"], "held_out": round(100 * best["held_out"], 1),
                "seen": round(100 * best["seen"], 1), "held_out_by_w": by_w["held_out"], "seen_by_w": by_w["seen"]}
    task = (["--task", "emoji"] if args.reader == "emoji" else
            ["--objects", str(args.objects), *(["--simple"] if args.simple else [])])
    argv = ["-m", "pipelines.evaluate", "--model", str(model), "--out", str(out), "--weights", args.weights,
            "--steps", "20", "--scheduler", "dpm++", "--resolution", str(args.resolution),
            "--vae-data", args.vae_data, "--prompts-per-split", str(args.prompts), "--seeds-per-prompt",
            str(args.seeds), *task]
    run_timed(argv, out.with_suffix(".log"))
    report = json.loads((out / "eval.json").read_text())
    best = report["best"]
    return {"psnr": report["vae"].get("psnr"), "best_w": best["w"],
            "held_out": round(100 * best["held_out_adherence"], 1), "seen": round(100 * best["seen_adherence"], 1),
            "held_out_by_w": {e["w"]: round(100 * e["adherence"]["held_out"]["rate"], 1) for e in report["sweep"]},
            "seen_by_w": {e["w"]: round(100 * e["adherence"]["seen"]["rate"], 1) for e in report["sweep"]}}


def summary(name: str, scores: dict, times: dict) -> dict:
    return {"arm": name, "stage1_cpu_s": round(times["stage1_cpu"]), "stage1_wall_s": round(times["stage1_wall"]),
            "psnr_db": scores["psnr"], "stage2_cpu_s": round(times["stage2_cpu"]),
            "stage2_wall_s": round(times["stage2_wall"]), "steps": times.get("steps"),
            **{k: scores[k] for k in ("best_w", "held_out", "seen", "held_out_by_w", "seen_by_w")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="shapes:objects=1", help="the data of both stages and both arms")
    parser.add_argument("--vae-data", default=None, help="stage 1's data in both arms (default: --data)")
    parser.add_argument("--reader", default="shapes", choices=("shapes", "emoji", "patterns"),
                        help="what scores the samples: ldm-eval's shapes or emoji readers, or benchmarks/patterns.py's "
                             "for a folder it made")
    parser.add_argument("--out", default="runs/defaults_vs_stock")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--vae-steps", type=int, default=1500, help="stage-1 steps of the defaults arm")
    parser.add_argument("--ldm-steps", type=int, default=2400, help="stage-2 steps of the defaults arm")
    parser.add_argument("--objects", type=int, default=1, help="objects per evaluation prompt (match --data)")
    parser.add_argument("--simple", action="store_true", help="evaluate with the simple variant's prompts")
    parser.add_argument("--weights", default="0,1,3,6", help="guidance weights w (the issue's)")
    parser.add_argument("--prompts", type=int, default=48, help="evaluation prompts per split")
    parser.add_argument("--seeds", type=int, default=4, help="evaluation seeds per prompt")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.vae_data = args.vae_data or args.data
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    common = ["--resolution", str(args.resolution), "--seed", str(args.seed)]

    ours: dict = {}
    ours["stage1_cpu"], ours["stage1_wall"] = run_timed(
        ["train_vae.py", "--data", args.vae_data, *common, "--output-dir", str(out / "defaults_vae"),
         "--max-steps", str(args.vae_steps)],
        out / "defaults_vae.log")
    ours["stage2_cpu"], ours["stage2_wall"] = run_timed(
        ["train_ldm.py", "--data", args.data, *common, "--vae", str(out / "defaults_vae" / "vae"), "--output-dir",
         str(out / "defaults"), "--max-steps", str(args.ldm_steps)], out / "defaults.log")
    ours["steps"] = [args.vae_steps, args.ldm_steps]
    print(f"defaults: stage 1 {ours['stage1_cpu']:.0f} CPU s ({ours['stage1_wall']:.0f} s wall), stage 2 "
          f"{ours['stage2_cpu']:.0f} CPU s ({ours['stage2_wall']:.0f} s wall)", flush=True)

    stock: dict = {}
    cpu, wall = cpu_seconds(), time.perf_counter()
    images, captions = load_all(args.data, args.resolution)
    vae_images = images if args.vae_data == args.data else load_all(args.vae_data, args.resolution)[0]
    vae, steps1 = stock_stage1(vae_images, budget=ours["stage1_cpu"] - (cpu_seconds() - cpu),
                               resolution=args.resolution, seed=args.seed)
    stock["stage1_cpu"], stock["stage1_wall"] = cpu_seconds() - cpu, time.perf_counter() - wall
    cpu, wall = cpu_seconds(), time.perf_counter()
    steps2 = stock_stage2(vae, images, captions, budget=ours["stage2_cpu"], out=out / "stock", seed=args.seed)
    stock["stage2_cpu"], stock["stage2_wall"] = cpu_seconds() - cpu, time.perf_counter() - wall
    stock["steps"] = [steps1, steps2]
    print(f"stock: {steps1} stage-1 and {steps2} stage-2 steps in the same CPU time", flush=True)

    rows = [summary("defaults", evaluate(out / "defaults", out / "eval_defaults", args), ours),
            summary("stock", evaluate(out / "stock", out / "eval_stock", args), stock)]
    (out / "results.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2) + "\n")
    print("| arm | stage 1 CPU s (wall) | PSNR dB | stage 2 CPU s (wall) | steps | best w | held-out | seen |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        psnr = "n/a" if r["psnr_db"] is None or math.isnan(r["psnr_db"]) else f"{r['psnr_db']:.1f}"
        print(f"| {r['arm']} | {r['stage1_cpu_s']} ({r['stage1_wall_s']}) | {psnr} | {r['stage2_cpu_s']} "
              f"({r['stage2_wall_s']}) | {r['steps']} | {r['best_w']:g} | {r['held_out']}% | {r['seen']}% |")
    for r in rows:
        print(f"{r['arm']}: held-out by w {r['held_out_by_w']}, seen by w {r['seen_by_w']}")
    print(f"held-out ratio defaults / stock: {rows[0]['held_out'] / max(rows[1]['held_out'], 1e-9):.2f}")


if __name__ == "__main__":
    main()
