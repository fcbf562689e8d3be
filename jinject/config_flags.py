"""The `jinject train` options, generated from TrainConfig's fields, and the config built back from them.

Each field is written once, in `jinject.config`, with its help text (and, where it is not `--field-name`, its
flag) in the field's metadata; this module turns every field into one option and the parsed options into a
TrainConfig, so a new field is on the command line without a second definition (as levanter's command line
is derived from its config dataclasses). The option's type follows the field's kind (`config.FIELD_KINDS`):
int/float/str take one value, a boolean is a switch away from its default (`--remat`, `--no-align`), the task
options are repeated `KEY=VALUE`, a tuple of strings takes zero or more values.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from typing import Any

from jinject.config import FIELD_KINDS, TrainConfig

_TYPES = {"int": int, "float": float, "str": str}


def _flag(f: dataclasses.Field) -> str:
    """A field's option: `metadata["flag"]`, else `--field-name`, or `--no-field-name` for a boolean whose
    default is true."""
    name = f.name.replace("_", "-")
    return f.metadata["flag"] or (f"--no-{name}" if f.default is True else f"--{name}")


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One option per TrainConfig field, in field order, each with `dest` = the field's name."""
    for f in dataclasses.fields(TrainConfig):
        meta = f.metadata
        kind, _ = FIELD_KINDS[f.name]
        option = _flag(f)
        spec: dict[str, Any] = {"dest": f.name, "help": meta["help"]}
        if kind == "bool":
            spec["action"] = "store_false" if f.default else "store_true"
        else:
            has_default = f.default is not dataclasses.MISSING and not meta["fallback"]
            spec.update(default=f.default if has_default else None, required=meta["required"])
            if kind == "dict":
                spec["action"] = "append"
            elif kind == "strs":
                spec["nargs"] = "*"
            else:
                spec["type"] = _TYPES[kind]
            if meta["choices"]:
                spec["choices"] = list(meta["choices"])  # shown as {a,b}
            else:  # argparse would name it after `dest`, the field (--max-seq-len TEACHER_MAX_SEQ_LEN)
                spec["metavar"] = meta["metavar"] or option[2:].replace("-", "_").upper()
        parser.add_argument(option, *meta["aliases"], **spec)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of parsed `jinject train` options; TrainConfig checks every value's type and range."""
    values = {}
    for f in dataclasses.fields(TrainConfig):
        value = getattr(args, f.name)
        kind, _ = FIELD_KINDS[f.name]
        if kind == "dict":
            value = parse_task_options(value)
        elif kind == "strs" and value is not None:
            value = tuple(x for x in value if x)  # `--align-exclude` with no value (or '') excludes nothing
        if f.metadata["fallback"]:
            value = value or getattr(args, f.metadata["fallback"])
        values[f.name] = value
    return TrainConfig(**values)


def parse_task_options(items: list[str] | None) -> dict:
    """`KEY=VALUE` strings -> {KEY: value}, values read as JSON where they parse (numbers, booleans); a key
    given twice takes its last value (so a command can be extended with an override)."""
    options = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--task-option expects KEY=VALUE (e.g. max_len=12), got {item!r}")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        if isinstance(parsed, float) and not math.isfinite(parsed):
            raise ValueError(f"--task-option {key}={value} is not a finite number")
        if isinstance(parsed, list | dict) or parsed is None:
            raise ValueError(f"--task-option {key}={value}: a value is a number, true/false or a word, "
                             f"not {type(parsed).__name__ if parsed is not None else 'null'}")
        options[key] = parsed
    return options
