"""The ``minutecast`` command. Each subcommand lives with its component and is imported lazily.

    minutecast --help
    minutecast infra up | down | status

A component exposes ``add_arguments(parser)`` and ``run(args) -> int`` in the module named below;
those modules import heavy libraries (TensorFlow, pyspark, faust) only inside ``run``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

import pydantic

from minutecast.errors import MinutecastError

# name -> (module, one-line help). Modules that are not there yet are left out of --help.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "infra": ("infra.cli", "start, stop and check the local Kafka broker and Redis server"),
    "produce": ("producers.cli", "publish 1-minute bars into Kafka (yfinance, replay, synthetic)"),
    "stream": ("streams.worker_cli", "run the Faust worker keeping 60-minute windows in Redis"),
    "streams": ("streams.admin_cli", "window-state maintenance (rebuild from Kafka)"),
    "infer": ("streams.infer_cli", "run the Spark structured-streaming inference job"),
    "train": ("training.cli", "train, evaluate and promote a model (once or periodically)"),
    "evaluate": ("training.evaluate_cli", "evaluate a model's intervals and median against the baselines on bars"),
    "run": ("minutecast.run", "run the whole pipeline locally (services, producer, workers, trainer)"),
    "forecast": ("minutecast.lookup", "print the latest forecast of tickers from Redis"),
    "watch": ("minutecast.watch", "live table of forecasts from the forecasts topic"),
    "status": ("minutecast.status", "services, consumer lag, rates, model version, dead letters"),
    "report": ("minutecast.report", "print the latest evaluation report"),
    "serve": ("web.cli", "the HTTP API and live dashboard (FastAPI, Server-Sent Events)"),
    "bench": ("benchmarks.cli", "run the benchmark suite and write benchmarks/results"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minutecast", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                continue  # component not built (yet)
            raise
        # Raw formatting: a module docstring opens with its exact launch commands, which must stay one per line.
        p = sub.add_parser(name, help=help_text, description=(module.__doc__ or help_text).strip(),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except MinutecastError as exc:
        print(f"minutecast {args.command}: {exc}", file=sys.stderr)
        return 1
    except pydantic.ValidationError as exc:  # a bad MINUTECAST_* value: one line per field, no traceback
        for err in exc.errors():
            field = "_".join(str(p) for p in err.get("loc", ()))
            print(f"minutecast {args.command}: MINUTECAST_{field.upper()}: {err.get('msg')}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
