"""Few-step sampling side by side: the teacher and its distilled student, adherence against U-Net evaluations.

    python benchmarks/few_step.py --teacher runs/quickstart/stage2 --student runs/distill/student \
        --out runs/distill/few_step [--distill-steps 300] [--lcm-lora runs/distill/lcm_lora --lora-rank 8]

In one run, on the same prompts and seeds (`ldm-eval`'s stratified shapes prompts, seen and held-out), it
measures held-out and seen adherence and images/s for
- stock `StableDiffusionPipeline` with the teacher, 25 dpm++ steps, guidance at the teacher's best w (2 U-Net
  evaluations a step);
- the teacher in our pipeline with dpm++ (our best few-step solver) at 4, 8 and 12 steps, same w;
- the student (LCM) at 1, 2, 4 and 8 steps, one evaluation a step, at the same w and, at 4 steps, at each
  `--student-weights` w (its own best may differ);
- with `--lcm-lora DIR`, the teacher with that LCM-LoRA (`distill_ldm.py --lora-rank`) at 1, 2, 4 and 8 LCM
  steps, guidance_scale 1 (its w is in its weights), and the adapter file's size against the U-Net's.
`--lcm-lora-only` measures just those rows and the teacher's dpm++ 4 as this run's images/s reference (for a
busy machine). If `--student` (or `--lcm-lora`) holds no distilled model yet, it is distilled first
(`distill_ldm.py`, the same `--distill-steps`) and the wall time recorded in `distill_wall_time.json` beside
it. Images/s counts only the pipeline calls (batched as ldm-eval batches them, so text encoding and VAE decoding
are in it; reading the images back is not). Prints a table, writes `OUT/few_step.json` and
`OUT/adherence_vs_evaluations.png`.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from diffusers import StableDiffusionPipeline  # noqa: E402

import distill_ldm  # noqa: E402
from ldm.lora import LORA_WEIGHTS_NAME  # noqa: E402
from pipelines.evaluate import EvalConfig, build_prompt_set, run_sweep  # noqa: E402
from pipelines.folder import load_pipeline  # noqa: E402
from pipelines.lora import apply_loras  # noqa: E402
from pipelines.schedulers import make_scheduler  # noqa: E402

STOCK_STEPS = 25
TEACHER_STEPS = (4, 8, 12)
STUDENT_STEPS = (1, 2, 4, 8)
WALL_TIME_FILE = "distill_wall_time.json"


class TimedPipe:
    """A pipeline whose calls are timed and counted (images), so images/s leaves out reading them back."""

    def __init__(self, pipe):
        self.pipe, self.seconds, self.images = pipe, 0.0, 0

    def __call__(self, *args, **kwargs):
        started = time.perf_counter()
        result = self.pipe(*args, **kwargs)
        self.seconds += time.perf_counter() - started
        self.images += len(result.images)
        return result


def measure(name: str, pipe, *, prompts, w: float, steps: int, evaluations: int, args, out: Path) -> dict:
    """Adherence per split and images/s of `pipe` at guidance weight `w` and `steps` steps."""
    config = EvalConfig(model="-", weights=f"{w:g}", steps=steps, seeds_per_prompt=args.seeds_per_prompt,
                        prompts_per_split=args.prompts_per_split, objects=1, resolution=32, seed=0)
    pipe(prompts[0].prompt, num_inference_steps=steps, guidance_scale=w + 1, output_type="latent")  # warm-up
    timed = TimedPipe(pipe)
    samples, _ = run_sweep(timed, prompts, config, out / name)
    rates = {split: float(np.mean([s["adherent"] for s in samples if s["split"] == split]))
             for split in ("held_out", "seen")}
    # Each stated attribute read back right, over both splits: still informative where a weak teacher gets few
    # images entirely right.
    attributes = {key: float(np.mean([s["attributes"][key] for s in samples if key in s["attributes"]]))
                  for key in sorted({key for s in samples for key in s["attributes"]})}
    row = {"setting": name, "w": w, "steps": steps, "unet_evaluations": evaluations, **rates,
           "attributes": attributes, "images": timed.images, "images_per_s": timed.images / timed.seconds}
    print(f"{name:<28} w={w:<4g} evals={evaluations:<3d} held-out {rates['held_out']:6.1%}  seen "
          f"{rates['seen']:6.1%}  {row['images_per_s']:7.1f} images/s  "
          + " ".join(f"{key} {value:.0%}" for key, value in attributes.items()), flush=True)
    return row


def cost_model(rows: list[dict]) -> dict:
    """Least-squares fit of seconds per image = fixed + per_eval · U-Net evaluations over our pipeline's rows
    (teacher and student at the main w): what a call costs besides the U-Net (text encoder, VAE decoder,
    scheduler, Python) against one U-Net evaluation, and the images/s ratio to stock that the fit allows at 4
    evaluations. With fixed > 0 that ratio stays below 50 / 4 = 12.5, however good the student."""
    ours = [r for r in rows if r["setting"].startswith(("teacher", "student")) and "(" not in r["setting"]]
    evals = np.array([r["unet_evaluations"] for r in ours], dtype=float)
    seconds = np.array([1 / r["images_per_s"] for r in ours])
    per_eval, fixed = np.polyfit(evals, seconds, 1)
    stock_seconds = 1 / rows[0]["images_per_s"]
    return {"fixed_ms": 1000 * fixed, "per_eval_ms": 1000 * per_eval,
            "ceiling_at_4": stock_seconds / (fixed + 4 * per_eval)}


def distil_if_needed(args, folder: str, done: str, extra: list[str]) -> float:
    """The distillation's wall time in seconds: run now (unless `folder/done` exists), or read from `folder`
    (NaN if it was distilled outside this script)."""
    record = Path(folder) / WALL_TIME_FILE
    if not (Path(folder) / done).is_file():
        started = time.perf_counter()
        argv = ["--teacher", args.teacher, "--output-dir", folder, "--max-steps", str(args.distill_steps), *extra]
        if distill_ldm.main(argv) != 0:
            raise SystemExit("the distillation failed")
        record.write_text(json.dumps({"seconds": time.perf_counter() - started, "argv": argv}) + "\n")
    return json.loads(record.read_text())["seconds"] if record.is_file() else float("nan")  # distilled elsewhere


def lcm_lora_rows(args, prompts, out: Path) -> tuple[list[dict], dict]:
    """The teacher with the LCM-LoRA at STUDENT_STEPS, no CFG; and {distill_seconds, adapter and U-Net bytes}."""
    seconds = distil_if_needed(args, args.lcm_lora, LORA_WEIGHTS_NAME,
                               ["--lora-rank", str(args.lora_rank), *args.lora_args.split()])
    pipe = load_pipeline(args.teacher)
    apply_loras(pipe, [(str(Path(args.lcm_lora) / LORA_WEIGHTS_NAME), 1.0)])
    pipe.scheduler = make_scheduler("lcm", pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    rows = [measure(f"lcm-lora lcm {steps}", pipe, prompts=prompts, w=0.0, steps=steps, evaluations=steps,
                    args=args, out=out) for steps in STUDENT_STEPS]
    sizes = {"distill_seconds": seconds,
             "adapter_bytes": (Path(args.lcm_lora) / LORA_WEIGHTS_NAME).stat().st_size,
             "unet_bytes": (Path(args.teacher) / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size}
    print(f"LCM-LoRA: adapter {sizes['adapter_bytes'] / 1e6:.2f} MB against the U-Net's "
          f"{sizes['unet_bytes'] / 1e6:.2f} MB; distilled in {seconds / 60:.1f} min", flush=True)
    return rows, sizes


def plot(rows: list[dict], path: Path) -> None:
    """Adherence (left) and the rate of each stated attribute read back right (right, mean over attributes)
    against U-Net evaluations per image (log axis): teacher with dpm++, student with LCM, stock as a star."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=100)
    w = rows[0]["w"]
    series = {"teacher, ours (dpm++)": "teacher dpm++", "student (LCM)": "student lcm",
              "LCM-LoRA (LCM, no CFG)": "lcm-lora lcm"}
    values = {"held-out": lambda r: r["held_out"], "seen": lambda r: r["seen"],
              "attributes": lambda r: float(np.mean(list(r["attributes"].values())))}
    for label, prefix in series.items():
        points = sorted((r for r in rows if r["setting"].startswith(prefix) and "(" not in r["setting"]),
                        key=lambda r: r["unet_evaluations"])
        if not points:
            continue
        xs = [r["unet_evaluations"] for r in points]
        left.plot(xs, [values["held-out"](r) for r in points], "-o", label=f"{label}, held-out")
        left.plot(xs, [values["seen"](r) for r in points], "--s", label=f"{label}, seen")
        right.plot(xs, [values["attributes"](r) for r in points], "-o", label=label)
    stock = rows[0]
    left.plot([stock["unet_evaluations"]], [stock["held_out"]], "*", markersize=12, color="black",
              label="stock, 25 steps, held-out")
    right.plot([stock["unet_evaluations"]], [values["attributes"](stock)], "*", markersize=12, color="black",
               label="stock, 25 steps")
    for ax, title in ((left, "prompt adherence (every attribute right)"),
                      (right, "attributes read back right (mean over attributes)")):
        ax.set(xscale="log", xlabel="U-Net evaluations per image", ylim=(-0.03, 1.03), title=f"{title}, w = {w:g}")
        ax.set_xticks([1, 2, 4, 8, 16, 24, 50], ["1", "2", "4", "8", "16", "24", "50"])
        ax.grid(True, color="#e1e1e1")
        ax.legend(fontsize=7, loc="lower right")
        ax.title.set_fontsize(10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--student", required=True)
    parser.add_argument("--out", default="runs/distill/few_step")
    parser.add_argument("--w", type=float, default=None, help="guidance weight (default: the teacher's best, "
                                                              "from TEACHER/../eval/eval.json)")
    parser.add_argument("--student-weights", default="0,1,2,4", help="extra w values for the student at 4 steps")
    parser.add_argument("--prompts-per-split", type=int, default=48)
    parser.add_argument("--seeds-per-prompt", type=int, default=4)
    parser.add_argument("--distill-steps", type=int, default=300)
    parser.add_argument("--distill-args", default="", help="more ldm-distill flags when distilling here")
    parser.add_argument("--lcm-lora", default="", help="also measure this LCM-LoRA folder (distilled here first "
                                                         "if it holds no adapter yet)")
    parser.add_argument("--lora-rank", type=int, default=8, help="rank when distilling the LCM-LoRA here")
    parser.add_argument("--lora-args", default="", help="more ldm-distill flags for the LCM-LoRA")
    parser.add_argument("--lcm-lora-only", action="store_true",
                        help="with --lcm-lora: measure only its rows and, as this run's images/s reference, the "
                             "teacher with dpm++ at 4 steps (for a busy machine; the other rows of the same prompts "
                             "and seeds come from an earlier run)")
    parser.add_argument("--replot", action="store_true", help="only redraw the figure from OUT/few_step.json")
    args = parser.parse_args()
    if args.lcm_lora_only and not args.lcm_lora:
        parser.error("--lcm-lora-only needs --lcm-lora")
    logging.basicConfig(level=logging.WARNING)
    out = Path(args.out)
    if args.replot:
        plot(json.loads((out / "few_step.json").read_text())["rows"], out / "adherence_vs_evaluations.png")
        return
    out.mkdir(parents=True, exist_ok=True)
    distill_seconds = (0.0 if args.lcm_lora_only else
                       distil_if_needed(args, args.student, "model_index.json", args.distill_args.split()))
    eval_json = Path(args.teacher).parent / "eval" / "eval.json"
    w = args.w if args.w is not None else json.loads(eval_json.read_text())["best"]["w"]
    prompts = build_prompt_set(prompts_per_split=args.prompts_per_split, max_objects=1, seed=0)
    print(f"{len(prompts)} prompts x {args.seeds_per_prompt} seeds, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; distillation took {distill_seconds / 60:.1f} min", flush=True)

    rows = []
    if not args.lcm_lora_only:
        stock = StableDiffusionPipeline.from_pretrained(args.teacher, local_files_only=True)
        stock.scheduler = make_scheduler("dpm++", stock.scheduler.config)
        stock.set_progress_bar_config(disable=True)
        rows.append(measure("stock dpm++ 25", stock, prompts=prompts, w=w, steps=STOCK_STEPS,
                            evaluations=2 * STOCK_STEPS if w > 0 else STOCK_STEPS, args=args, out=out))
    teacher = load_pipeline(args.teacher)
    teacher.scheduler = make_scheduler("dpm++", teacher.scheduler.config)
    teacher.set_progress_bar_config(disable=True)
    for steps in TEACHER_STEPS[:1] if args.lcm_lora_only else TEACHER_STEPS:
        rows.append(measure(f"teacher dpm++ {steps}", teacher, prompts=prompts, w=w, steps=steps,
                            evaluations=2 * steps if w > 0 else steps, args=args, out=out))
    rows += [] if args.lcm_lora_only else student_rows(args, prompts, w, out)

    lcm_lora = {}
    if args.lcm_lora:
        lora_rows, lcm_lora = lcm_lora_rows(args, prompts, out)
        rows += lora_rows
    speedup = {r["setting"]: r["images_per_s"] / rows[0]["images_per_s"] for r in rows}
    print(f"images/s relative to {rows[0]['setting']}: " + ", ".join(f"{k} {v:.1f}x" for k, v in speedup.items()))
    costs = {}
    if not args.lcm_lora_only:  # the figure's reference star and the fit's reference are the stock row
        costs = cost_model(rows)
        print(f"per image: {costs['fixed_ms']:.2f} ms besides the U-Net + {costs['per_eval_ms']:.2f} ms per U-Net "
              f"evaluation, so 4 evaluations can be at most {costs['ceiling_at_4']:.1f}x the stock pipeline here")
        plot(rows, out / "adherence_vs_evaluations.png")
    result = {"w": w, "distill_seconds": distill_seconds, "rows": rows, "speedup_vs": rows[0]["setting"],
              "speedup": speedup, **({"cost_model": costs} if costs else {}),
              "prompts_per_split": args.prompts_per_split, "seeds_per_prompt": args.seeds_per_prompt,
              "threads": torch.get_num_threads(), **({"lcm_lora": lcm_lora} if lcm_lora else {})}
    (out / "few_step.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out / 'few_step.json'}")


def student_rows(args, prompts, w: float, out: Path) -> list[dict]:
    """The distilled student at STUDENT_STEPS and w, then at 4 steps at each `--student-weights` w."""
    rows = []
    student = load_pipeline(args.student)
    student.set_progress_bar_config(disable=True)
    for steps in STUDENT_STEPS:
        rows.append(measure(f"student lcm {steps}", student, prompts=prompts, w=w, steps=steps,
                            evaluations=steps, args=args, out=out))
    for extra_w in (float(v) for v in args.student_weights.split(",") if v.strip()):
        if extra_w != w:
            rows.append(measure(f"student lcm 4 (w={extra_w:g})", student, prompts=prompts, w=extra_w, steps=4,
                                evaluations=4, args=args, out=out))
    return rows


if __name__ == "__main__":
    main()
