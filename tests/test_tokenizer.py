"""Tests for ldm/tokenizer.py: BPE learned from captions and OpenAI's CLIP vocabulary, both loaded with stock
CLIPTokenizer."""
import gzip
import itertools
import json
from collections import Counter

import pytest
from transformers import CLIPTokenizer

from ldm.tokenizer import (bytes_to_unicode, clip_tokenizer_from_openai_bpe, learn_merges, pre_split,
                           train_clip_tokenizer)

COLOURS = ("red", "green", "blue", "yellow", "purple")
SHAPES = ("circle", "square", "triangle", "star")
PLACES = ("on the left", "on the right", "at the top", "in the middle")
CAPTIONS = [f"a {c} {s} {p}" for c, s, p in itertools.product(COLOURS, SHAPES, PLACES)] + [
    "Grinning face with BIG eyes", "café au lait, naïve résumé", "2 cats & 1 dog", "fire 🔥 emoji",
    "it's o'clock"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("bpe")
    return train_clip_tokenizer(CAPTIONS, out_dir=out_dir, vocab_size=1000, model_max_length=12), out_dir


def test_pre_split_matches_stock_clip_tokenizer(trained):
    tokenizer, _ = trained
    backend = tokenizer.backend_tokenizer
    for caption in CAPTIONS + ["  Tabs\tand\nnew   lines  ", "ÉTÉ 2024!!", "don't stop"]:
        stock = backend.pre_tokenizer.pre_tokenize_str(backend.normalizer.normalize_str(caption))
        assert pre_split(caption) == [word for word, _ in stock]


def test_learn_merges_matches_hand_computed_bpe():
    # Sennrich et al.'s example, with CLIP's </w> on each word's last symbol. Pair counts:
    # (e,s) = (s,t</w>) = 9 → tie, smaller pair first; then (es,t</w>) = 9; then (l,o) = (o,w) = 7 → (l,o);
    # then (e,w) = (n,e) = (w,est</w>) = 6 → (e,w); then (ew,est</w>) = (n,ew) = 6; then (n,ewest</w>) = 6;
    # the best pair left, (lo,w</w>), occurs 5 times.
    words = {"low": 5, "lower": 2, "newest": 6, "widest": 3}
    assert learn_merges(words, max_new_tokens=3) == [("e", "s"), ("es", "t</w>"), ("l", "o")]
    assert learn_merges(words, max_new_tokens=100, min_frequency=6) == [
        ("e", "s"), ("es", "t</w>"), ("l", "o"), ("e", "w"), ("ew", "est</w>"), ("n", "ewest</w>")]


def test_every_caption_word_round_trips_without_unknowns(trained):
    tokenizer, _ = trained
    unknown = tokenizer.unk_token_id
    words = Counter(word.strip(",!") for caption in CAPTIONS for word in caption.lower().split())
    for word, count in words.items():
        ids = tokenizer(word, add_special_tokens=False).input_ids
        assert unknown not in ids
        # CLIP's decoder ends each pre-split piece with a space ("it's" → "it 's"); words have no others.
        assert tokenizer.decode(ids).replace(" ", "") == word
        if count >= 2 and word.isalpha():  # frequent words became one token: the vocabulary was big enough
            assert len(ids) == 1, (word, tokenizer.convert_ids_to_tokens(ids))
    for caption in CAPTIONS[:20]:
        assert tokenizer.decode(tokenizer(caption).input_ids, skip_special_tokens=True) == caption


def test_vocabulary_layout_is_clip_s(trained):
    tokenizer, out_dir = trained
    vocab = json.loads((out_dir / "vocab.json").read_text(encoding="utf-8"))
    symbols = list(bytes_to_unicode().values())
    assert [vocab[s] for s in symbols] == list(range(256))
    assert [vocab[s + "</w>"] for s in symbols] == list(range(256, 512))
    assert sorted(vocab.values()) == list(range(len(vocab))) and len(tokenizer) == len(vocab) <= 1000
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (len(vocab) - 2, len(vocab) - 1)
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # as Stable Diffusion's CLIP tokenizer


def test_padding_truncation_and_empty_prompt(trained):
    tokenizer, _ = trained
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    kwargs = dict(padding="max_length", max_length=tokenizer.model_max_length, truncation=True)
    assert tokenizer.model_max_length == 12
    assert tokenizer("", **kwargs).input_ids == [bos, eos] + [pad] * 10
    short = tokenizer("a red circle", **kwargs).input_ids
    words = tokenizer("a red circle", add_special_tokens=False).input_ids
    assert len(short) == 12 and short[:5] == [bos, *words, eos]
    long = tokenizer(" ".join(["red"] * 30), **kwargs).input_ids
    assert len(long) == 12 and long[0] == bos and long[-1] == eos


def test_save_reload_gives_identical_ids(trained, tmp_path):
    tokenizer, out_dir = trained
    reloaded = CLIPTokenizer.from_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(tmp_path))  # transformers' own format (tokenizer.json)
    resaved = CLIPTokenizer.from_pretrained(str(tmp_path))
    for caption in CAPTIONS:
        ids = tokenizer(caption).input_ids
        assert reloaded(caption).input_ids == ids and resaved(caption).input_ids == ids
    assert resaved.model_max_length == 12


def test_train_rejects_bad_options(tmp_path):
    with pytest.raises(ValueError, match="vocab_size"):
        train_clip_tokenizer(CAPTIONS, out_dir=tmp_path, vocab_size=300)
    with pytest.raises(ValueError, match="empty"):
        train_clip_tokenizer(["", "  "], out_dir=tmp_path)


def _write_openai_bpe(path, merges):
    text = "\"bpe_simple_vocab_16e6.txt#version: 0.2\n" + "\n".join(merges)
    path.write_bytes(gzip.compress(text.encode()))
    return path


def test_openai_bpe_ids_follow_clip_construction(tmp_path):
    # OpenAI's format: a header line, then "a b" merges; CLIP's ids are bytes, bytes+</w>, merges, specials.
    merges = ["r e", "re d</w>", "c i", "ci r", "l e</w>", "cir c", "circ le</w>"]
    bpe = _write_openai_bpe(tmp_path / "bpe.txt.gz", merges)
    tokenizer = clip_tokenizer_from_openai_bpe(bpe, out_dir=tmp_path / "tok")
    assert tokenizer.model_max_length == 77 and len(tokenizer) == 512 + len(merges) + 2
    assert tokenizer("red circle", add_special_tokens=False).input_ids == [512 + 1, 512 + 6]
    assert tokenizer("").input_ids == [512 + len(merges), 512 + len(merges) + 1]
    byte_ids = tokenizer("zz", add_special_tokens=False).input_ids  # no merge: byte symbol, then byte+</w>
    z = list(bytes_to_unicode()).index(ord("z"))
    assert byte_ids == [z, 256 + z]


def test_openai_bpe_keeps_clip_s_49408_ids(tmp_path):
    symbols = list(bytes_to_unicode().values())
    pairs = itertools.product(symbols, symbols + [s + "</w>" for s in symbols])
    merges = [f"{a} {b}" for a, b in itertools.islice(pairs, 49000)]  # more than CLIP's 48894: rest is cut
    bpe = _write_openai_bpe(tmp_path / "bpe.gz", merges)
    tokenizer = clip_tokenizer_from_openai_bpe(bpe, out_dir=tmp_path / "t")
    assert len(tokenizer) == 49408
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (49406, 49407)


def test_openai_bpe_missing_file_is_one_line_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        clip_tokenizer_from_openai_bpe(tmp_path / "nope.gz", out_dir=tmp_path / "t")
    (tmp_path / "plain.gz").write_text("not gzip")
    with pytest.raises(ValueError, match="gzip"):
        clip_tokenizer_from_openai_bpe(tmp_path / "plain.gz", out_dir=tmp_path / "t")


def test_captions_stream_once_through_a_generator(tmp_path):
    """A one-shot generator (a latent cache's captions) learns the vocabulary a list of the same captions does."""
    captions = ["a red circle", "a blue square", "a red circle on the left", "two green crosses"] * 3
    from_list = train_clip_tokenizer(captions, out_dir=tmp_path / "list", vocab_size=560)
    from_stream = train_clip_tokenizer((c for c in captions), out_dir=tmp_path / "stream", vocab_size=560)
    assert from_stream.get_vocab() == from_list.get_vocab() and len(from_list) > 2 * 256 + 2
    assert (tmp_path / "list" / "merges.txt").read_text() == (tmp_path / "stream" / "merges.txt").read_text()
