"""A pipeline folder from a checkpoint of a stage-2 run that is still training (EMA weights when it keeps one).

    python benchmarks/checkpoint_pipeline.py runs/quickstart/stage2 --out runs/lora/base-step500 [--step 500]

Rebuilds the U-Net and text encoder from the run's `train_config.json`, loads the checkpoint's weights (the
EMA's shadow weights over U-Net + text encoder, in that order, when the run has `--ema`), and saves them with
the run's VAE, tokenizer and sampler, as `train_ldm.py` would at the end. Reads the run, never writes to it.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import CLIPTokenizer

from autoencoder.presets import build_vae, vae_scale_factor
from ldm.objective import make_noise_scheduler
from ldm.text_encoder import build_text_encoder, load_text_encoder
from ldm.unet import build_unet
from pipelines.folder import save_pipeline_folder
from pipelines.schedulers import DEFAULT_SCHEDULER, make_scheduler


def build(run: Path, step_dir: Path, out: Path) -> Path:
    config = json.loads((run / "train_config.json").read_text())
    vae = build_vae(pretrained=config["vae"])
    if config.get("text_encoder"):
        text_encoder, tokenizer = load_text_encoder(config["text_encoder"])
    else:
        tokenizer = CLIPTokenizer.from_pretrained(str(run / "tokenizer"))
        text_encoder = build_text_encoder(tokenizer=tokenizer, preset=config["text_preset"])
    factor = vae_scale_factor(vae)
    unet = build_unet(preset=config["preset"], config_path=config["config"], pretrained=config["pretrained"],
                      cross_attention_dim=text_encoder.config.hidden_size,
                      sample_size=config["resolution"] // factor, in_channels=vae.config.latent_channels,
                      norm_num_groups=config["norm_num_groups"])
    unet.load_state_dict(load_file(str(step_dir / "model.safetensors")))
    states = [torch.load(path, weights_only=False, map_location="cpu")
              for path in sorted(step_dir.glob("custom_checkpoint_*.pkl"))]
    encoder_state = next((s for s in states if "embeddings.token_embedding.weight" in s), None)
    if encoder_state is not None:
        text_encoder.load_state_dict(encoder_state)
    ema = next((s for s in states if "shadow_params" in s), None)
    if ema is not None:  # the EMA covers the U-Net and, when it trained, the text encoder (train_ldm.py)
        trained = [unet] + ([text_encoder] if encoder_state is not None else [])
        parameters = list(torch.nn.ModuleList(trained).parameters())
        assert len(parameters) == len(ema["shadow_params"]), "EMA does not match the rebuilt models"
        with torch.no_grad():
            for parameter, shadow in zip(parameters, ema["shadow_params"]):
                parameter.copy_(shadow)
    noise = make_noise_scheduler(beta_schedule=config["beta_schedule"], prediction_type=config["prediction_type"],
                                 zero_terminal_snr=config["zero_terminal_snr"],
                                 num_train_timesteps=config["num_train_timesteps"])
    save_pipeline_folder(out, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                         scheduler=make_scheduler(DEFAULT_SCHEDULER, noise.config))
    (out / "train_config.json").write_text(json.dumps({**config, "from_checkpoint": str(step_dir)}, indent=2))
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="the stage-2 output folder (train_config.json, tokenizer/, checkpoints/)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    args = parser.parse_args(argv)
    run = Path(args.run)
    name = f"step-{args.step}" if args.step else (run / "checkpoints" / "latest").read_text().strip()
    print(build(run, run / "checkpoints" / name, Path(args.out)))


if __name__ == "__main__":
    main()
