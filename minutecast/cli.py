"""The ``minutecast`` command. Each subcommand lives with its component; only the one being run is imported.

    minutecast --help
    minutecast infra up | down | status

A component exposes ``add_arguments(parser)`` and ``run(args) -> int`` in the module named in
:data:`SUBCOMMANDS`. ``minutecast --help`` imports none of them; ``minutecast COMMAND ...`` imports that one
(which keeps TensorFlow, pyspark, faust and yfinance inside ``run``: ruff's PLC0415 allows only those lazy).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from typing import NamedTuple

from minutecast.entry import run_main


class Subcommand(NamedTuple):
    module: str  # exposes add_arguments(parser) and run(args) -> int
    help: str  # one line for `minutecast --help`
    needs_services: bool  # talks to Kafka/Redis: the image's entry point waits for them first


# The one list of subcommands (the image's entry point, docker/entrypoint.py, reads it too).
SUBCOMMANDS: dict[str, Subcommand] = {
    "infra": Subcommand("infra.cli", "start, stop and check the local Kafka broker and Redis server", False),
    "produce": Subcommand("producers.cli", "publish 1-minute bars into Kafka (yfinance, replay, synthetic)", True),
    "stream": Subcommand("streams.worker_cli", "run the Faust worker keeping 60-minute windows in Redis", True),
    "rebuild": Subcommand("streams.rebuild_cli", "rebuild every window in Redis from the bar topic", True),
    "infer": Subcommand("streams.infer_cli", "run the Spark structured-streaming inference job", True),
    "train": Subcommand("training.cli", "train, evaluate and promote a model (once or periodically)", True),
    "evaluate": Subcommand("training.evaluate_cli",
                           "evaluate a model's intervals and median against the baselines on bars", True),
    "run": Subcommand("ops.run", "run the whole pipeline locally (services, producer, workers, trainer)", False),
    "forecast": Subcommand("ops.forecast", "print the latest forecast of tickers from Redis", True),
    "watch": Subcommand("ops.watch", "live table of forecasts from the forecasts topic", True),
    "status": Subcommand("ops.status", "services, consumer lag, rates, model version, dead letters", True),
    "report": Subcommand("ops.report", "print the latest evaluation report", False),
    "serve": Subcommand("web.cli", "the HTTP API and live dashboard (FastAPI, Server-Sent Events)", True),
    "bench": Subcommand("benchmarks.cli", "run the benchmark suite and write benchmarks/results", False),
}


def subcommand(argv: Sequence[str]) -> str | None:
    """The subcommand in ``minutecast`` arguments: the first one not starting with '-'."""
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only ``command``'s module is imported (the others are listed by name and help line)."""
    parser = argparse.ArgumentParser(prog="minutecast", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging, and the traceback behind an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, spec in SUBCOMMANDS.items():
        if name != command:
            sub.add_parser(name, help=spec.help)
            continue
        module = importlib.import_module(spec.module)
        # Raw formatting: a module docstring opens with its exact launch commands, which must stay one per line.
        p = sub.add_parser(name, help=spec.help, description=(module.__doc__ or spec.help).strip(),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    name = subcommand(argv)
    parser = build_parser(name if name in SUBCOMMANDS else None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    # An error a user can cause is one line naming what to do (-v: with its traceback); a bug keeps its traceback.
    return run_main(lambda: args._run(args), f"minutecast {args.command}", verbose=args.verbose)


if __name__ == "__main__":
    sys.exit(main())
