"""Command-line flags over a service's pydantic Settings: one table per entry point, one way to apply them.

An entry point declares which of its flags set which settings field (a :class:`Flag` per field), adds them to
its parser with :func:`add_flags` and builds its settings with :func:`settings_from`: the environment
(``MINUTECAST_*``), then each flag given on the command line over its field. Flags default to None (not
given), so ``--epochs 0`` is a value and an absent flag leaves the environment's value (or the default).
A bad value is a :class:`~minutecast.errors.ConfigError` naming the flag (when given) or the variable.

    FLAGS = {"serve_port": Flag("--port", int, "port (default MINUTECAST_SERVE_PORT, 8080)", dest="port")}
    add_flags(parser, FLAGS)
    settings = settings_from(WebSettings, parser.parse_args(), FLAGS)
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import pydantic

from minutecast.errors import ConfigError

S = TypeVar("S", bound=pydantic.BaseModel)


@dataclass(frozen=True)
class Flag:
    flag: str  # the command-line spelling
    type: Callable[[str], Any] | None  # None: a boolean, --x / --no-x
    help: str
    dest: str | None = None  # the parsed attribute (default: the field's name)


def add_flags(p: argparse.ArgumentParser, flags: Mapping[str, Flag], fields: Iterable[str] | None = None,
              env_in_help: bool = False) -> None:
    """A flag per field (``fields``, in this order; default all of ``flags``), default None (not given);
    ``env_in_help``: the help ends with the field's variable, ``(MINUTECAST_<FIELD>)``."""
    for name in flags if fields is None else fields:
        f = flags[name]
        text = (f"{f.help} (MINUTECAST_{name.upper()})" if env_in_help else f.help).replace("%", "%%")
        if f.type is None:
            p.add_argument(f.flag, dest=f.dest or name, action=argparse.BooleanOptionalAction, default=None,
                           help=text)
        else:
            p.add_argument(f.flag, dest=f.dest or name, type=f.type, default=None, help=text)


def given(args: argparse.Namespace, flags: Mapping[str, Flag]) -> dict[str, Any]:
    """Field -> value of each flag given in ``args``."""
    return {name: v for name, f in flags.items() if (v := getattr(args, f.dest or name, None)) is not None}


def settings_from(cls: type[S], args: argparse.Namespace, flags: Mapping[str, Flag]) -> S:
    """``cls()`` from the environment with each flag given in ``args`` over its field; a bad value is one
    ConfigError naming, per error, the flag (when given) or the variable it came from."""
    values = given(args, flags)
    try:
        return cls(**values)
    except pydantic.ValidationError as exc:
        raise ConfigError("; ".join(_message(err, values, flags) for err in exc.errors())) from None


def _message(err: Any, values: dict[str, Any], flags: Mapping[str, Flag]) -> str:
    msg = str(err["msg"]).removeprefix("Value error, ")
    if not err["loc"]:  # a check across fields: its message names them
        return msg
    field = "_".join(str(part) for part in err["loc"])
    origin = f"{flags[field].flag} {values[field]}" if field in values else f"MINUTECAST_{field.upper()}"
    return f"{origin}: {msg}"
