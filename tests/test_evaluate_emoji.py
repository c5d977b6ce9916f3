"""pipelines/evaluate_emoji.py (`ldm-eval --task emoji`) end to end on a tiny random pipeline folder."""
import json

import numpy as np
import pytest
from diffusers import DDPMScheduler
from PIL import Image

from emoji_font import needs_font
from ldm.data import emoji as emoji_data

pytestmark = [needs_font, pytest.mark.filterwarnings("ignore::UserWarning")]
pytest.importorskip("emoji", reason="the emoji extra is not installed")

from ldm.eval.emoji_reader import EmojiReader, render_glyphs  # noqa: E402
from ldm.eval.plot import PLOT_SIZE  # noqa: E402
from ldm.eval.tone_reader import ToneReader  # noqa: E402
from pipelines import evaluate  # noqa: E402
from pipelines import evaluate_emoji  # noqa: E402
from tiny_components import tiny_pipeline_folder  # noqa: E402

WEIGHTS, SEEDS, PROMPTS, STEPS, VAE_SAMPLES = (0.0, 2.0), 2, 2, 2, 4


@pytest.fixture(scope="module")
def readers():
    glyphs = render_glyphs(32)
    return glyphs, EmojiReader(glyphs), ToneReader(glyphs)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_emoji")
    model = tiny_pipeline_folder(root / "model", scheduler=DDPMScheduler(num_train_timesteps=100))
    (model / "train_config.json").write_text(json.dumps({"data": "emoji:heldouttones=1"}))
    out = root / "out"
    argv = ["--task", "emoji", "--model", str(model), "--out", str(out),
            "--weights", ",".join(f"{w:g}" for w in WEIGHTS), "--seeds-per-prompt", str(SEEDS),
            "--prompts-per-split", str(PROMPTS), "--steps", str(STEPS), "--vae-samples", str(VAE_SAMPLES),
            "--device", "cpu"]
    assert evaluate.main(argv) == 0
    return model, out, json.loads((out / "eval.json").read_text())


def test_eval_json_structure_and_files(evaluated):
    _, out, report = evaluated
    assert report["task"] == "emoji" and report["trained_without_held_out_pairs"] is True
    assert [e["w"] for e in report["sweep"]] == list(WEIGHTS)
    assert [e["guidance_scale"] for e in report["sweep"]] == [w + 1 for w in WEIGHTS]
    for entry in report["sweep"]:
        for split in evaluate_emoji.SPLITS:
            assert entry["adherence"][split]["total"] == PROMPTS * SEEDS
        assert entry["tone"]["held_out"]["total"] == entry["tone"]["seen_tones"]["total"] == PROMPTS * SEEDS
    assert len(report["samples"]) == len(WEIGHTS) * 3 * PROMPTS * SEEDS
    assert report["best"]["w"] in WEIGHTS
    assert report["vae"]["data"] == "emoji" and report["vae"]["images"] == VAE_SAMPLES
    assert set(report["vae"]["readback"]) == set(evaluate_emoji.SPLITS)
    assert report["reader"]["chance"] == pytest.approx(1 / report["reader"]["candidates"])
    assert Image.open(out / "adherence_vs_guidance.png").size == PLOT_SIZE
    for w in WEIGHTS:
        assert (out / f"grid_w{w:g}.png").is_file()
    assert json.loads((out / "eval_config.json").read_text())["task"] == "emoji"


def test_numbers_agree_with_reading_the_saved_images_again(evaluated, readers):
    _, out, report = evaluated
    glyphs, reader, tone_reader = readers
    sequence_of = {p["prompt"]: p["sequence"] for p in report["prompts"]}
    for sample in report["samples"]:
        image = Image.open(out / sample["file"]).convert("RGB")
        assert image.size == (32, 32)
        sequence = sequence_of[sample["prompt"]]
        (reading,) = reader.read([image], [sequence])
        assert (reading["rank"], reading["nearest"]) == (sample["emoji_rank"], sample["nearest"])
        tone = sample["tone"]
        if tone is not None:
            assert tone_reader.read(image, sequence) == sample["tone_read"]
        assert sample["adherent"] == (reading["rank"] == 1 and (tone is None or sample["tone_read"] == tone))
    for entry in report["sweep"]:
        for split in evaluate_emoji.SPLITS:
            flags = [s["adherent"] for s in report["samples"] if s["w"] == entry["w"] and s["split"] == split]
            assert entry["adherence"][split]["rate"] == pytest.approx(sum(flags) / len(flags))


def test_prompt_set_splits(readers):
    """Seen prompts are training names, held-out prompts are held-out pairs, and each seen-tone prompt names
    the same emoji as its held-out twin in another tone."""
    glyphs, _, tone_reader = readers
    prompts = evaluate_emoji.build_emoji_prompts(glyphs, tone_reader, prompts_per_split=12, seed=0)
    train = {c for _, c in emoji_data.EmojiDataset(resolution=16, heldout_tones=True).items}
    by_split = {s: [p for p in prompts if p.split == s] for s in evaluate_emoji.SPLITS}
    assert all(len(v) == 12 for v in by_split.values())
    assert all(p.prompt in train for p in by_split["seen"] + by_split["seen_tones"])
    assert not any(p.prompt in train for p in by_split["held_out"])
    assert len({emoji_data.emoji_group(p.sequence) for p in by_split["seen"]}) == 12
    for held, twin in zip(by_split["held_out"], by_split["seen_tones"]):
        assert emoji_data.base_name(held.prompt) == emoji_data.base_name(twin.prompt)
        assert held.tone != twin.tone and None not in (held.tone, twin.tone)
    assert evaluate_emoji.build_emoji_prompts(glyphs, tone_reader, prompts_per_split=12, seed=0) == prompts


def test_real_glyphs_adhere_and_wrong_ones_do_not(readers):
    """The scoring the sweep applies: a prompt's own real glyph adheres; its seen-tone twin's glyph (same emoji,
    other tone) fails on the tone; another emoji's glyph fails on the emoji."""
    glyphs, reader, tone_reader = readers
    prompts = evaluate_emoji.build_emoji_prompts(glyphs, tone_reader, prompts_per_split=6, seed=1)
    pixels = {s: glyphs.pixels[i] for i, s in enumerate(glyphs.sequences)}
    held = [p for p in prompts if p.split == "held_out"]
    twins = [p for p in prompts if p.split == "seen_tones"]
    for item, twin in zip(held, twins):
        (right,) = evaluate_emoji.read_samples([pixels[item.sequence]], item, reader, tone_reader)
        assert right["adherent"] and right["emoji_right"] and right["tone_right"]
        (other_tone,) = evaluate_emoji.read_samples([pixels[twin.sequence]], item, reader, tone_reader)
        assert other_tone["emoji_right"] and not other_tone["tone_right"] and not other_tone["adherent"]
    grinning = np.asarray(pixels["\U0001f600"])
    (wrong,) = evaluate_emoji.read_samples([grinning], held[0], reader, tone_reader)
    assert not wrong["emoji_right"] and not wrong["adherent"]


def test_simple_is_refused_for_emoji(capsys, tmp_path):
    assert evaluate.main(["--task", "emoji", "--simple", "--model", "x", "--out", str(tmp_path)]) == 2
    assert "--simple applies to --task shapes only" in capsys.readouterr().err
