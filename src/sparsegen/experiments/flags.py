"""Config dataclasses as command-line flags, declared once (fairseq's pattern).

A config field ``field(default=..., metadata={"help": ..., "choices": ...})`` becomes
the flag ``--field-name`` of every parser that :func:`add_config_flags` is given (the
``sparsegen`` command's and the experiments' own ``main``), and
:func:`config_from_args` applies the flags given over a base config (a preset such as
``--quick``'s).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Collection, Mapping
from dataclasses import Field, fields, replace
from pathlib import Path
from typing import Any, TypeVar, get_args, get_type_hints

__all__ = [
    "CONFIG_READERS", "add_config_flags", "config_from_args", "count", "even_positive_int",
    "finite_number", "learning_rate", "output_file", "positive_int", "rate",
]  # fmt: skip

Config = TypeVar("Config")
Reader = Callable[[str], Any]


def _whole_number(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number; got {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"must be at least {least}; got {value}")
    return value


def positive_int(text: str) -> int:
    return _whole_number(text, 1)


def even_positive_int(text: str) -> int:
    """A positive even number: the units a bidirectional encoder's two directions share."""
    value = positive_int(text)
    if value % 2:
        raise argparse.ArgumentTypeError(f"must be even (two directions share it); got {value}")
    return value


def count(text: str) -> int:
    """A whole number that may be 0 (a count of warm-up steps)."""
    return _whole_number(text, 0)


def finite_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number; got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number; got {value}")
    return value


def rate(text: str) -> float:
    """A dropout rate, in [0, 1)."""
    value = finite_number(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1); got {value}")
    return value


def learning_rate(text: str) -> float:
    value = finite_number(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive finite number; got {value}")
    return value


def output_file(text: str) -> Path:
    """A file to write, in a folder that exists: checked before a run, not after it."""
    path = Path(text)
    if path.is_dir() or not path.parent.is_dir():
        raise argparse.ArgumentTypeError(
            f"{text}: {'a folder' if path.is_dir() else 'its folder does not exist'}; "
            "give a file path in an existing folder"
        )
    return path


# What the config fields' flags read beyond their type: a flag declared once, checked once.
CONFIG_READERS: dict[type | str, Reader] = {
    int: positive_int,
    float: finite_number,
    "dropout": rate,
    "lr": learning_rate,
}


def add_config_flags(
    parser: argparse.ArgumentParser,
    config_class: type,
    *,
    skip: Collection[str] = (),
    presets: Mapping[str, object] | None = None,
    types: Mapping[type | str, Reader] | None = None,
) -> None:
    """Declare ``--field-name`` for each field of the dataclass ``config_class`` not in ``skip``.

    The help is the field's ``help`` metadata with its default and each preset's differing
    value (``presets={"--quick": QUICK}``); the choices are its ``choices`` metadata. A value
    is read by ``types[field name]``, else ``types[field type]``, else by the type itself. A
    flag left out parses as None, so that :func:`config_from_args` keeps the base's value.
    """
    hints = get_type_hints(config_class)
    readers = types or {}
    group = parser.add_argument_group("model, data and training")
    for option in fields(config_class):
        if option.name in skip:
            continue
        kind = _value_type(hints[option.name])
        group.add_argument(
            "--" + option.name.replace("_", "-"),
            type=readers.get(option.name) or readers.get(kind, kind),
            choices=option.metadata.get("choices"),
            help=_config_help(option, presets or {}),
        )


def _value_type(hint: Any) -> Any:
    """A field's type without ``| None``: what its flag reads."""
    kinds = [kind for kind in get_args(hint) if kind is not type(None)]
    return kinds[0] if kinds else hint


def _config_help(option: Field, presets: Mapping[str, object]) -> str:
    notes = [] if option.default is None else [f"default {option.default}"]
    for flag, preset in presets.items():
        if (value := getattr(preset, option.name)) != option.default:
            notes.append(f"{flag} {value}")
    text = option.metadata.get("help", "")
    return (f"{text} ({'; '.join(notes)})" if notes else text).replace("%", "%%")


def config_from_args(
    config_class: type[Config], args: argparse.Namespace, base: Config | None = None
) -> Config:
    """``base`` (default: ``config_class()``) with each config flag given in ``args``.

    Only the flags given replace fields, so a preset such as ``--quick``'s applies under them.
    """
    given = {
        option.name: getattr(args, option.name)
        for option in fields(config_class)
        if getattr(args, option.name, None) is not None
    }
    return replace(config_class() if base is None else base, **given)
