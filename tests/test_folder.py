"""pipelines/folder.py: our folders load in stock diffusers, stock SD folders in ours, one-line errors."""

import json
import shutil

import pytest
import torch
from diffusers import DDPMScheduler, DiffusionPipeline, PNDMScheduler, StableDiffusionPipeline
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from tiny_components import tiny_text_encoder, tiny_tokenizer, tiny_unet, tiny_vae
from transformers import CLIPConfig, CLIPImageProcessor, CLIPTokenizer

from pipelines import TextToImagePipeline
from pipelines.folder import load_pipeline, save_pipeline_folder

RUN = dict(num_inference_steps=3, guidance_scale=3.0, output_type="np")


@pytest.fixture(scope="module")
def components(tmp_path_factory):
    tokenizer = tiny_tokenizer(tmp_path_factory.mktemp("tokenizer"))
    return dict(
        vae=tiny_vae(), text_encoder=tiny_text_encoder(tokenizer), tokenizer=tokenizer, unet=tiny_unet()
    )


@pytest.fixture(scope="module")
def our_folder(components, tmp_path_factory):
    # A training scheduler as train_ldm.py would pass it (steps_offset 0, clip_sample on).
    return save_pipeline_folder(
        tmp_path_factory.mktemp("ours") / "pipe", **components, scheduler=DDPMScheduler()
    )


def sample(pipe, seed=0):
    pipe.set_progress_bar_config(disable=True)
    return pipe("a red circle", generator=torch.Generator().manual_seed(seed), **RUN).images


def test_stock_diffusers_loads_our_folder_and_gives_our_images(our_folder):
    index = json.loads((our_folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline" and index["safety_checker"] == [None, None]
    stock = DiffusionPipeline.from_pretrained(str(our_folder))
    assert isinstance(stock, StableDiffusionPipeline)
    ours = load_pipeline(our_folder)
    assert isinstance(ours, TextToImagePipeline)
    assert abs(sample(ours) - sample(stock)).max() <= 1e-4
    assert list(our_folder.glob("*/*.bin")) == [] and len(list(our_folder.glob("*/*.safetensors"))) == 3


def test_saved_tokenizer_has_bpe_files_that_load_alone(our_folder, components, tmp_path):
    only_bpe = tmp_path / "tokenizer"
    only_bpe.mkdir()
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        shutil.copy(our_folder / "tokenizer" / name, only_bpe / name)  # what a transformers-4 reader uses
    reloaded = CLIPTokenizer.from_pretrained(str(only_bpe))
    text = ["a red circle on the left", "green triangle"]
    assert reloaded(text).input_ids == components["tokenizer"](text).input_ids


def tiny_safety_checker():
    config = CLIPConfig(
        text_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2),
        vision_config=dict(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=8,
    )
    return StableDiffusionSafetyChecker(config).eval()


def test_ours_loads_a_stock_sd_folder_with_a_safety_checker(components, tmp_path):
    scheduler = PNDMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1, skip_prk_steps=True
    )
    stock = StableDiffusionPipeline(
        **components,
        scheduler=scheduler,
        safety_checker=tiny_safety_checker(),
        feature_extractor=CLIPImageProcessor(size=32, crop_size=32)
    )
    stock.save_pretrained(tmp_path / "sd")
    assert (tmp_path / "sd" / "safety_checker").is_dir()
    ours = TextToImagePipeline.from_pretrained(str(tmp_path / "sd"))
    assert not hasattr(ours, "safety_checker") and isinstance(ours.scheduler, PNDMScheduler)
    reference = TextToImagePipeline(**components, scheduler=scheduler)
    assert abs(sample(load_pipeline(tmp_path / "sd")) - sample(reference)).max() <= 1e-4
    assert abs(sample(ours) - sample(reference)).max() <= 1e-4


def test_missing_component_is_a_one_line_error(our_folder, tmp_path):
    broken = shutil.copytree(our_folder, tmp_path / "broken")
    shutil.rmtree(broken / "unet")
    with pytest.raises(FileNotFoundError, match="missing its unet/ component"):
        load_pipeline(broken)
    with pytest.raises(FileNotFoundError, match="no model_index.json"):
        load_pipeline(tmp_path / "nowhere")


def test_unreadable_weights_are_a_one_line_error(our_folder, tmp_path):
    broken = shutil.copytree(our_folder, tmp_path / "broken")
    (broken / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="unreadable weights file .*vae") as info:
        load_pipeline(broken)
    assert "\n" not in str(info.value)


def test_pickle_weights_load_with_weights_only(our_folder, tmp_path, components):
    """A .bin state dict (older SD folders) loads; one holding arbitrary objects is refused, not run."""
    legacy = shutil.copytree(our_folder, tmp_path / "legacy")
    (legacy / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    torch.save(components["unet"].state_dict(), legacy / "unet" / "diffusion_pytorch_model.bin")
    assert abs(sample(load_pipeline(legacy)) - sample(load_pipeline(our_folder))).max() <= 1e-6
    torch.save(
        {"weight": torch.zeros(1), "payload": shutil.rmtree}, legacy / "unet" / "diffusion_pytorch_model.bin"
    )
    with pytest.raises(ValueError, match="unreadable weights file"):
        load_pipeline(legacy)
