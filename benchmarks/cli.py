"""``minutecast bench``: run every benchmark and write benchmarks/results/latest.json and latest.md.

    minutecast bench                  # full run (under 30 minutes); or `make bench`
    minutecast bench --quick          # small inputs (under 5 minutes); or `make bench-quick`
    minutecast bench --only ingest,e2e --out /tmp/results
    minutecast bench --quick --readme # also regenerate README.md's Performance section

Each benchmark also runs alone: ``python -m benchmarks.NAME [--quick]`` (NAME = ingest, state, inference,
e2e, training, api). Targets are goals measured here, never test assertions: the exit status is 0 when every
benchmark ran and emitted its JSON, whether or not its targets were met.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from benchmarks.suite import BENCHES, DEFAULT_OUT

    parser.add_argument("--quick", action="store_true", help="small inputs: the whole suite in under 5 minutes")
    parser.add_argument("--only", type=lambda s: [x.strip() for x in s.split(",") if x.strip()],
                        help=f"comma-separated subset of: {', '.join(b.name for b in BENCHES)}")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results directory (default %(default)s)")
    parser.add_argument("--readme", action="store_true",
                        help="regenerate README.md's Performance section from the new latest.json")


def run(args: argparse.Namespace) -> int:
    from benchmarks import readme, suite
    from minutecast.errors import ConfigError

    argv = ["minutecast", "bench", *sys.argv[2:]] if sys.argv[1:2] == ["bench"] else None
    try:
        results = suite.run_suite(args.quick, args.only, args.out, command=" ".join(argv) if argv else None)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    print(suite.markdown(results))
    print(f"\nwrote {args.out / 'latest.json'} and {args.out / 'latest.md'}")
    if args.readme:
        path = readme.update(args.out / "latest.json")
        print(f"updated the Performance section of {path}")
    bad = suite.failed(results)
    if bad:
        print(f"benchmarks that did not complete: {', '.join(bad)} (logs under {args.out / 'logs'})",
              file=sys.stderr)
        return 1
    return 0
