"""pipelines/lora.py: `ldm-lora fuse` and `--lora PATH[:SCALE]` in ldm-generate / ldm-eval (records, errors)."""
import json

import numpy as np
import pytest
from adapters import make_adapter
from PIL import Image
from tiny_components import tiny_pipeline_folder

from ldm.lora import LORA_WEIGHTS_NAME, file_sha256
from ldm.cli import build_parser
from pipelines import evaluate, generate
from pipelines.lora import main as lora_main


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tiny_pipeline_folder(tmp_path_factory.mktemp("base") / "pipe")


@pytest.fixture(scope="module")
def adapters(base, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    (root / "run:1").mkdir()  # a ':' in a folder name must not be read as a scale
    return (make_adapter(base, root / "run:1" / LORA_WEIGHTS_NAME, seed=11),
            make_adapter(base, root / "b.safetensors", seed=12, text_encoder=False))


def generate_images(base, out, *extra):
    assert generate.main(["a red circle", "--model", str(base), "--out", str(out), "--steps", "3", "-n", "2",
                          *map(str, extra)]) == 0
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    return [np.asarray(Image.open(out / row["file"]), dtype=np.int16) for row in rows], rows


def test_fused_folder_generates_what_base_plus_adapters_generates(base, adapters, tmp_path):
    first, second = adapters
    assert lora_main(["fuse", "--model", str(base), "--lora", f"{first.parent}:0.7", "--lora", f"{second}:-0.5",
                      "--out", str(tmp_path / "fused")]) == 0
    fused, _ = generate_images(tmp_path / "fused", tmp_path / "a")
    loaded, rows = generate_images(base, tmp_path / "b", "--lora", f"{first}:0.7", "--lora", f"{second}:-0.5")
    plain, _ = generate_images(base, tmp_path / "c")
    for x, y, z in zip(fused, loaded, plain):
        assert np.abs(x - y).max() <= 1  # 8-bit rounding of the same images
        assert np.abs(y - z).max() > 10  # and the adapters did change them
    expected = [{"path": str(first), "sha256": file_sha256(first), "scale": 0.7},
                {"path": str(second), "sha256": file_sha256(second), "scale": -0.5}]
    assert rows[0]["loras"] == expected
    assert json.loads(Image.open(tmp_path / "b" / rows[0]["file"]).text["loras"]) == expected
    assert json.loads((tmp_path / "fused" / "lora_fuse.json").read_text())["loras"] == expected


@pytest.mark.parametrize("spec, message", [
    ("{first}:strong", "is not a number"),
    ("{first}:inf", "finite"),
    ("{root}/missing.safetensors", "no such LoRA file"),
    ("{root}/notes.safetensors", "is not a LoRA file"),
])
def test_bad_lora_options_are_one_line_errors(base, adapters, tmp_path, capsys, spec, message):
    root = adapters[1].parent
    (root / "notes.safetensors").write_text("not weights")
    spec = spec.format(first=adapters[0], root=root)
    assert generate.main(["a red circle", "--model", str(base), "--out", str(tmp_path), "--steps", "1",
                          "--lora", spec]) == 2
    assert lora_main(["fuse", "--model", str(base), "--out", str(tmp_path / "f"), "--lora", spec]) == 2
    assert evaluate.main(["--model", str(base), "--out", str(tmp_path / "e"), "--lora", spec]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count(message) == 3


def test_eval_lora_option_repeats(adapters):
    args = build_parser(evaluate.EvalConfig).parse_args(["--model", "m", "--lora", f"{adapters[0]}:0.5",
                                                         "--lora", str(adapters[1])])
    assert evaluate.EvalConfig(**vars(args)).lora == (f"{adapters[0]}:0.5", str(adapters[1]))
