"""How every entry point ends: an error a user can cause is one line, a bug keeps its traceback.

    raise SystemExit(run_main(main, "training.train"))     # a ``python -m`` entry point
    return run_main(lambda: args._run(args), f"minutecast {args.command}", verbose=args.verbose)

:func:`run_main` calls the entry point's function and turns what it raises into an exit status:

* a :class:`~minutecast.errors.MinutecastError` -> ``PROG: message; hint`` on stderr (one line: the error's
  ``hint`` says what to do), exit 1; with ``verbose`` (``minutecast -v``) the traceback follows the line;
* a bad ``MINUTECAST_*`` value (pydantic's ValidationError) -> one line per field naming the variable, exit 1;
* Ctrl-C -> exit 130, no traceback;
* anything else is a bug: it propagates, so Python prints its traceback (exit 1).

A child process (the training run under ``minutecast train``) started with ``MINUTECAST_ERROR_FILE`` set writes
the line there instead of stderr, so the parent reports it once, as its own one line.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import pydantic

from minutecast.errors import MinutecastError

ERROR_FILE_ENV = "MINUTECAST_ERROR_FILE"  # set by a parent that reports its child's error itself


def one_line(exc: MinutecastError) -> str:
    """The error's message and its hint (what to do), on one line."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    hint = getattr(exc, "hint", "")
    return f"{text}; {hint}" if hint and hint not in text else text


def setting_lines(exc: pydantic.ValidationError) -> list[str]:
    """One line per bad field of a Settings class, named by its ``MINUTECAST_*`` variable."""
    out = []
    for err in exc.errors():
        field = "_".join(str(p) for p in err.get("loc", ()))
        out.append(f"MINUTECAST_{field.upper()}: {err.get('msg')}")
    return out


def report(prog: str, lines: list[str]) -> None:
    """Write the error lines to the parent's error file when there is one, else to stderr."""
    target = os.environ.get(ERROR_FILE_ENV)
    if target:
        Path(target).write_text("\n".join(lines) + "\n")
        return
    for line in lines:
        print(f"{prog}: {line}", file=sys.stderr, flush=True)


def run_main(fn: Callable[[], int | None], prog: str, *, verbose: bool = False) -> int:
    """Run an entry point's body; its exit status (see the module docstring)."""
    try:
        return int(fn() or 0)
    except KeyboardInterrupt:
        return 130
    except (MinutecastError, pydantic.ValidationError) as exc:
        if verbose:
            traceback.print_exception(exc)
        report(prog, setting_lines(exc) if isinstance(exc, pydantic.ValidationError) else [one_line(exc)])
        return 1
