"""pipelines/few_step.py (a folder's sampling defaults, or an LCM-LoRA's), ldm-generate picking them up, and the
pipeline's single U-Net call per step for a guidance-distilled U-Net."""
import json

import numpy as np
import pytest
import torch
from diffusers import LCMScheduler, StableDiffusionPipeline
from PIL import Image

from ldm.distill import make_student
from ldm.lcm_lora import lcm_lora_metadata
from ldm.lora import adapter_state_dict, add_lora, save_lora
from ldm.objective import make_noise_scheduler
from pipelines import generate
from pipelines.few_step import (FEW_STEP_FILE, LCM_STEPS, SamplingDefaults, read_sampling_defaults,
                                resolve_sampling, write_sampling_defaults)
from pipelines.folder import load_pipeline, save_pipeline_folder
from tiny_components import tiny_text_encoder, tiny_tokenizer, tiny_unet, tiny_vae

USUAL = SamplingDefaults("dpm++", 25, 4.0)


def _folder(root, *, few_step: bool):
    tokenizer = tiny_tokenizer(root / "tok")
    teacher = tiny_unet()
    torch.manual_seed(0)
    unet = make_student(teacher, time_cond_proj_dim=8) if few_step else teacher
    if few_step:
        torch.nn.init.normal_(unet.time_embedding.cond_proj.weight, std=0.1)  # w matters, as after distilling
    base = make_noise_scheduler(prediction_type="v_prediction")
    scheduler = LCMScheduler.from_config(base.config, original_inference_steps=10) if few_step else base
    folder = save_pipeline_folder(root / "model", vae=tiny_vae(), text_encoder=tiny_text_encoder(tokenizer),
                                  tokenizer=tokenizer, unet=unet, scheduler=scheduler)
    return folder


@pytest.fixture(scope="module")
def few_step_folder(tmp_path_factory):
    folder = _folder(tmp_path_factory.mktemp("few"), few_step=True)
    write_sampling_defaults(folder, SamplingDefaults("lcm", 2, 3.0), guidance_weight_range=[0, 4])
    return folder


def test_folder_defaults_file_scheduler_type_or_none(few_step_folder, tmp_path):
    assert read_sampling_defaults(few_step_folder) == SamplingDefaults("lcm", 2, 3.0)
    (few_step_folder / FEW_STEP_FILE).rename(tmp_path / "kept.json")
    try:  # a stock LCM folder without our file: lcm steps, guidance left to the command
        assert read_sampling_defaults(few_step_folder) == SamplingDefaults("lcm", LCM_STEPS, None)
    finally:
        (tmp_path / "kept.json").rename(few_step_folder / FEW_STEP_FILE)
    plain = _folder(tmp_path, few_step=False)
    assert read_sampling_defaults(plain) == SamplingDefaults()
    assert resolve_sampling(plain, given=SamplingDefaults(), usual=USUAL) == USUAL
    (plain / FEW_STEP_FILE).write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a JSON object"):
        read_sampling_defaults(plain)


def test_given_values_win_then_the_folders_then_the_usual(few_step_folder):
    assert resolve_sampling(few_step_folder, given=SamplingDefaults(), usual=USUAL) == SamplingDefaults("lcm", 2, 3.0)
    given = SamplingDefaults(None, 6, None)
    assert resolve_sampling(few_step_folder, given=given, usual=USUAL) == SamplingDefaults("lcm", 6, 3.0)


def test_an_lcm_lora_brings_its_defaults_before_the_folders(few_step_folder, tmp_path):
    unet = tiny_unet()
    add_lora(unet, rank=2, targets=["to_q"])
    state_dict, metadata = adapter_state_dict({"unet": unet})
    facts = lcm_lora_metadata(num_inference_steps=4, original_inference_steps=50, guidance_weight_range=(1.0, 3.0),
                              teacher="t")
    lcm = save_lora(tmp_path / "lcm.safetensors", state_dict, metadata, extra_metadata=facts)
    plain = save_lora(tmp_path / "plain.safetensors", state_dict, metadata)
    nothing, lcm_lora = SamplingDefaults(), SamplingDefaults("lcm", 4, 1.0)
    empty = tmp_path / "model"  # a folder with no defaults of its own
    assert resolve_sampling(empty, given=nothing, usual=USUAL, loras=[f"{plain}:0.5", f"{lcm}:0.8"]) == lcm_lora
    assert resolve_sampling(few_step_folder, given=nothing, usual=USUAL, loras=[str(lcm)]) == lcm_lora
    given = SamplingDefaults("ddim", 8, None)
    assert resolve_sampling(empty, given=given, usual=USUAL, loras=[str(lcm)]) == SamplingDefaults("ddim", 8, 1.0)
    assert resolve_sampling(empty, given=nothing, usual=USUAL, loras=[str(plain)]) == USUAL


def test_distilled_unet_runs_once_per_step_on_the_unguided_batch(few_step_folder):
    pipe = load_pipeline(few_step_folder)
    pipe.set_progress_bar_config(disable=True)
    batches = []
    handle = pipe.unet.register_forward_hook(lambda module, args, kwargs_out: batches.append(args[0].shape[0]))
    try:
        pipe(["a red circle", "blue square"], num_inference_steps=3, guidance_scale=5.0, output_type="latent")
    finally:
        handle.remove()
    assert batches == [2, 2, 2]  # no [uncond, cond] batch: w is an input


def test_ldm_generate_samples_a_few_step_folder_with_its_own_defaults(few_step_folder, tmp_path):
    out = tmp_path / "out"
    assert generate.main(["a red circle", "--model", str(few_step_folder), "--out", str(out), "-n", "1"]) == 0
    row = json.loads((out / generate.MANIFEST).read_text().splitlines()[0])
    assert (row["scheduler"], row["steps"], row["guidance_scale"]) == ("lcm", 2, 3.0)
    stock = StableDiffusionPipeline.from_pretrained(str(few_step_folder), local_files_only=True)
    stock.set_progress_bar_config(disable=True)
    want = stock("a red circle", num_inference_steps=2, guidance_scale=3.0, output_type="np",
                 generator=torch.Generator().manual_seed(row["seed"])).images[0]
    got = np.asarray(Image.open(out / row["file"])).astype(np.float32) / 255
    assert np.abs(got - want).max() <= 1 / 255 + 1e-6
    assert generate.main(["a red circle", "--model", str(few_step_folder), "--out", str(tmp_path / "o2"), "-n", "1",
                          "--steps", "3", "--guidance-scale", "1.5"]) == 0
    row = json.loads((tmp_path / "o2" / generate.MANIFEST).read_text().splitlines()[0])
    assert (row["scheduler"], row["steps"], row["guidance_scale"]) == ("lcm", 3, 1.5)
