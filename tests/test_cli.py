"""ldm/cli.py: dataclass → argparse → dataclass → JSON, and one exit status per outcome."""
import dataclasses
import json
from dataclasses import dataclass, field
from typing import Optional

import pytest

from ldm.cli import (RUN_FAILED, USER_ERROR, RunFailed, build_parser, parse_config, run_command, run_subcommands,
                     save_config)
from ldm.training.guards import NonFiniteLossError
from ldm.training.interrupt import INTERRUPTED_EXIT_STATUS, TrainingInterrupted


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


@dataclass
class PromptConfig:
    """A command with a positional-or-flag value and a short alias."""
    prompt: Optional[str] = field(default=None, metadata={"help": "the prompt", "positional": True})
    num_images: int = field(default=1, metadata={"help": "images", "aliases": ["-n"]})


def test_positional_or_flag_and_aliases():
    assert parse_config(PromptConfig, ["a red circle", "-n", "3"]) == PromptConfig("a red circle", 3)
    assert parse_config(PromptConfig, ["--prompt", "a red circle", "--num-images", "3"]) == PromptConfig(
        "a red circle", 3)
    with pytest.raises(ValueError, match="not both"):
        parse_config(PromptConfig, ["red", "--prompt", "blue"])


def _fails_with(error: BaseException):
    def command(config):
        raise error
    return command


@pytest.mark.parametrize("argv, command, status", [
    (["--max-steps", "0"], None, USER_ERROR),                      # __post_init__ rejects the value
    (["--max-stepz", "3"], None, USER_ERROR),                      # argparse: unknown flag, same status
    (["--schedule", "bogus"], None, USER_ERROR),                   # argparse: not a choice
    ([], _fails_with(FileNotFoundError("data folder x does not exist.")), USER_ERROR),
    ([], _fails_with(ValueError("--lr must be positive.")), USER_ERROR),
    ([], _fails_with(NonFiniteLossError("non-finite loss at step 3.")), RUN_FAILED),
    ([], _fails_with(RunFailed("stage1 failed (exit 1).")), RUN_FAILED),
    ([], _fails_with(TrainingInterrupted("interrupted after step 3.")), INTERRUPTED_EXIT_STATUS),
    (["--help"], None, 0),
])
def test_every_outcome_has_one_exit_status_and_at_most_one_line(argv, command, status, capsys):
    ran = []
    assert run_command(command or ran.append, ToyConfig, argv) == status
    err = capsys.readouterr().err.strip()
    if status in (USER_ERROR, RUN_FAILED) and not argv[:1] == ["--max-stepz"] and "bogus" not in argv:
        assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    assert not ran  # the command never ran on a bad config (nor on --help)


def test_a_good_config_runs_and_exits_zero():
    ran = []
    assert run_command(ran.append, ToyConfig, ["--max-steps", "3"]) == 0
    assert ran == [ToyConfig(max_steps=3)]


def test_subcommands_dispatch_to_their_configs_and_share_the_exit_statuses(capsys):
    ran = []
    commands = {"toy": (ToyConfig, ran.append), "prompt": (PromptConfig, ran.append)}
    assert run_subcommands("tool", commands, ["toy", "--max-steps", "3"], description="d") == 0
    assert run_subcommands("tool", commands, ["prompt", "red", "-n", "2"], description="d") == 0
    assert ran == [ToyConfig(max_steps=3), PromptConfig("red", 2)]
    capsys.readouterr()
    assert run_subcommands("tool", commands, ["toy", "--max-steps", "0"], description="d") == USER_ERROR
    assert run_subcommands("tool", commands, ["nope"], description="d") == USER_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "error: unknown command 'nope'; choose one of: toy, prompt."
    assert run_subcommands("tool", commands, [], description="d") == USER_ERROR  # usage on stderr
    assert run_subcommands("tool", commands, ["--help"], description="d") == 0
    assert "toy" in capsys.readouterr().out and len(ran) == 2
