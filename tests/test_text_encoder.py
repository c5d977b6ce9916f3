"""Tests for ldm/text_encoder.py: presets, from-scratch build, and loading from both folder layouts."""
import itertools
import gzip

import pytest
import torch
from tiny_components import TINY_MAX_LENGTH, tiny_tokenizer, write_tiny_tokenizer

from ldm.text_encoder import EMBEDDING_STD, TEXT_ENCODER_PRESETS, build_text_encoder, load_text_encoder
from ldm.tokenizer import bytes_to_unicode, clip_tokenizer_from_openai_bpe


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return tiny_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.mark.parametrize("preset", ["tiny", "small", "embeddings"])
def test_build_fits_tokenizer_and_preset(tokenizer, preset):
    text_encoder = build_text_encoder(tokenizer=tokenizer, preset=preset).eval()
    config = text_encoder.config
    assert config.vocab_size == len(tokenizer) and config.max_position_embeddings == TINY_MAX_LENGTH
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (
        tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    for key, value in TEXT_ENCODER_PRESETS[preset].items():
        assert getattr(config, key) == value
    ids = tokenizer(["a red circle"], padding="max_length", max_length=TINY_MAX_LENGTH,
                    return_tensors="pt").input_ids
    with torch.no_grad():
        out = text_encoder(ids)
    assert out.last_hidden_state.shape == (1, TINY_MAX_LENGTH, config.hidden_size)
    # CLIP pools at the EOS token: the pooled output is the hidden state at the first EOS position.
    eos_position = ids[0].tolist().index(tokenizer.eos_token_id)
    torch.testing.assert_close(out.pooler_output[0], out.last_hidden_state[0, eos_position])


def test_clip_vit_l_preset_has_sd_text_encoder_size(tmp_path):
    symbols = list(bytes_to_unicode().values())
    pairs = itertools.islice(itertools.product(symbols, symbols), 48894)
    bpe = tmp_path / "bpe.gz"
    bpe.write_bytes(gzip.compress(("header\n" + "\n".join(f"{a} {b}" for a, b in pairs)).encode()))
    clip_tokenizer = clip_tokenizer_from_openai_bpe(bpe, out_dir=tmp_path / "tok")
    with torch.device("meta"):  # shapes only: no 0.5 GB of weights
        text_encoder = build_text_encoder(tokenizer=clip_tokenizer, preset="clip-vit-l")
    # SD 1.x's text_encoder (openai/clip-vit-large-patch14's text tower) has 123,060,480 weights.
    assert sum(p.numel() for p in text_encoder.parameters()) == 123_060_480


def _token_states(text_encoder, tokenizer, prompt):
    ids = tokenizer([prompt], padding="max_length", max_length=TINY_MAX_LENGTH, return_tensors="pt").input_ids
    with torch.no_grad():
        return ids[0], text_encoder(ids).last_hidden_state[0]


def _independent_of_neighbours(text_encoder, tokenizer) -> bool:
    """Whether "square" and the tokens after it get the same states after "a red" as after "a blue"."""
    ids_a, states_a = _token_states(text_encoder, tokenizer, "a red square")
    ids_b, states_b = _token_states(text_encoder, tokenizer, "a blue square")
    differs = (ids_a != ids_b).nonzero().flatten().tolist()
    assert len(differs) == 1  # only the colour token differs, at the same position
    later = slice(differs[0] + 1, None)  # "square" and everything after it
    return torch.equal(states_a[later], states_b[later])


def _embedding_formula(text_encoder, tokenizer, prompt):
    """layer_norm(token embedding + position embedding): each token on its own."""
    ids, _ = _token_states(text_encoder, tokenizer, prompt)
    embeddings = text_encoder.embeddings
    with torch.no_grad():
        return text_encoder.final_layer_norm(
            embeddings.token_embedding(ids) + embeddings.position_embedding.weight[: len(ids)])


@pytest.mark.parametrize("preset", ["embeddings", "tiny", "small"])
def test_a_new_encoder_starts_with_each_word_on_its_own(tokenizer, preset):
    """Zero-initialised residual branches: every fresh encoder computes the embeddings formula exactly, and
    with no layers (`embeddings`) it always will; with layers, its words are unit-scale, as the branches' outputs
    will be, and with none they keep CLIP's own 0.02."""
    text_encoder = build_text_encoder(tokenizer=tokenizer, preset=preset).eval()
    assert _independent_of_neighbours(text_encoder, tokenizer)
    _, states = _token_states(text_encoder, tokenizer, "a red square")
    torch.testing.assert_close(states, _embedding_formula(text_encoder, tokenizer, "a red square"))
    std = text_encoder.embeddings.token_embedding.weight.std().item()
    assert std == pytest.approx(0.02 if preset == "embeddings" else EMBEDDING_STD, rel=0.1)


def test_layers_learn_to_mix_words_from_the_zero_start(tokenizer):
    """Gradients reach the zeroed projections: after a few steps that reward "square" for knowing its
    colour, the tiny encoder's "square" differs between "a red square" and "a blue square"."""
    text_encoder = build_text_encoder(tokenizer=tokenizer, preset="tiny").train()
    optimizer = torch.optim.Adam(text_encoder.parameters(), lr=1e-2)
    ids = tokenizer(["a red square", "a blue square"], padding="max_length", max_length=TINY_MAX_LENGTH,
                    return_tensors="pt").input_ids
    square = (ids[0] != ids[1]).nonzero().flatten().item() + 1
    probe = torch.randn(text_encoder.config.hidden_size, generator=torch.Generator().manual_seed(0))
    for _ in range(3):  # "square" should say +1 after red and -1 after blue along the probe
        states = text_encoder(ids).last_hidden_state[:, square]
        loss = (states @ probe - torch.tensor([1.0, -1.0])).pow(2).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert not _independent_of_neighbours(text_encoder.eval(), tokenizer)


def test_unknown_preset_is_one_line_error(tokenizer):
    with pytest.raises(ValueError, match="preset"):
        build_text_encoder(tokenizer=tokenizer, preset="huge")


def _same_outputs(a, b, tokenizer):
    ids = tokenizer(["blue square on the left"], padding="max_length", max_length=TINY_MAX_LENGTH,
                    return_tensors="pt").input_ids
    with torch.no_grad():
        return torch.equal(a(ids)[0], b(ids)[0])


def test_load_from_transformers_folder(tokenizer, tmp_path):
    text_encoder = build_text_encoder(tokenizer=tokenizer, preset="tiny").eval()
    text_encoder.save_pretrained(str(tmp_path))
    write_tiny_tokenizer(tmp_path)
    loaded, loaded_tokenizer = load_text_encoder(tmp_path)
    assert loaded_tokenizer.model_max_length == TINY_MAX_LENGTH and len(loaded_tokenizer) == len(tokenizer)
    assert _same_outputs(text_encoder, loaded, loaded_tokenizer)


def test_load_from_pipeline_folder(tokenizer, tmp_path):
    text_encoder = build_text_encoder(tokenizer=tokenizer, preset="tiny").eval()
    text_encoder.save_pretrained(str(tmp_path / "text_encoder"))
    tokenizer.save_pretrained(str(tmp_path / "tokenizer"))  # transformers 5 writes tokenizer.json
    loaded, loaded_tokenizer = load_text_encoder(str(tmp_path))
    assert loaded_tokenizer("a red circle").input_ids == tokenizer("a red circle").input_ids
    assert _same_outputs(text_encoder, loaded, tokenizer)


def test_missing_parts_are_one_line_errors(tokenizer, tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_text_encoder(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_text_encoder(tmp_path)
    text_encoder = build_text_encoder(tokenizer=tokenizer, preset="tiny")
    text_encoder.save_pretrained(str(tmp_path / "pipe" / "text_encoder"))
    with pytest.raises(FileNotFoundError, match="no tokenizer/"):
        load_text_encoder(tmp_path / "pipe")
    (tmp_path / "pipe" / "tokenizer").mkdir()
    with pytest.raises(FileNotFoundError, match="no tokenizer files"):
        load_text_encoder(tmp_path / "pipe")
    write_tiny_tokenizer(tmp_path / "pipe" / "tokenizer")
    for weights in (tmp_path / "pipe" / "text_encoder").glob("*.safetensors"):
        weights.unlink()
    with pytest.raises(ValueError, match="could not load"):
        load_text_encoder(tmp_path / "pipe")
