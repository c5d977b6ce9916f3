"""Tests for ldm/conditioning.py: token ids, prompt embeddings as the stock pipeline makes them, the null
condition, and conditioning dropout."""
import logging

import pytest
import torch
from tiny_components import TINY_MAX_LENGTH, tiny_text_encoder, tiny_tokenizer

from ldm.conditioning import (apply_cond_dropout, drop_mask, drop_words, encode_prompt, null_prompt_embeds,
                              tokenize_prompts)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return tiny_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def text_encoder(tokenizer):
    return tiny_text_encoder(tokenizer)


def test_tokenize_prompts_pads_and_frames(tokenizer):
    ids = tokenize_prompts(tokenizer, ["a red circle", ""])
    assert ids.shape == (2, TINY_MAX_LENGTH) and ids.dtype == torch.long
    words = [tokenizer.convert_tokens_to_ids(w + "</w>") for w in ("a", "red", "circle")]
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    assert ids[0].tolist() == [bos, *words, eos] + [pad] * (TINY_MAX_LENGTH - 5)
    assert ids[1].tolist() == [bos, eos] + [pad] * (TINY_MAX_LENGTH - 2)


def test_tokenize_prompts_truncates_and_warns_with_removed_text(tokenizer, caplog):
    long_prompt = " ".join(["red"] * (TINY_MAX_LENGTH - 2) + ["blue", "square"])
    with caplog.at_level(logging.WARNING, logger="ldm.conditioning"):
        ids = tokenize_prompts(tokenizer, [long_prompt, "a circle"])
    assert ids.shape == (2, TINY_MAX_LENGTH)
    assert ids[0, -1].item() == tokenizer.eos_token_id
    assert "blue square" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ldm.conditioning"):
        tokenize_prompts(tokenizer, ["a circle"])
    assert caplog.text == ""


def test_encode_prompt_matches_stock_pipeline_recipe(tokenizer, text_encoder):
    prompts = ["a green triangle on the left", "blue square"]
    with torch.no_grad():
        got = encode_prompt(text_encoder, tokenizer, prompts)
        # The stock StableDiffusionPipeline recipe, written out independently.
        ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids
        want = text_encoder(ids, attention_mask=None)[0]
    assert got.shape == (2, TINY_MAX_LENGTH, text_encoder.config.hidden_size)
    assert torch.equal(got, want)


def test_encode_prompt_matches_stock_stable_diffusion_pipeline(tokenizer, text_encoder):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(vae=None, text_encoder=text_encoder, tokenizer=tokenizer, unet=None,
                                   scheduler=None, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    with torch.no_grad():
        cond, uncond = pipe.encode_prompt(["a red circle"], "cpu", 1, True, None)
        assert torch.equal(encode_prompt(text_encoder, tokenizer, ["a red circle"]), cond)
        assert torch.equal(null_prompt_embeds(text_encoder, tokenizer), uncond)


def test_null_prompt_embeds_is_the_empty_prompt(tokenizer, text_encoder):
    with torch.no_grad():
        null = null_prompt_embeds(text_encoder, tokenizer)
        batch = encode_prompt(text_encoder, tokenizer, ["a red circle", ""])
    assert null.shape == (1, TINY_MAX_LENGTH, text_encoder.config.hidden_size)
    assert torch.equal(batch[1:], null)
    assert not torch.equal(batch[:1], null)


def test_drop_mask_rate_and_reproducibility():
    mask = drop_mask(20000, 0.1, torch.Generator().manual_seed(1))
    assert mask.dtype == torch.bool and mask.shape == (20000,)
    assert abs(mask.float().mean().item() - 0.1) < 0.01
    assert torch.equal(mask, drop_mask(20000, 0.1, torch.Generator().manual_seed(1)))
    assert not drop_mask(100, 0.0).any() and drop_mask(100, 1.0).all()
    with pytest.raises(ValueError):
        drop_mask(4, 1.5)


def test_apply_cond_dropout_replaces_exactly_the_drawn_rows():
    prompt_embeds = torch.randn(64, 5, 3)
    null = torch.randn(1, 5, 3)
    out = apply_cond_dropout(prompt_embeds, null, p=0.5, generator=torch.Generator().manual_seed(7))
    dropped = drop_mask(64, 0.5, torch.Generator().manual_seed(7))
    assert 0 < dropped.sum() < 64
    assert torch.equal(out[dropped], null.expand(int(dropped.sum()), 5, 3))
    assert torch.equal(out[~dropped], prompt_embeds[~dropped])
    assert torch.equal(apply_cond_dropout(prompt_embeds, null, p=0.0), prompt_embeds)


def test_drop_words_deletes_exactly_the_words_drawn_below_p():
    captions = ["a small red circle on the left", "a blue square", "a cross"]
    draws = torch.tensor([[0.9, 0.9, 0.1, 0.9, 0.9, 0.05, 0.9],
                          [0.2, 0.8, 0.3, 0.0, 0.0, 0.0, 0.0],  # columns past the last word are unused
                          [0.1, 0.1, 0.9, 0.9, 0.9, 0.9, 0.9]])  # every word drawn: the caption stays whole
    assert drop_words(captions, draws, 0.25) == ["a small circle on left", "blue square", "a cross"]
    assert drop_words(captions, draws, 0.0) == captions


def test_drop_words_rate_matches_p():
    """Over many captions the share of deleted words is p (less the rare all-dropped captions kept whole)."""
    captions = ["one two three four five six seven eight"] * 4000
    kept = drop_words(captions, torch.rand(4000, 8, generator=torch.Generator().manual_seed(3)), 0.2)
    deleted = 1 - sum(len(c.split()) for c in kept) / (8 * 4000)
    assert abs(deleted - 0.2) < 0.01


@pytest.mark.parametrize("p, shape", [(1.0, (1, 3)), (-0.1, (1, 3)), (0.1, (2, 3)), (0.1, (1, 2))])
def test_drop_words_rejects_bad_arguments(p, shape):
    with pytest.raises(ValueError):
        drop_words(["a red circle"], torch.rand(shape), p)
