"""ldm/stage2.py: caption embeddings against encode_prompt, and the micro-step loss recomputed by hand and
split over processes."""
import pytest
import torch
from tiny_components import tiny_text_encoder, tiny_tokenizer, tiny_unet

from ldm.conditioning import encode_prompt, null_prompt_embeds
from ldm.latent_cache import LatentCache
from ldm.objective import make_noise_scheduler
from ldm.stage2 import CaptionEmbedder, micro_step_loss
from ldm.training.batches import local_slice

CAPTIONS = ["a red circle", "a blue square on the left", "a green triangle", "the right circle",
            "a red square", "a blue circle on the right", "a green square", "the left triangle"]


def test_frozen_caption_embeddings_match_encode_prompt(tmp_path):
    """Cached caption embeddings equal ldm.conditioning.encode_prompt; dropped rows equal the null prompt."""
    tokenizer = tiny_tokenizer(tmp_path)
    text_encoder = tiny_text_encoder(tokenizer)
    captions = ["a red circle", "a blue square", "a red circle", "the left triangle"]
    embedder = CaptionEmbedder(text_encoder, tokenizer, trainable=False, captions=iter(captions))
    assert embedder.table.shape[0] == 3  # one row per unique caption
    keep = torch.tensor([True, False, True])
    with torch.no_grad():
        expected = encode_prompt(text_encoder, tokenizer, [captions[3], "", captions[2]])
        null = null_prompt_embeds(text_encoder, tokenizer)
        unseen = encode_prompt(text_encoder, tokenizer, ["a green square"])
    got = embedder([captions[3], captions[0], captions[2]], keep)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got[1:2], null)
    with torch.no_grad():  # a caption outside the table is encoded on the fly
        torch.testing.assert_close(embedder(["a green square"], torch.tensor([True])), unseen)


@pytest.mark.parametrize("trainable", [False, True])
def test_caption_word_dropout_embeds_the_shortened_captions(tmp_path, trainable):
    """Under word dropout each row is encode_prompt of its caption less the drawn words (the null prompt for
    dropped rows); draws all >= p give the whole captions, as without word dropout."""
    tokenizer = tiny_tokenizer(tmp_path)
    text_encoder = tiny_text_encoder(tokenizer)
    captions = ["a red circle on the left", "a blue square", "a red circle on the left"]
    embedder = CaptionEmbedder(text_encoder, tokenizer, trainable=trainable, captions=captions)
    keep = torch.tensor([True, True, False])
    draws = torch.tensor([[0.9, 0.1, 0.9, 0.9, 0.9, 0.1], [0.1, 0.9, 0.9, 0.9, 0.9, 0.9], [0.1] * 6])
    with torch.no_grad():
        expected = encode_prompt(text_encoder, tokenizer, ["a circle on the", "blue square", ""])
        whole = encode_prompt(text_encoder, tokenizer, captions[:2] + [""])
    torch.testing.assert_close(embedder(captions, keep, draws, 0.5), expected)
    torch.testing.assert_close(embedder(captions, keep, torch.ones(3, 6) * 0.6, 0.5), whole)
    torch.testing.assert_close(embedder(captions, keep), whole)


@pytest.fixture(scope="module")
def step_parts(tmp_path_factory):
    tokenizer = tiny_tokenizer(tmp_path_factory.mktemp("tok"))
    generator = torch.Generator().manual_seed(0)
    cache = LatentCache(mean=torch.randn(8, 4, 8, 8, generator=generator),
                        std=torch.rand(8, 4, 8, 8, generator=generator) * 0.1, captions=CAPTIONS)
    return dict(unet=tiny_unet(), text_encoder=tiny_text_encoder(tokenizer), tokenizer=tokenizer, cache=cache,
                scheduler=make_noise_scheduler(beta_schedule="linear", prediction_type="epsilon",
                                               zero_terminal_snr=False, num_train_timesteps=1000))


def _loss(parts, *, rank=0, world_size=1, p=0.5):
    embedder = CaptionEmbedder(parts["text_encoder"], parts["tokenizer"], trainable=False, captions=CAPTIONS)
    with torch.no_grad():
        return micro_step_loss(unet=parts["unet"], embedder=embedder, cache=parts["cache"],
                               noise_scheduler=parts["scheduler"], indices=torch.tensor([5, 1, 7, 2]),
                               generator=torch.Generator().manual_seed(11), rank=rank, world_size=world_size,
                               scaling_factor=0.5, cond_dropout=p)


def test_micro_step_loss_is_the_epsilon_mse_of_its_draws(step_parts):
    """Recomputed from the same generator: posterior ε, dropout mask, noise, timesteps, in that order."""
    parts, indices = step_parts, torch.tensor([5, 1, 7, 2])
    generator = torch.Generator().manual_seed(11)
    eps = torch.randn(4, 4, 8, 8, generator=generator)
    keep = torch.rand(4, generator=generator) >= 0.5
    noise = torch.randn(4, 4, 8, 8, generator=generator)
    timesteps = torch.randint(0, 1000, (4,), generator=generator)
    cache, scheduler = parts["cache"], parts["scheduler"]
    latents = (cache.mean[indices] + cache.std[indices] * eps) * 0.5
    prompts = [CAPTIONS[i] if k else "" for i, k in zip(indices.tolist(), keep.tolist())]
    with torch.no_grad():
        prompt_embeds = encode_prompt(parts["text_encoder"], parts["tokenizer"], prompts)
        noise_pred = parts["unet"](scheduler.add_noise(latents, noise, timesteps), timesteps, prompt_embeds).sample
    expected = torch.nn.functional.mse_loss(noise_pred, noise)
    torch.testing.assert_close(_loss(parts), expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(_loss(parts, p=0.0), expected)  # the dropout mask mattered here


def test_two_process_slices_average_to_the_one_process_loss(step_parts):
    """Each rank draws for the global batch and keeps its half: the mean of the halves is the whole."""
    halves = [_loss(step_parts, rank=r, world_size=2) for r in (0, 1)]
    torch.testing.assert_close((halves[0] + halves[1]) / 2, _loss(step_parts), rtol=1e-5, atol=1e-6)
    assert local_slice(torch.arange(4), 1, 2).tolist() == [2, 3]
