"""CLIP byte-level BPE tokenizers written as `vocab.json` + `merges.txt`, loaded with stock `CLIPTokenizer`.

Two ways to get one without a model hub:

* `train_clip_tokenizer` learns BPE merges from your captions (for a from-scratch text encoder);
* `clip_tokenizer_from_openai_bpe` rebuilds OpenAI's exact CLIP vocabulary (49408 ids) from the
  `bpe_simple_vocab_16e6.txt.gz` file that ships inside the `open-clip-torch` and OpenAI `clip` packages
  (MIT), so token ids match every pretrained CLIP text encoder.

Both follow CLIP's conventions (Radford et al. 2021, https://github.com/openai/CLIP/blob/main/clip/
simple_tokenizer.py): NFC + whitespace collapse + lower-case, CLIP's regex pre-split, bytes mapped to
printable unicode characters, a `</w>` suffix on the last symbol of each word, and the id layout
[256 byte symbols, the same 256 with `</w>`, merged symbols in merge order, <|startoftext|>, <|endoftext|>].
"""
from __future__ import annotations

import gzip
import heapq
import itertools
import json
import logging
import math
import shutil
import unicodedata
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterable

import regex
from transformers import CLIPTokenizer

logger = logging.getLogger(__name__)

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"  # also CLIP's pad and unknown token, as in Stable Diffusion's tokenizer
END_OF_WORD = "</w>"
CLIP_MAX_LENGTH = 77  # CLIP's context length; SD pipelines and pretrained CLIP encoders expect it
CLIP_NUM_MERGES = 49152 - 256 - 2  # as in OpenAI's simple_tokenizer.py: 48894 merges, 49408 ids in all
DEFAULT_VOCAB_SIZE = 4096  # plenty for caption sets of a few thousand distinct words; embedding = V × hidden
# CLIP's pre-split: specials, English contractions, letter runs, single digits, other non-space runs.
CLIP_PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)


def bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte → printable character table (GPT-2's), keys in CLIP's vocabulary order."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    table = {b: chr(b) for b in printable}
    # Bytes with no printable look-alike (controls, space, ...) borrow characters from 256 upwards.
    for n, b in enumerate(b for b in range(256) if b not in table):
        table[b] = chr(256 + n)
    return table


_BYTE_ENCODER = bytes_to_unicode()


def pre_split(text: str) -> list[str]:
    """Normalise `text` as CLIPTokenizer does and split it into byte-encoded words (CLIP's regex)."""
    text = regex.sub(r"\s+", " ", unicodedata.normalize("NFC", text)).lower()
    words = CLIP_PATTERN.findall(text)
    return ["".join(_BYTE_ENCODER[b] for b in word.encode("utf-8")) for word in words
            if word not in (BOS_TOKEN, EOS_TOKEN)]


def _base_vocab() -> list[str]:
    symbols = list(bytes_to_unicode().values())
    return symbols + [s + END_OF_WORD for s in symbols]


def _merge_word(symbols: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    """`symbols` with every non-overlapping occurrence of `pair` (left to right) fused into one symbol."""
    out, i = [], 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            out.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return tuple(out)


def learn_merges(word_counts: dict[str, int], *, max_new_tokens: int, min_frequency: int = 2
                 ) -> list[tuple[str, str]]:
    """Greedy BPE (Sennrich et al. 2016): repeatedly fuse the most frequent adjacent symbol pair.

    `word_counts` maps byte-encoded words to counts. Stops after `max_new_tokens` distinct new symbols, or
    when the best pair occurs fewer than `min_frequency` times. Ties go to the smallest pair (string order).
    """
    words = [tuple(w[:-1]) + (w[-1] + END_OF_WORD,) for w in word_counts]
    freqs = list(word_counts.values())
    pair_counts: Counter = Counter()
    where: dict[tuple[str, str], set[int]] = defaultdict(set)  # pair → indices of words that may contain it
    for i, symbols in enumerate(words):
        for pair in zip(symbols, symbols[1:]):
            pair_counts[pair] += freqs[i]
            where[pair].add(i)
    heap = [(-count, pair) for pair, count in pair_counts.items()]
    heapq.heapify(heap)
    merges, new_tokens = [], set()
    while heap and len(new_tokens) < max_new_tokens:
        neg_count, pair = heapq.heappop(heap)
        if pair_counts.get(pair, 0) != -neg_count:
            continue  # stale heap entry: the count changed after it was pushed
        if -neg_count < min_frequency:
            break
        merges.append(pair)
        new_tokens.add(pair[0] + pair[1])
        changed = set()
        for i in where.pop(pair):
            merged = _merge_word(words[i], pair)
            for old in zip(words[i], words[i][1:]):
                pair_counts[old] -= freqs[i]
                changed.add(old)
            for new in zip(merged, merged[1:]):
                pair_counts[new] += freqs[i]
                where[new].add(i)
                changed.add(new)
            words[i] = merged
        for p in changed:
            if pair_counts[p] > 0:
                heapq.heappush(heap, (-pair_counts[p], p))
            else:
                del pair_counts[p]
    return merges


def _write_clip_tokenizer(out_dir: str | Path, vocab: dict[str, int], merges: list[tuple[str, str]],
                          model_max_length: int) -> CLIPTokenizer:
    """Write vocab.json, merges.txt and tokenizer_config.json in CLIP's layout and load them back."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (out_dir / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": model_max_length,
              "bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN, "unk_token": EOS_TOKEN, "pad_token": EOS_TOKEN}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return CLIPTokenizer.from_pretrained(str(out_dir))


def train_clip_tokenizer(captions: Iterable[str], *, out_dir: str | Path,
                         vocab_size: int = DEFAULT_VOCAB_SIZE, model_max_length: int = CLIP_MAX_LENGTH,
                         min_frequency: int = 2) -> CLIPTokenizer:
    """Learn a CLIP-format BPE tokenizer from `captions`, save it to `out_dir`, load it with `CLIPTokenizer`.

    `vocab_size` counts everything: 512 byte symbols + learned symbols + 2 specials, so it must be ≥ 515.
    Merges stop early once no pair occurs `min_frequency` times. Every text stays encodable (no unknown ids)
    because all 256 bytes are in the vocabulary.
    """
    base = 2 * 256 + 2
    if vocab_size <= base:
        raise ValueError(f"vocab_size must be greater than {base} (the byte symbols and the two specials).")
    if model_max_length < 2:
        raise ValueError("model_max_length must be at least 2 (start and end tokens).")
    # Streamed: memory holds the distinct words, not the captions (a data set's captions may not fit).
    n_captions, word_counts = 0, Counter()
    for caption in captions:
        n_captions += 1
        word_counts.update(pre_split(caption))
    if not word_counts:
        raise ValueError("no words to learn a tokenizer from: the captions are empty.")
    merges = learn_merges(word_counts, max_new_tokens=vocab_size - base, min_frequency=min_frequency)
    logger.info("Learned %d BPE merges from %d captions (%d distinct words).", len(merges), n_captions,
                len(word_counts))
    tokens = _base_vocab()
    seen = set(tokens)
    for a, b in merges:
        if a + b not in seen:  # two merge paths can build the same symbol; it gets one id
            tokens.append(a + b)
            seen.add(a + b)
    tokens += [BOS_TOKEN, EOS_TOKEN]
    return _write_clip_tokenizer(out_dir, {tok: i for i, tok in enumerate(tokens)}, merges, model_max_length)


def clip_tokenizer_from_openai_bpe(bpe_path: str | Path, *, out_dir: str | Path,
                                   model_max_length: int = CLIP_MAX_LENGTH) -> CLIPTokenizer:
    """OpenAI's CLIP tokenizer rebuilt from `bpe_simple_vocab_16e6.txt.gz`, saved to `out_dir` and loaded.

    The file's first line is a header and CLIP uses the next 49152 - 256 - 2 merges, giving the 49408-id
    vocabulary of every pretrained CLIP (and Stable Diffusion 1.x) text encoder. Shorter files use all theirs.
    """
    bpe_path = Path(bpe_path)
    if not bpe_path.is_file():
        raise FileNotFoundError(f"CLIP BPE merges file not found: {bpe_path}")
    try:
        with gzip.open(bpe_path, "rt", encoding="utf-8") as file:
            lines = file.read().split("\n")
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{bpe_path} is not a gzip-compressed UTF-8 BPE merges file ({err}).") from None
    merges = [tuple(line.split()) for line in lines[1:1 + CLIP_NUM_MERGES] if line.strip()]
    if any(len(m) != 2 for m in merges):
        raise ValueError(f"{bpe_path} has a merge line that is not two space-separated symbols.")
    tokens = _base_vocab() + [a + b for a, b in merges] + [BOS_TOKEN, EOS_TOKEN]
    vocab = dict(zip(tokens, range(len(tokens))))  # CLIP's own construction: ids as in simple_tokenizer.py
    return _write_clip_tokenizer(out_dir, vocab, merges, model_max_length)


def learn_tokenizer(captions: Iterable[str], captions_again: Iterable[str], *, out_dir: str | Path,
                    vocab_size: int) -> None:
    """Learn a CLIP BPE tokenizer from the captions into `out_dir`, with model_max_length cut to what they need.
    `captions` and `captions_again` are two streams of the same captions (the words, then the lengths): memory
    holds the distinct words, never the captions.

    The length is the longest caption in tokens (with BOS/EOS), rounded up to a multiple of 8, at most CLIP's 77:
    shorter sequences make the text encoder and every cross-attention cheaper.
    """
    shutil.rmtree(out_dir, ignore_errors=True)  # a stale tokenizer.json would win over the new vocab.json
    tokenizer = train_clip_tokenizer(captions, out_dir=out_dir, vocab_size=vocab_size,
                                     model_max_length=CLIP_MAX_LENGTH)
    stream, longest = iter(captions_again), 0
    while batch := list(itertools.islice(stream, 1024)):
        longest = max(longest, max(len(ids) for ids in tokenizer(batch).input_ids))
    tokenizer.model_max_length = min(CLIP_MAX_LENGTH, 8 * math.ceil(longest / 8))
    tokenizer.save_pretrained(str(out_dir))
