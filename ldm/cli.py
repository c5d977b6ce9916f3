"""The one command-line front end: typed dataclass configs → argparse → config → run, one exit status per outcome.

Every command (`ldm-train-vae`, `ldm-train`, `ldm-generate`, `ldm-eval`, `ldm-quickstart`, `ldm-data`, …)
declares a `@dataclass` config whose fields carry a default and `field(metadata={"help": ...})` (or the
shorthand `option(default, help)`), validates it in `__post_init__` with a one-sentence ValueError, and hands it
to `run_command`. Field `max_steps` becomes `--max-steps`; `bool` fields become `--flag / --no-flag`;
`tuple[X, ...]` fields are repeatable (`--lora A --lora B`); `metadata["choices"]` restricts a value;
`metadata["aliases"]` adds short flags (`-n`); `metadata["positional"]`
also accepts the value as an optional positional argument (`ldm-generate "a red circle"` or `--prompt ...`).

Exit statuses, the same for every command:
- 0: success;
- 2 (`USER_ERROR`): a user mistake — a bad flag or value, a missing or unreadable path (argparse's own status for
  a bad flag, so a mistyped flag and a bad value agree); one `error: ...` line, never a traceback;
- 1 (`RUN_FAILED`): the run itself failed although the command was right (a non-finite loss, `RunFailed`);
- 130: Ctrl-C, after the trainers saved the finished step.
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

USER_ERROR = 2  # argparse exits 2 for a bad flag; every other user mistake uses the same status
RUN_FAILED = 1  # the command was right but the run failed (e.g. the loss went non-finite)
_FLAG_SUFFIX = "__flag"  # dest of the `--name` flag of a field that is also positional


class RunFailed(RuntimeError):
    """The command was right but the run failed (a stage of a pipeline of commands, say): exit `RUN_FAILED`."""


def option(default: Any, help: str, *, choices: Sequence[str] | None = None,
           aliases: Sequence[str] = (), positional: bool = False) -> Any:
    """`field(default=default, metadata={"help": help, ...})` for a config dataclass."""
    metadata: dict[str, Any] = {"help": help}
    if choices is not None:
        metadata["choices"] = list(choices)
    if aliases:
        metadata["aliases"] = list(aliases)
    if positional:
        metadata["positional"] = True
    return dataclasses.field(default=default, metadata=metadata)


def _scalar_type(annotation) -> type:
    """str / int / float / bool for `X` or `X | None` / `Optional[X]`."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if args else annotation


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show "(default: X)" only where there is a default worth showing (not for None or "")."""

    def _get_help_string(self, action):
        if action.default in (None, "", False) or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


def build_parser(config_cls: type, *, prog: str | None = None,
                 description: str | None = None) -> argparse.ArgumentParser:
    """An ArgumentParser with one `--option` per dataclass field of `config_cls`."""
    description = description or (config_cls.__doc__ or "").strip().splitlines()[0]
    # No prefix matching: a mistyped or shortened flag is an error, never another flag that shares its start.
    parser = argparse.ArgumentParser(prog=prog, description=description, formatter_class=DefaultsHelpFormatter,
                                     allow_abbrev=False)
    hints = typing.get_type_hints(config_cls)
    for f in dataclasses.fields(config_cls):
        if "help" not in f.metadata:
            raise TypeError(f"config field {config_cls.__name__}.{f.name} has no help text.")
        kind = _scalar_type(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata["help"]
        if typing.get_origin(hints[f.name]) is tuple:  # repeatable: --lora A --lora B → ("A", "B")
            parser.add_argument(flag, *f.metadata.get("aliases", ()), dest=f.name, action="append",
                                type=typing.get_args(hints[f.name])[0], default=None, help=help_text)
        elif f.metadata.get("positional"):
            parser.add_argument(f.name, nargs="?", type=kind, default=None, help=f"{help_text} (or {flag})")
            parser.add_argument(flag, dest=f.name + _FLAG_SUFFIX, metavar=f.name.upper(), type=kind,
                                default=None, help=f"{help_text}, as a flag")
        elif kind is bool:
            parser.add_argument(flag, *f.metadata.get("aliases", ()), dest=f.name,
                                action=argparse.BooleanOptionalAction, default=f.default, help=help_text)
        else:
            parser.add_argument(flag, *f.metadata.get("aliases", ()), dest=f.name, type=kind, default=f.default,
                                choices=f.metadata.get("choices"), help=help_text)
    return parser


def parse_config(config_cls: type[ConfigT], argv: Sequence[str] | None = None, *,
                 prog: str | None = None) -> ConfigT:
    """Parse `argv` (None: sys.argv[1:]) into `config_cls`; its `__post_init__` validates the values.

    argparse's own mistakes (unknown flag, bad type or choice) raise SystemExit(2) after its usage message.
    """
    values = vars(build_parser(config_cls, prog=prog).parse_args(argv))
    for f in dataclasses.fields(config_cls):
        if isinstance(values.get(f.name), list):  # a repeatable option: a tuple, like its default
            values[f.name] = tuple(values[f.name])
        elif values.get(f.name, 0) is None and isinstance(f.default, tuple):
            values[f.name] = f.default
    for name in [key[: -len(_FLAG_SUFFIX)] for key in values if key.endswith(_FLAG_SUFFIX)]:
        as_flag = values.pop(name + _FLAG_SUFFIX)
        if as_flag is not None:
            if values[name] is not None:
                raise ValueError(f"give the {name} once: as an argument or as --{name.replace('_', '-')}, "
                                 "not both.")
            values[name] = as_flag
    return config_cls(**values)


def save_config(config, path: Path | str) -> None:
    """Write a dataclass config as indented JSON (Path values become strings). A config with `chosen_defaults`
    (`ldm.recipe.Choice`s) also saves why each of those values was chosen, under "chosen_defaults"."""
    values = dataclasses.asdict(config)
    chosen = getattr(config, "chosen_defaults", ())
    if chosen:
        values["chosen_defaults"] = {choice.name: choice.why for choice in chosen}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(values, indent=2, default=str) + "\n")


def setup_logging(level: int = logging.INFO) -> None:
    """One format for every command; quiet the libraries' per-file and loading-bar chatter, which would bury
    the one-line errors and our own progress bar."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    logging.basicConfig(level=level, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("accelerate").setLevel(logging.WARNING)
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


def report_user_error(error: BaseException) -> int:
    """Print `error: ...` on one line and return `USER_ERROR`."""
    print(f"error: {error}", file=sys.stderr)
    return USER_ERROR


def run_command(command: Callable[[ConfigT], object], config_cls: type[ConfigT], argv: Sequence[str] | None,
                *, prog: str | None = None) -> int:
    """Parse `argv` into `config_cls`, run `command(config)`, and return the exit status (module docstring).

    A ValueError or OSError (bad value, missing or unwritable path) is a user mistake: one `error: ...` line and
    `USER_ERROR`. A non-finite loss: one line and `RUN_FAILED`. Ctrl-C: one line and 130.
    """
    setup_logging()
    try:
        config = parse_config(config_cls, argv, prog=prog)
    except SystemExit as usage_error:  # argparse already printed its usage line (or --help its text)
        return int(usage_error.code or 0)
    except ValueError as error:
        return report_user_error(error)
    try:
        command(config)
    except (ValueError, OSError) as error:
        return report_user_error(error)
    except (NonFiniteLossError, RunFailed) as error:
        print(f"error: {error}", file=sys.stderr)
        return RUN_FAILED
    except TrainingInterrupted as stopped:
        print(stopped, file=sys.stderr)
        return INTERRUPTED_EXIT_STATUS
    except KeyboardInterrupt:
        print("interrupted.", file=sys.stderr)
        return INTERRUPTED_EXIT_STATUS
    return 0


def run_subcommands(prog: str, commands: dict[str, tuple[type, Callable]], argv: Sequence[str] | None, *,
                    description: str) -> int:
    """`prog COMMAND [options]`: `commands` maps each name to `(config_cls, command)`, run by `run_command`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    names = ", ".join(commands)
    if not argv or argv[0] in ("-h", "--help"):
        stream = sys.stdout if argv else sys.stderr
        print(f"usage: {prog} {{{names}}} [options]\n\n{description}", file=stream)
        for name, (config_cls, _) in commands.items():
            print(f"  {name:10s} {(config_cls.__doc__ or '').strip().splitlines()[0]}", file=stream)
        return 0 if argv else USER_ERROR
    name, *rest = argv
    if name not in commands:
        return report_user_error(ValueError(f"unknown command {name!r}; choose one of: {names}."))
    config_cls, command = commands[name]
    return run_command(command, config_cls, rest, prog=f"{prog} {name}")
