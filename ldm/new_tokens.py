"""New words for a LoRA: tokens added to the tokenizer, each with a trained input embedding.

Textual inversion (Gal et al. 2022, arXiv:2208.01618) learns one input-embedding vector per new token with the
model frozen; pivotal tuning (the diffusers advanced DreamBooth-LoRA scripts, kohya, OneTrainer) trains those
vectors together with a LoRA. A base trained here has a tokenizer learned from its own captions, so a word it
never saw ("pink") splits into pieces that mean other things and lengthen the caption; as one new token it is
one position with a vector of its own.

Files. diffusers' `load_lora_weights` rejects any key without "lora" in it (0.42: "Invalid LoRA checkpoint"), so
the diffusers-format adapter cannot hold the vectors. They go where diffusers' pivotal-tuning scripts put them,
beside the adapter in `<adapter stem>_emb.safetensors` with key `clip_l` = (n_tokens, D) in token order (our
metadata names the tokens), which stock loads with `pipe.load_textual_inversion(load_file(f)["clip_l"],
token=[...])`. The kohya-layout file carries them inside, as AUTOMATIC1111 reads embeddings bundled in a LoRA:
`bundle_emb.<token>.string_to_param.*` = (1, D), the A1111 embedding's own `string_to_param["*"]`.

Loading follows diffusers' `load_textual_inversion`: resize the token embedding to len(tokenizer) + n, add the
tokens, write their rows. A LoRA scale does not scale the vectors (neither does diffusers).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

SIDECAR_SUFFIX = "_emb"  # diffusers' pivotal tuning: <name>_emb.safetensors beside <name>.safetensors
CLIP_L_KEY = "clip_l"  # the SD-1 text encoder's vectors in that file (SDXL adds clip_g)
TOKENS_KEY = "ldm_new_tokens"  # safetensors metadata: JSON list of the tokens, row order of clip_l
BUNDLE_PREFIX = "bundle_emb."  # AUTOMATIC1111: embeddings bundled in a LoRA file
BUNDLE_SUFFIX = ".string_to_param.*"
WORD = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


def parse_new_tokens(spec: str) -> list[str]:
    """`"pink,diamond"` → ["pink", "diamond"]; one-sentence ValueError for a malformed or repeated word.

    Words are lower case: the CLIP tokenizer lower-cases the prompt before it matches added tokens."""
    words = [word.strip() for word in spec.split(",") if word.strip()]
    for word in words:
        if not WORD.match(word):
            raise ValueError(f"--lora-new-tokens: {word!r} is not one lower-case word (letters, digits, _ or -).")
    if len(set(words)) != len(words):
        raise ValueError(f"--lora-new-tokens names a word twice: {spec!r}.")
    return words


def sidecar_path(adapter: str | Path) -> Path:
    """`OUT/pytorch_lora_weights.safetensors` → `OUT/pytorch_lora_weights_emb.safetensors`."""
    adapter = Path(adapter)
    return adapter.with_name(adapter.stem + SIDECAR_SUFFIX + adapter.suffix)


def _check_new(tokenizer, words: list[str], source: str) -> None:
    vocab = tokenizer.get_vocab()
    for word in words:
        if word in vocab or f"{word}</w>" in vocab:
            raise ValueError(f"{source}: {word!r} is already a token of this tokenizer (or another adapter "
                             f"already added it); a new token needs a word the tokenizer does not have.")


class NewTokenEmbedding(torch.nn.Module):
    """A text encoder's token embedding with trainable rows for new tokens.

    input_ids (..., L) → (..., L, D): ids below `first_id` read the frozen `base` (num_embeddings, D), ids from
    `first_id` on read `new` (n, D), the only trained weights."""

    def __init__(self, base: torch.nn.Embedding, new: torch.Tensor, first_id: int):
        super().__init__()
        self.base, self.first_id = base.requires_grad_(False), first_id
        self.new = torch.nn.Parameter(new.clone())

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        is_new = (input_ids >= self.first_id).unsqueeze(-1)
        known = self.base(input_ids.clamp(max=self.base.num_embeddings - 1))
        added = torch.nn.functional.embedding((input_ids - self.first_id).clamp(min=0), self.new)
        return torch.where(is_new, added.to(known.dtype), known)


def add_trainable_tokens(tokenizer, text_encoder, words: list[str]) -> NewTokenEmbedding:
    """Add `words` to `tokenizer` as whole tokens and give `text_encoder` a trainable vector for each.

    Each vector starts as the mean of the base's vectors of the pieces the word split into, i.e. at what the
    base read for it (textual inversion starts from a related word's vector). Returns the new embedding module,
    installed as the text encoder's input embeddings."""
    _check_new(tokenizer, words, "--lora-new-tokens")
    base = text_encoder.get_input_embeddings()
    first_id = len(tokenizer)
    if first_id < base.num_embeddings:
        raise ValueError(f"the tokenizer has {first_id} tokens but the text encoder {base.num_embeddings} rows; "
                         f"new tokens need them to agree.")
    with torch.no_grad():
        init = torch.stack([base.weight[tokenizer(word, add_special_tokens=False).input_ids].mean(0)
                            for word in words])
    tokenizer.add_tokens(words)
    ids = tokenizer.convert_tokens_to_ids(words)
    assert ids == list(range(first_id, first_id + len(words))), ids  # add_tokens appends in order
    module = NewTokenEmbedding(base, init.float(), first_id)
    text_encoder.set_input_embeddings(module)
    return module


def trained_vectors(module: NewTokenEmbedding, tokenizer) -> dict[str, torch.Tensor]:
    """{token: (D,) float32} of the trained rows, in id order."""
    tokens = tokenizer.convert_ids_to_tokens(list(range(module.first_id, module.first_id + len(module.new))))
    return {token: row.detach().to("cpu", torch.float32).clone() for token, row in zip(tokens, module.new)}


def save_sidecar(adapter: str | Path, vectors: dict[str, torch.Tensor]) -> Path:
    """Write `<adapter stem>_emb.safetensors` ({"clip_l": (n, D)}, tokens in metadata); return its path."""
    path = sidecar_path(adapter)
    save_file({CLIP_L_KEY: torch.stack(list(vectors.values())).contiguous()}, str(path),
              metadata={"format": "pt", TOKENS_KEY: json.dumps(list(vectors))})
    return path


def bundle_tensors(vectors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The kohya file's extra keys: `bundle_emb.<token>.string_to_param.*` = (1, D), as A1111 reads them."""
    return {f"{BUNDLE_PREFIX}{token}{BUNDLE_SUFFIX}": row[None].contiguous() for token, row in vectors.items()}


def read_vectors(adapter: str | Path) -> dict[str, torch.Tensor]:
    """The new-token vectors that come with an adapter file: bundled in it, or in its `_emb` sidecar; {} if
    none. One-sentence ValueError for a sidecar that does not say its tokens."""
    with safe_open(str(adapter), framework="pt") as handle:
        bundled = {key[len(BUNDLE_PREFIX):-len(BUNDLE_SUFFIX)]: handle.get_tensor(key) for key in handle.keys()
                   if key.startswith(BUNDLE_PREFIX) and key.endswith(BUNDLE_SUFFIX)}
    if bundled:
        return {token: rows.reshape(-1, rows.shape[-1])[0] for token, rows in bundled.items()}
    sidecar = sidecar_path(adapter)
    if not sidecar.is_file():
        return {}
    with safe_open(str(sidecar), framework="pt") as handle:
        tokens = json.loads((handle.metadata() or {}).get(TOKENS_KEY, "null"))
        rows = handle.get_tensor(CLIP_L_KEY) if CLIP_L_KEY in handle.keys() else None
    if not isinstance(tokens, list) or rows is None or len(tokens) != len(rows):
        raise ValueError(f"{sidecar} does not name its tokens ({TOKENS_KEY} metadata) for its {CLIP_L_KEY} rows.")
    return dict(zip(tokens, rows))


@torch.no_grad()
def load_vectors(tokenizer, text_encoder, vectors: dict[str, torch.Tensor], *, source: str) -> None:
    """Add `vectors`' tokens to `tokenizer` and their rows to `text_encoder`, as diffusers'
    `load_textual_inversion` does (resize to len(tokenizer) + n, add each token, write its row)."""
    if not vectors:
        return
    width = text_encoder.get_input_embeddings().weight.shape[-1]
    if any(row.shape[-1] != width for row in vectors.values()):
        raise ValueError(f"{source} does not fit this model: its new-token vectors are not {width}-wide.")
    _check_new(tokenizer, list(vectors), str(source))
    text_encoder.resize_token_embeddings(len(tokenizer) + len(vectors))
    weight = text_encoder.get_input_embeddings().weight
    for token, row in vectors.items():
        tokenizer.add_tokens(token)
        weight[tokenizer.convert_tokens_to_ids(token)] = row.to(weight.dtype)
