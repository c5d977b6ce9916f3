"""ldm/training/config.py: dataclass → argparse → dataclass → JSON."""
import dataclasses
import json
from dataclasses import dataclass, field
from typing import Optional

import pytest

from ldm.training import build_parser, parse_config, save_config


@dataclass
class ToyConfig:
    """A toy command."""
    max_steps: int = field(default=10, metadata={"help": "steps"})
    lr: float = field(default=1e-4, metadata={"help": "learning rate"})
    schedule: str = field(default="cosine", metadata={"help": "schedule", "choices": ["cosine", "constant"]})
    resume: Optional[str] = field(default=None, metadata={"help": "checkpoint"})
    ema: bool = field(default=False, metadata={"help": "keep an EMA"})

    def __post_init__(self):
        if self.max_steps < 1:
            raise ValueError("--max-steps must be at least 1.")


def test_defaults_and_overrides_round_trip_through_json(tmp_path):
    assert parse_config(ToyConfig, []) == ToyConfig()
    config = parse_config(ToyConfig, ["--max-steps", "3", "--lr", "0.5", "--schedule", "constant",
                                      "--resume", "latest", "--ema"])
    assert config == ToyConfig(max_steps=3, lr=0.5, schedule="constant", resume="latest", ema=True)
    save_config(config, tmp_path / "config.json")
    assert ToyConfig(**json.loads((tmp_path / "config.json").read_text())) == config


def test_validation_and_choices_reject_bad_values():
    with pytest.raises(ValueError, match="max-steps"):
        parse_config(ToyConfig, ["--max-steps", "0"])
    with pytest.raises(SystemExit):
        parse_config(ToyConfig, ["--schedule", "bogus"])


def test_every_field_needs_help():
    Bad = dataclasses.make_dataclass("Bad", [("x", int, field(default=1))])
    with pytest.raises(TypeError, match="help"):
        build_parser(Bad)
