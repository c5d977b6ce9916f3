"""Sampling defaults a pipeline folder carries: how many steps, which sampler and what guidance it wants.

A distilled few-step model (`distill_ldm.py`) samples with `LCMScheduler` in 1–8 steps, and its guidance weight
is a U-Net input, not an ε(x) branch; sampled with the usual 25 dpm++ steps it would be slow and wrong. The
distiller writes `few_step.json` beside `model_index.json`; `ldm-generate` and `ldm-eval` read it through
`resolve_sampling`, so a value the user gives wins, then the folder's, then the command's usual default. A
folder with an `LCMScheduler` but no `few_step.json` (a stock LCM download) gets `LCM_STEPS` lcm steps. An
LCM-LoRA among the `--lora` adapters (`ldm.lcm_lora`: its file's metadata says so) makes any folder few-step:
its lcm sampler, steps and guidance_scale 1 come before the folder's own.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from ldm.lcm_lora import read_lcm_lora
from pipelines.lora import lora_specs

FEW_STEP_FILE = "few_step.json"
LCM_STEPS = 4  # where LCM (Luo et al. 2023, Table 1) reaches most of its quality


@dataclass(frozen=True)
class SamplingDefaults:
    """Sampler name (`pipelines.schedulers.SCHEDULERS`), steps and guidance_scale (w + 1); None: not set."""

    scheduler: str | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None


def write_sampling_defaults(folder: str | Path, defaults: SamplingDefaults, **extra) -> Path:
    """Write `folder/few_step.json` from `defaults` plus `extra` JSON-able facts (e.g. the w range trained)."""
    path = Path(folder) / FEW_STEP_FILE
    path.write_text(json.dumps({**asdict(defaults), **extra}, indent=2) + "\n")
    return path


def read_sampling_defaults(folder: str | Path) -> SamplingDefaults:
    """The folder's own defaults: `few_step.json` if present, else lcm steps for an `LCMScheduler` folder, else
    none. A malformed file is a one-sentence ValueError."""
    folder = Path(folder)
    path = folder / FEW_STEP_FILE
    if path.is_file():
        try:
            values = json.loads(path.read_text())
            return SamplingDefaults(scheduler=values.get("scheduler"),
                                    num_inference_steps=values.get("num_inference_steps"),
                                    guidance_scale=values.get("guidance_scale"))
        except (json.JSONDecodeError, AttributeError) as error:
            raise ValueError(f"{path} is not a JSON object of sampling defaults: {error}.") from None
    scheduler_config = folder / "scheduler" / "scheduler_config.json"
    if scheduler_config.is_file() and json.loads(scheduler_config.read_text()).get("_class_name") == "LCMScheduler":
        return SamplingDefaults(scheduler="lcm", num_inference_steps=LCM_STEPS)
    return SamplingDefaults()


def lora_sampling_defaults(loras: Sequence[str]) -> SamplingDefaults | None:
    """The defaults of the first LCM-LoRA among the `--lora` values (`PATH[:SCALE]`), or None if there is none."""
    for path, _ in lora_specs(loras):
        facts = read_lcm_lora(path)
        if facts is not None:
            return SamplingDefaults(scheduler=facts["scheduler"], num_inference_steps=facts["num_inference_steps"],
                                    guidance_scale=facts["guidance_scale"])
    return None


def resolve_sampling(folder: str | Path, *, given: SamplingDefaults, usual: SamplingDefaults,
                     loras: Sequence[str] = ()) -> SamplingDefaults:
    """Each field: the user's (`given`, None where not given), else an LCM-LoRA's among `loras`, else the
    folder's, else the command's `usual`."""
    own = lora_sampling_defaults(loras) or read_sampling_defaults(folder)
    return SamplingDefaults(**{
        name: next((v for v in (getattr(given, name), getattr(own, name), getattr(usual, name)) if v is not None),
                   None)
        for name in ("scheduler", "num_inference_steps", "guidance_scale")
    })
