"""Command-line configs as typed dataclasses: build an argparse parser from the fields, save them as JSON.

Every field needs a default and `field(metadata={"help": ...})` (or the shorthand `option(default, help)`);
optional `metadata["choices"]` restricts a value. Field `max_steps` becomes `--max-steps`; `bool` fields
become `--flag / --no-flag`. Validation belongs in the dataclass's `__post_init__` (raise a one-sentence
ValueError).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import typing
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

from ldm.training.guards import NonFiniteLossError
from ldm.training.interrupt import INTERRUPTED_EXIT_STATUS, TrainingInterrupted

ConfigT = TypeVar("ConfigT")


def option(default: Any, help: str, *, choices: Sequence[str] | None = None) -> Any:
    """`field(default=default, metadata={"help": help, "choices": choices})` for a config dataclass."""
    metadata = {"help": help} if choices is None else {"help": help, "choices": list(choices)}
    return dataclasses.field(default=default, metadata=metadata)


def _scalar_type(annotation) -> type:
    """str / int / float / bool for `X` or `X | None` / `Optional[X]`."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if args else annotation


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show "(default: X)" only where there is a default worth showing (not for None or "")."""

    def _get_help_string(self, action):
        if action.default in (None, ""):
            return action.help
        return super()._get_help_string(action)


def build_parser(config_cls: type, *, description: str | None = None) -> argparse.ArgumentParser:
    """An ArgumentParser with one `--option` per dataclass field of `config_cls`."""
    description = description or (config_cls.__doc__ or "").strip().splitlines()[0]
    # No prefix matching: a mistyped or shortened flag is an error, never another flag that shares its start.
    parser = argparse.ArgumentParser(description=description, formatter_class=DefaultsHelpFormatter,
                                     allow_abbrev=False)
    hints = typing.get_type_hints(config_cls)
    for f in dataclasses.fields(config_cls):
        if "help" not in f.metadata:
            raise TypeError(f"config field {config_cls.__name__}.{f.name} has no help text.")
        kind = _scalar_type(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        if typing.get_origin(hints[f.name]) is tuple:  # a repeatable option: --lora A --lora B → ("A", "B")
            parser.add_argument(flag, action="append", default=None, help=f.metadata["help"])
            continue
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default,
                                help=f.metadata["help"])
        else:
            parser.add_argument(flag, type=kind, default=f.default, choices=f.metadata.get("choices"),
                                help=f.metadata["help"])
    return parser


def parse_config(config_cls: type[ConfigT], argv: Sequence[str] | None = None) -> ConfigT:
    """Parse `argv` (None: sys.argv[1:]) into `config_cls`; its `__post_init__` validates the values."""
    namespace = build_parser(config_cls).parse_args(argv)
    return config_cls(**vars(namespace))


def save_config(config, path: Path | str) -> None:
    """Write a dataclass config as indented JSON (Path values become strings)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(dataclasses.asdict(config), indent=2, default=str) + "\n")


def run_command(command: Callable[[ConfigT], object], config_cls: type[ConfigT], argv: Sequence[str] | None) -> int:
    """Parse `argv` into `config_cls`, run `command(config)`; a user mistake becomes one `error: ...` line.

    Returns the exit status: 0 on success, 1 for a ValueError or OSError (bad option, missing or unwritable
    path) or a non-finite loss (from `ldm.training.guards`), which all carry a one-sentence message, and 130
    for Ctrl-C (after the trainers saved a checkpoint, `ldm.training.interrupt`), with one line too.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one INFO line per saved file is noise
    try:
        command(parse_config(config_cls, argv))
    except (ValueError, OSError, NonFiniteLossError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except TrainingInterrupted as stopped:
        print(stopped, file=sys.stderr)
        return INTERRUPTED_EXIT_STATUS
    except KeyboardInterrupt:
        print("interrupted.", file=sys.stderr)
        return INTERRUPTED_EXIT_STATUS
    return 0
