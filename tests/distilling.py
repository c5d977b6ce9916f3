"""The tiny teacher and helpers that the distillation tests share (test_distill_ldm, test_distill_ldm_lora)."""
import json
from pathlib import Path

from ldm.objective import make_noise_scheduler
from pipelines.folder import save_pipeline_folder
from tiny_components import tiny_text_encoder, tiny_tokenizer, tiny_unet, tiny_vae

REPO = Path(__file__).resolve().parents[1]


def make_teacher(root: Path) -> Path:
    """A tiny v-prediction teacher folder whose train_config.json names 16 shapes images at 32 px."""
    tokenizer = tiny_tokenizer(root / "tokenizer_src")
    save_pipeline_folder(root / "teacher", vae=tiny_vae(), text_encoder=tiny_text_encoder(tokenizer),
                         tokenizer=tokenizer, unet=tiny_unet(),
                         scheduler=make_noise_scheduler(prediction_type="v_prediction"))
    config = {"data": "shapes", "data_size": 16, "caption_column": "text", "resolution": 32}
    (root / "teacher" / "train_config.json").write_text(json.dumps(config))
    return root / "teacher"


def distill_args(teacher, out, *extra) -> list[str]:
    return ["--teacher", str(teacher), "--output-dir", str(out), "--batch-size", "4", "--solver-steps", "10",
            "--warmup-steps", "1", "--lr", "1e-3", *extra]


def error_lines(stderr: str) -> list[str]:
    assert "Traceback" not in stderr
    return [line for line in stderr.splitlines() if line.startswith("error: ")]
