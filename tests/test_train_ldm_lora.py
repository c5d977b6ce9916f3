"""train_ldm.py --lora-rank: frozen base, adapter-only training, exact resume with EMA, 2 processes x batch b
= 1 x 2b, bf16 autocast, new-token vectors, files stock loads."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline
from launching import launch_two_processes
from safetensors.torch import load_file
from resuming import cut_back_to
from tiny_components import skip_bitwise_comparison_on_cuda, tiny_pipeline_folder

import train_ldm
from ldm.lora import KOHYA_WEIGHTS_NAME, LORA_WEIGHTS_NAME
from ldm.new_tokens import sidecar_path
from pipelines.folder import load_pipeline
from pipelines.lora import apply_loras

REPO = Path(__file__).resolve().parents[1]
NEW_WORD = ("--lora-new-tokens", "pink")
PINK = "shapes:objects=1,novelcolour=1"  # every caption says pink


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tiny_pipeline_folder(tmp_path_factory.mktemp("base") / "pipe")


def _args(base, out, *extra, data="shapes"):
    return ["--data", data, "--data-size", "16", "--resolution", "32", "--pretrained", str(base),
            "--output-dir", str(out), "--batch-size", "4", "--warmup-steps", "1", "--lr", "1e-2",
            "--lora-rank", "2", "--lora-alpha", "4", "--lora-targets", "attn,conv", "--lora-text-encoder", *extra]


def test_lora_resume_is_exact_and_the_base_stays_frozen(base, tmp_path):
    """Stopped after 2 of 4 steps + resume == 4 steps, bit for bit, for U-Net and text-encoder adapters and a new
    word's vector under EMA; the checkpointed base weights equal the pretrained ones; stock diffusers loads what
    the run wrote (the kohya file's LoRA keys and bundled vector as A1111 parts: stock refuses them in one file)."""
    common = ("--ema", "--ema-decay", "0.9", "--checkpoint-every", "2", "--lora-format", "kohya", *NEW_WORD)
    assert train_ldm.main(_args(base, tmp_path / "straight", "--max-steps", "4", *common, "--sample-prompts",
                                "a pink circle", "--sample-steps", "2", data=PINK)) == 0
    cut_back_to(tmp_path / "straight", 2, tmp_path / "split")
    assert train_ldm.main(_args(base, tmp_path / "split", "--max-steps", "4", "--resume", "latest", *common,
                                data=PINK)) == 0
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
    vector = load_file(str(sidecar_path(tmp_path / "straight" / LORA_WEIGHTS_NAME)))["clip_l"]
    pipe = load_pipeline(base)
    start = pipe.text_encoder.get_input_embeddings().weight[pipe.tokenizer("pink", add_special_tokens=False)
                                                            .input_ids].mean(0)
    assert vector.shape == (1, start.shape[0]) and not torch.allclose(vector[0], start)  # it trained
    kohya = load_file(str(tmp_path / "straight" / KOHYA_WEIGHTS_NAME))
    assert torch.equal(kohya["bundle_emb.pink.string_to_param.*"], vector)
    stock = StableDiffusionPipeline.from_pretrained(str(base))
    stock.load_lora_weights({k: v for k, v in kohya.items() if k.startswith("lora_")})
    stock.load_textual_inversion({"name": "pink", "string_to_param": {"*": vector}})
    stock.load_lora_weights(str(tmp_path / "straight"), adapter_name="diffusers")  # finds LORA_WEIGHTS_NAME
    skip_bitwise_comparison_on_cuda()
    split = load_file(str(tmp_path / "split" / LORA_WEIGHTS_NAME))
    assert straight.keys() == split.keys()
    for key in straight:
        assert torch.equal(straight[key], split[key]), key
    assert torch.equal(vector, load_file(str(sidecar_path(tmp_path / "split" / LORA_WEIGHTS_NAME)))["clip_l"])


@pytest.mark.slow
def test_lora_two_processes_match_one_process_with_double_batch(base, tmp_path):
    """accelerate launch, 2 CPU processes (gloo) x batch 2 == 1 process x batch 4 after 3 steps, for the U-Net
    adapter (under DDP), the text-encoder adapter and the new word's vector (averaged by hand).

    Within lr / 10: every lora_A starts with a zero gradient (B = 0), and Adam turns the next steps' tiny
    gradients, summed in another order by the all-reduce, into steps of up to lr (seen: 4e-4 at lr 1e-2), while
    a gradient left unaveraged moves a weight by the order of lr itself."""
    args = ("--max-steps", "3", "--checkpoint-every", "0", *NEW_WORD)
    two = _args(base, tmp_path / "two", *args, data=PINK)
    two[two.index("--batch-size") + 1] = "2"
    result = launch_two_processes([str(REPO / "train_ldm.py"), *two], cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    assert train_ldm.main(_args(base, tmp_path / "one", *args, data=PINK)) == 0
    for name in (LORA_WEIGHTS_NAME, sidecar_path(LORA_WEIGHTS_NAME).name):
        one, two_w = load_file(str(tmp_path / "one" / name)), load_file(str(tmp_path / "two" / name))
        assert one.keys() == two_w.keys()
        for key in one:
            torch.testing.assert_close(two_w[key], one[key], rtol=0, atol=1e-3, msg=key)  # lr 1e-2


def test_lora_under_bf16_autocast_keeps_float32_adapters_that_stock_loads(base, tmp_path):
    """--mixed-precision bf16 on the CPU: the adapters train (B leaves zero) and are saved in float32, and the
    file loads into stock diffusers, which then draws what our pipeline draws with it. A process of its own, as
    a user runs it: accelerate's state, set to no mixed precision by this file's other runs, is per process."""
    argv = _args(base, tmp_path / "bf16", "--max-steps", "2", "--checkpoint-every", "0", "--mixed-precision", "bf16")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run([sys.executable, str(REPO / "train_ldm.py"), *argv], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    saved = load_file(str(tmp_path / "bf16" / LORA_WEIGHTS_NAME))
    assert {v.dtype for v in saved.values()} == {torch.float32}
    assert all(v.abs().max() > 0 for k, v in saved.items() if ".lora_B." in k)
    stock = StableDiffusionPipeline.from_pretrained(str(base))
    stock.load_lora_weights(str(tmp_path / "bf16"))
    ours = load_pipeline(base)
    apply_loras(ours, [(str(tmp_path / "bf16" / LORA_WEIGHTS_NAME), 1.0)])
    run = dict(num_inference_steps=2, guidance_scale=3.0, output_type="np")
    images = [pipe("a red circle", generator=torch.Generator().manual_seed(0), **run).images
              for pipe in (stock, ours)]
    assert abs(images[0] - images[1]).max() <= 1e-4


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
