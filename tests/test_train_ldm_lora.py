"""train_ldm.py --lora-rank: frozen base, adapter-only training, exact resume with EMA, files stock loads."""
import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file
from tiny_components import skip_bitwise_comparison_on_cuda, tiny_pipeline_folder

import train_ldm
from ldm.lora import KOHYA_WEIGHTS_NAME, LORA_WEIGHTS_NAME


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tiny_pipeline_folder(tmp_path_factory.mktemp("base") / "pipe")


def _args(base, out, *extra):
    return ["--data", "shapes", "--data-size", "16", "--resolution", "32", "--pretrained", str(base),
            "--output-dir", str(out), "--batch-size", "4", "--warmup-steps", "1", "--lr", "1e-2",
            "--lora-rank", "2", "--lora-alpha", "4", "--lora-targets", "attn,conv", "--lora-text-encoder", *extra]


def test_lora_resume_is_exact_and_the_base_stays_frozen(base, tmp_path):
    """2 steps + resume + 2 steps == 4 steps, bit for bit, for U-Net and text-encoder adapters under EMA; the
    checkpointed base weights equal the pretrained ones; stock diffusers loads both files the run wrote."""
    common = ("--ema", "--ema-decay", "0.9", "--checkpoint-every", "2", "--lora-format", "kohya")
    assert train_ldm.main(_args(base, tmp_path / "straight", "--max-steps", "4", *common,
                                "--sample-prompts", "a red circle", "--sample-steps", "2")) == 0
    assert train_ldm.main(_args(base, tmp_path / "split", "--max-steps", "2", *common)) == 0
    assert train_ldm.main(_args(base, tmp_path / "split", "--max-steps", "4", "--resume", "latest", *common)) == 0
    straight = load_file(str(tmp_path / "straight" / LORA_WEIGHTS_NAME))
    assert not (tmp_path / "straight" / "model_index.json").exists()  # an adapter, not a new pipeline
    assert (tmp_path / "straight" / "samples" / "final.png").is_file()
    assert any(k.startswith("text_encoder.") for k in straight) and any(".conv1." in k for k in straight)
    assert all(v.abs().max() > 0 for k, v in straight.items() if ".lora_B." in k)  # B left its zero init
    # The base in the last checkpoint is the pretrained U-Net, untouched.
    checkpoint = load_file(str(tmp_path / "straight" / "checkpoints" / "step-4" / "model.safetensors"))
    pretrained = load_file(str(base / "unet" / "diffusion_pytorch_model.safetensors"))
    for key, value in pretrained.items():
        saved = checkpoint.get(key, checkpoint.get(key.replace(".weight", ".base_layer.weight")
                                                   .replace(".bias", ".base_layer.bias")))
        assert torch.equal(saved, value), key
    stock = StableDiffusionPipeline.from_pretrained(str(base))
    stock.load_lora_weights(str(tmp_path / "straight" / KOHYA_WEIGHTS_NAME))
    stock.load_lora_weights(str(tmp_path / "straight"), adapter_name="diffusers")  # finds LORA_WEIGHTS_NAME
    skip_bitwise_comparison_on_cuda()
    split = load_file(str(tmp_path / "split" / LORA_WEIGHTS_NAME))
    assert straight.keys() == split.keys()
    for key in straight:
        assert torch.equal(straight[key], split[key]), key


@pytest.mark.parametrize("extra, message", [
    (("--pretrained", ""), "needs --pretrained"),
    (("--lora-rank", "0"), "must be at least 1"),
    (("--train-text-encoder",), "use --lora-text-encoder"),
    (("--lora-targets", "nothing_like_this"), "cannot attach LoRA"),
    (("--prediction-type", "v_prediction"), "pass --prediction-type epsilon"),
])
def test_lora_mistakes_are_one_line_errors(base, tmp_path, capsys, extra, message):
    assert train_ldm.main(_args(base, tmp_path / "out", "--max-steps", "1", "--vae", str(base), *extra)) != 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and message in err


def test_lora_text_encoder_on_a_layer_free_encoder_is_a_one_line_error(tmp_path, capsys):
    """The quickstart's 'embeddings' text encoder has no layers: --lora-text-encoder says why it does not apply
    before any work."""
    (tmp_path / "base" / "text_encoder").mkdir(parents=True)
    (tmp_path / "base" / "text_encoder" / "config.json").write_text('{"num_hidden_layers": 0}')
    argv = ["--data", "shapes", "--pretrained", str(tmp_path / "base"), "--output-dir", str(tmp_path / "out"),
            "--lora-rank", "2", "--lora-text-encoder"]
    assert train_ldm.main(argv) != 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and "no transformer layers to adapt" in err
