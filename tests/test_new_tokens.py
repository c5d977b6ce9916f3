"""ldm/new_tokens.py: new words with trained vectors, in the files stock diffusers loads where we say it does (the
`_emb` sidecar through `load_textual_inversion`, the kohya file's A1111 bundle), fused, and one-line errors."""

import pytest
import torch
from adapters import make_adapter, random_vectors
from diffusers import StableDiffusionPipeline
from safetensors import safe_open
from safetensors.torch import load_file
from tiny_components import TINY_HIDDEN, tiny_pipeline_folder

from ldm.conditioning import encode_prompt
from ldm.lora import LORA_WEIGHTS_NAME
from ldm.new_tokens import (NewTokenEmbedding, add_trainable_tokens, bundle_tensors, parse_new_tokens,
                            read_vectors, save_sidecar, sidecar_path)
from pipelines.folder import load_pipeline
from pipelines.lora import apply_loras, fuse_into_folder

RUN = dict(num_inference_steps=3, guidance_scale=3.0, output_type="np")
PROMPTS = ["a pink circle", "a small pink square"]  # "pink" and "small" are pieces of the tiny tokenizer


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tiny_pipeline_folder(tmp_path_factory.mktemp("base") / "pipe")


@pytest.fixture(scope="module")
def adapter(base, tmp_path_factory):
    """A diffusers-format adapter with its `_emb` sidecar teaching "pink" and "small", and the same adapter in
    the kohya layout (U-Net only) with the vectors bundled."""
    root = tmp_path_factory.mktemp("adapter")
    vectors = random_vectors(["pink", "small"], width=TINY_HIDDEN, seed=3)
    path = make_adapter(base, root / LORA_WEIGHTS_NAME, seed=1)
    save_sidecar(path, vectors)
    # U-Net only: diffusers 0.42 with transformers 5 drops a kohya file's text-encoder attention (test_lora.py).
    kohya = make_adapter(base, root / "kohya.safetensors", seed=1, fmt="kohya", text_encoder=False,
                         extra=bundle_tensors(vectors))
    return path, kohya, vectors


def sample(pipe, prompts=PROMPTS):
    pipe.set_progress_bar_config(disable=True)
    return pipe(prompts, generator=torch.Generator().manual_seed(0), **RUN).images


def test_trainable_rows_read_like_a_resized_embedding_in_stock_load_textual_inversion(base):
    """The training-time module gives the prompt embeddings stock diffusers gives after load_textual_inversion
    of the same vectors; the base's rows are frozen and the new rows start at the mean of the word's pieces."""
    pipe = load_pipeline(base)
    pieces = pipe.tokenizer("pink", add_special_tokens=False).input_ids
    start = pipe.text_encoder.get_input_embeddings().weight[pieces].mean(0)
    module = add_trainable_tokens(pipe.tokenizer, pipe.text_encoder, ["pink"])
    assert isinstance(pipe.text_encoder.get_input_embeddings(), NewTokenEmbedding)
    assert torch.allclose(module.new[0], start) and not module.base.weight.requires_grad
    assert pipe.tokenizer.tokenize("a PINK circle") == ["a</w>", "pink", "circle</w>"]
    with torch.no_grad():
        module.new.copy_(torch.randn(module.new.shape))
    ours = encode_prompt(pipe.text_encoder, pipe.tokenizer, PROMPTS)
    stock = StableDiffusionPipeline.from_pretrained(str(base))
    stock.load_textual_inversion(module.new[0].detach().clone(), token="pink")
    reference = stock.encode_prompt(PROMPTS, "cpu", 1, False)[0]
    assert torch.allclose(ours, reference, atol=1e-6)
    ours.sum().backward()
    assert module.new.grad.abs().sum() > 0 and module.base.weight.grad is None


def test_sidecar_with_the_adapter_gives_stock_diffusers_our_images(base, adapter):
    path, _, vectors = adapter
    assert read_vectors(path).keys() == vectors.keys()
    ours = load_pipeline(base)
    apply_loras(ours, [(str(path), 1.0)])
    stock = StableDiffusionPipeline.from_pretrained(str(base))
    stock.load_lora_weights(str(path.parent))  # the sidecar's extra file does not get in the way
    with safe_open(str(sidecar_path(path)), framework="pt") as handle:
        assert handle.keys() == ["clip_l"]
    stock.load_textual_inversion(load_file(str(sidecar_path(path)))["clip_l"], token=["pink", "small"])
    adapted = sample(ours)
    assert abs(adapted - sample(stock)).max() <= 1e-4
    without = load_pipeline(base)
    apply_loras(without, [(str(make_adapter(base, path.parent / "alone" / "a.safetensors", seed=1)), 1.0)])
    assert abs(adapted - sample(without)).max() > 1e-2  # the vectors do change the images


def test_kohya_bundle_is_the_a1111_embedding_layout(base, adapter):
    """Bundled as A1111 reads it; stock diffusers refuses a LoRA file with non-LoRA keys, but its LoRA keys
    and the bundle, loaded as an A1111 embedding, give our images."""
    path, kohya, vectors = adapter
    tensors = load_file(str(kohya))
    assert tensors["bundle_emb.pink.string_to_param.*"].shape == (1, TINY_HIDDEN)
    ours = load_pipeline(base)
    apply_loras(ours, [(str(kohya), 1.0)])
    stock = StableDiffusionPipeline.from_pretrained(str(base))
    with pytest.raises(ValueError, match="Invalid LoRA checkpoint"):
        stock.load_lora_weights(str(kohya))
    stock.load_lora_weights({k: v for k, v in tensors.items() if k.startswith("lora_")})
    for word in vectors:
        stock.load_textual_inversion({"name": word, "string_to_param": {"*": tensors[f"bundle_emb.{word}"
                                                                                  ".string_to_param.*"]}})
    assert abs(sample(ours, ["a pink circle"]) - sample(stock, ["a pink circle"])).max() <= 1e-4


def test_fused_folder_holds_the_new_tokens_for_stock_from_pretrained(base, adapter, tmp_path):
    path, _, _ = adapter
    fused = fuse_into_folder(model=base, specs=[(str(path), 0.5)], out=tmp_path / "fused")
    loaded = load_pipeline(base)
    apply_loras(loaded, [(str(path), 0.5)])
    stock = StableDiffusionPipeline.from_pretrained(str(fused))
    assert stock.tokenizer.tokenize("a pink circle") == ["a</w>", "pink", "circle</w>"]
    assert abs(sample(stock) - sample(loaded)).max() <= 1e-4


def test_mistakes_are_one_sentence_errors(base, adapter, tmp_path):
    path, kohya, _ = adapter
    for spec, message in (("pink ish", "not one lower-case word"), ("Pink", "not one lower-case word"),
                          ("pink,pink", "twice")):
        with pytest.raises(ValueError, match=message):
            parse_new_tokens(spec)
    assert parse_new_tokens(" pink, small ,") == ["pink", "small"]
    pipe = load_pipeline(base)
    with pytest.raises(ValueError, match="'red' is already a token"):
        add_trainable_tokens(pipe.tokenizer, pipe.text_encoder, ["red"])
    with pytest.raises(ValueError, match="'pink' is already a token of this tokenizer \\(or another adapter"):
        apply_loras(pipe, [(str(path), 1.0), (str(kohya), 1.0)])  # both teach "pink"
