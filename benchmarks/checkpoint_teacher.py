"""A pipeline folder from a stage-2 checkpoint of a run still in progress, to distil or evaluate it early.

    python benchmarks/checkpoint_teacher.py --run runs/quickstart/stage2 --step 750 --out runs/distill/teacher

`train_ldm.py` writes its pipeline folder only at the end; its checkpoints hold the raw U-Net
(`model.safetensors`), the learning-rate schedule, the from-scratch text encoder and the EMA, in the order
`train()` registers them. This rebuilds the models exactly as `train()` does from the run's `train_config.json`,
loads the EMA weights (what the finished run would save) and writes a folder as `train()` would, plus the run's
`train_config.json` and latent cache (so `distill_ldm.py` trains on the same data without re-encoding it).
Only for runs with `--ema` and a from-scratch text encoder (the quickstart's stage 2).
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import CLIPTokenizer

from autoencoder.presets import build_vae
from ldm.latents import CACHE_FILE, CAPTIONS_FILE
from ldm.objective import make_noise_scheduler
from ldm.text_encoder import build_text_encoder
from ldm.unet import build_unet
from pipelines.folder import save_pipeline_folder
from pipelines.schedulers import DEFAULT_SCHEDULER, make_scheduler

TEXT_ENCODER_STATE = "custom_checkpoint_1.pkl"  # registered after the LR schedule (custom_checkpoint_0)
EMA_STATE = "custom_checkpoint_2.pkl"  # registered last, by make_ema


def export(run: Path, step: int, out: Path) -> Path:
    config = json.loads((run / "train_config.json").read_text())
    if not config["ema"] or config["text_encoder"]:
        raise SystemExit("only runs with --ema and a from-scratch text encoder are supported")
    checkpoint = run / "checkpoints" / f"step-{step}"
    tokenizer = CLIPTokenizer.from_pretrained(str(run / "tokenizer"))
    text_encoder = build_text_encoder(tokenizer=tokenizer, preset=config["text_preset"])
    vae = build_vae(pretrained=config["vae"])
    vae_factor = 2 ** (len(vae.config.block_out_channels) - 1)
    unet = build_unet(preset=config["preset"], config_path=config["config"], pretrained=config["pretrained"],
                      cross_attention_dim=text_encoder.config.hidden_size,
                      sample_size=config["resolution"] // vae_factor, in_channels=vae.config.latent_channels,
                      norm_num_groups=config["norm_num_groups"])
    unet.load_state_dict(load_file(str(checkpoint / "model.safetensors")))
    text_encoder.load_state_dict(torch.load(checkpoint / TEXT_ENCODER_STATE, weights_only=True))
    shadow = torch.load(checkpoint / EMA_STATE, weights_only=True)["shadow_params"]
    parameters = list(torch.nn.ModuleList([unet, text_encoder]).parameters())  # the order train() averages
    if len(shadow) != len(parameters):
        raise SystemExit(f"the EMA holds {len(shadow)} tensors, the models {len(parameters)}")
    with torch.no_grad():
        for parameter, average in zip(parameters, shadow):
            parameter.copy_(average)
    noise_scheduler = make_noise_scheduler(beta_schedule=config["beta_schedule"],
                                           prediction_type=config["prediction_type"],
                                           zero_terminal_snr=config["zero_terminal_snr"],
                                           num_train_timesteps=config["num_train_timesteps"])
    save_pipeline_folder(out, vae=vae, text_encoder=text_encoder.eval(), tokenizer=tokenizer, unet=unet.eval(),
                         scheduler=make_scheduler(DEFAULT_SCHEDULER, noise_scheduler.config))
    (out / "train_config.json").write_text(json.dumps({**config, "exported_from": str(checkpoint)}, indent=2))
    for name in (CACHE_FILE, CAPTIONS_FILE):
        if (run / name).is_file():
            shutil.copyfile(run / name, out / name)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="the train_ldm.py output folder")
    parser.add_argument("--step", type=int, required=True, help="checkpoint step")
    parser.add_argument("--out", required=True, help="the pipeline folder to write")
    args = parser.parse_args()
    print(export(Path(args.run), args.step, Path(args.out)))


if __name__ == "__main__":
    main()
