"""How steady is a stage-2 recipe? Train it with several seeds on one stage-1 VAE and evaluate every run.

    python benchmarks/stage2_seeds.py --vae runs/quickstart/stage1/vae --work runs/seeds --seeds 0,1,2,3 \
        --variant "quickstart=" --variant "no floor=--snr-floor 0" --parallel 1

Each run is the quickstart's own stage-2 command (`quickstart.stage_commands`, full data) with `--seed` and the
variant's changes, on the given VAE, then the quickstart's `ldm-eval` command. A change `--flag value` replaces
the quickstart's value (or adds the flag), `--flag off` removes it (the trainer's default then applies). It
prints, per variant and seed, the best w's held-out and seen adherence and how often the position was right,
then each variant's mean and worst seed, and writes them to `<work>/seeds.json`. Runs that finished are
reused; `--parallel` runs that many at once (on a GPU; on a CPU, one at a time with every core is faster).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import quickstart
from ldm.latent_shards import MANIFEST, TRAINING_CACHE_DIR


def apply_changes(argv: list[str], changes: list[str]) -> list[str]:
    """`argv` with each `--flag value` of `changes` replacing that flag's value (or appended), `--flag off`
    removing the flag and its value, and a bare `--flag` added. Flags are `--x` tokens; a value is the token
    after a flag when it is not itself a flag."""
    def pairs(tokens: list[str]) -> list[tuple[str, str | None]]:
        out: list[tuple[str, str | None]] = []
        for token in tokens:
            if token.startswith("--"):
                out.append((token, None))
            elif out and out[-1][1] is None:
                out[-1] = (out[-1][0], token)
            else:
                raise ValueError(f"{token!r} follows no flag in {' '.join(tokens)!r}.")
        return out

    result = pairs(argv)
    for flag, value in pairs(changes):
        if value == "off":
            result = [(f, v) for f, v in result if f != flag]
        elif any(f == flag for f, _ in result):
            result = [(f, value if f == flag else v) for f, v in result]
        else:
            result.append((flag, value))
    return [token for flag, value in result for token in ((flag,) if value is None else (flag, value))]


def seed_summary(report: dict) -> dict:
    """At the eval's best w (`report["best"]`, the highest held-out adherence): held-out and seen adherence and
    position accuracy."""
    best = next(entry for entry in report["sweep"] if entry["w"] == report["best"]["w"])
    accuracy = best["attribute_accuracy"]
    return {"w": best["w"], "held_out": best["adherence"]["held_out"]["rate"],
            "seen": best["adherence"]["seen"]["rate"],
            "position_held_out": accuracy["held_out"]["position"]["rate"],
            "position_seen": accuracy["seen"]["position"]["rate"]}


def run_commands(vae: Path, run_dir: Path, seed: int, changes: list[str]) -> tuple[list[str], list[str]]:
    """The quickstart's stage-2 and eval argv for one run in `run_dir`."""
    cfg = quickstart.QuickstartConfig(output_dir=str(run_dir), seed=seed)
    commands = {name: argv for name, _, argv in quickstart.stage_commands(cfg, run_dir)}
    module, options = commands["stage2"][:2], commands["stage2"][2:]  # ["-m", "train_ldm"], then flags
    return [*module, *apply_changes(options, ["--vae", str(vae), *changes])], commands["eval"]


def _run(argv: list[str], log: Path, threads: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    with log.open("w") as handle:
        if subprocess.run([sys.executable, *argv], stdout=handle, stderr=subprocess.STDOUT, env=env).returncode:
            raise RuntimeError(f"{argv[1]} failed; see {log}")


def one_run(vae: Path, work: Path, name: str, seed: int, changes: list[str], threads: int) -> dict:
    run_dir = work / f"{name.replace(' ', '_')}-seed{seed}"
    train, evaluation = run_commands(vae, run_dir, seed, changes)
    stage2, report = run_dir / "stage2", run_dir / "eval" / "eval.json"
    if not (stage2 / "model_index.json").exists():
        stage2.mkdir(parents=True, exist_ok=True)
        shared, own = work / TRAINING_CACHE_DIR, stage2 / TRAINING_CACHE_DIR
        if (shared / MANIFEST).exists() and not own.exists():  # encode the data once; train_ldm re-encodes
            shutil.copytree(shared, own)                         # on a key mismatch
        _run(train, run_dir / "train.log", threads)
        if not (shared / MANIFEST).exists():
            shutil.copytree(own, shared, dirs_exist_ok=True)
    if not report.exists():
        _run(evaluation, run_dir / "eval.log", threads)
    return {"variant": name, "seed": seed, **seed_summary(json.loads(report.read_text()))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vae", type=Path, required=True, help="a stage-1 VAE folder (train_vae output's vae/)")
    parser.add_argument("--work", type=Path, required=True, help="folder for the runs and seeds.json")
    parser.add_argument("--seeds", default="0,1,2,3", help="comma-separated stage-2 seeds")
    parser.add_argument("--variant", action="append", default=None,
                        help="NAME=CHANGES, e.g. 'no floor=--snr-floor 0' (repeatable; default: the quickstart)")
    parser.add_argument("--parallel", type=int, default=1, help="runs at once")
    args = parser.parse_args()
    try:
        try:
            seeds = [int(s) for s in args.seeds.split(",")]
        except ValueError:
            raise ValueError(f"--seeds takes comma-separated integers, got {args.seeds!r}.") from None
        variants = [v.partition("=") for v in (args.variant or ["quickstart="])]
        if any(not sep or not name for name, sep, _ in variants) or args.parallel < 1:
            raise ValueError("each --variant is NAME=CHANGES and --parallel is at least 1.")
        for _, _, changes in variants:
            apply_changes([], changes.split())  # bad changes fail here, before any training
    except ValueError as err:
        sys.exit(f"error: {err}")
    if not (args.vae / "config.json").is_file():
        sys.exit(f"error: {args.vae} is not a VAE folder (no config.json).")
    args.work.mkdir(parents=True, exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // args.parallel)
    jobs = [(name, seed, changes.split()) for name, _, changes in variants for seed in seeds]
    with ThreadPoolExecutor(args.parallel) as pool:
        try:
            rows = list(pool.map(lambda job: one_run(args.vae, args.work, *job, threads), jobs))
        except RuntimeError as err:  # a run failed: its log says why
            sys.exit(f"error: {err}")
    print("| variant | seed | best w | held-out | seen | position held-out / seen |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['seed']} | {r['w']:g} | {r['held_out']:.0%} | {r['seen']:.0%} | "
              f"{r['position_held_out']:.0%} / {r['position_seen']:.0%} |")
    for name, _, _ in variants:
        held_out = [r["held_out"] for r in rows if r["variant"] == name]
        print(f"{name}: held-out at the best w, mean {sum(held_out) / len(held_out):.0%}, "
              f"worst seed {min(held_out):.0%}")
    (args.work / "seeds.json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
