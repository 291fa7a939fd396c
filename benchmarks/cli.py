"""``minutecast bench``: run every benchmark and write benchmarks/results/latest.json and latest.md.

    minutecast bench                  # full run (under 30 minutes); or `make bench`
    minutecast bench --quick          # small inputs (under 5 minutes); or `make bench-quick`
    minutecast bench --only ingest,e2e --out /tmp/results
    minutecast bench --quick --readme # also regenerate docs/performance.md

Each benchmark also runs alone: ``python -m benchmarks.NAME [--quick]`` (NAME = ingest, state, inference,
e2e, training, api). Targets are goals measured here, never test assertions: the exit status is 0 when every
benchmark ran and emitted its JSON, whether or not its targets were met.

The arguments and the run are :mod:`benchmarks.suite`'s (so ``python -m benchmarks.suite`` is the same command).
"""

from __future__ import annotations

from benchmarks.suite import add_arguments, run

__all__ = ["add_arguments", "run"]
