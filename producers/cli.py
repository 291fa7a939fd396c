"""`minutecast produce`: publish 1-minute bars into Kafka (key = ticker, value = Bar JSON).

    minutecast produce --source replay --path ../shared/data/bars-1m --speed 0          # as fast as possible
    minutecast produce --source replay --path ../shared/data/bars-1m --speed 60 --shift-to-now
    minutecast produce --source replay --path ../shared/data/bars-1m --as-if-live --speed 60   # what `make run` runs
    minutecast produce --source synthetic --tickers-count 5000 --minutes 390 --seed 7 --processes 2
    minutecast produce --source yfinance --backfill-days 7 --live                       # S&P 500
    minutecast produce --source yfinance --tickers AAPL,MSFT --live --processes 2

SIGINT/SIGTERM stop the source, flush the producer and print sent / delivered / failed. The exit code
is 1 when any delivery failed (or the broker is unreachable at start), 0 otherwise.

A replay resumes: bars at or below each ticker's watermark in Redis (moved only after the broker acked
them, see :mod:`producers.watermark`) are skipped, so a killed replay restarts where it stopped;
``--no-resume`` replays from scratch. One producer is :func:`producers.runner.run_shard`; ``--processes N``
runs N of them (:mod:`producers.parallel`).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from minutecast.errors import ConfigError
from producers import replay, universe
from producers.parallel import run_sharded
from producers.publisher import Stats
from producers.runner import NO_PATH, ProduceOptions, run_shard
from producers.synthetic import synthetic_tickers

D = ProduceOptions  # its field defaults are the flags' defaults


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", choices=["yfinance", "replay", "synthetic"], required=True)
    p.add_argument("--tickers", help="comma-separated tickers (default: the S&P 500 list; replay: all files)")
    p.add_argument("--tickers-file", type=Path, help="file with one ticker per line")
    p.add_argument("--processes", type=int, default=1, help="producer processes, each taking a share of the tickers")
    p.add_argument("--limit", type=int, help="stop after about this many bars (split across processes)")
    r = p.add_argument_group("replay")
    r.add_argument("--path", type=Path, help="a CSV/.csv.gz/Parquet file or a directory of <TICKER>.csv.gz")
    r.add_argument("--speed", type=float, default=None,
                   help="x real time between minutes; 0 = as fast as possible (default; --as-if-live: 60, one "
                        "market minute per second)")
    r.add_argument("--shift-to-now", action="store_true",
                   help="move all timestamps by whole minutes so the last bar is the last completed minute")
    r.add_argument("--as-if-live", action="store_true",
                   help="history fast, then the last --live-sessions at --speed shifted towards now, looping "
                        "forward in time until stopped (see producers/live.py)")
    r.add_argument("--live-sessions", type=int, default=D.live_sessions,
                   help="--as-if-live: sessions played at pace (default 1)")
    r.add_argument("--lead-days", type=float, default=D.lead_days,
                   help="--as-if-live: the live part starts this many days before now (the budget of a pace "
                        "above real time; bars are never in the future)")
    r.add_argument("--no-resume", action="store_true",
                   help="replay from scratch instead of skipping minutes at or below each ticker's Redis watermark")
    s = p.add_argument_group("synthetic")
    s.add_argument("--tickers-count", type=int, default=500, help="synthetic tickers S00000.. (unless --tickers)")
    s.add_argument("--minutes", type=int, default=D.minutes,
                   help="regular-hours minutes ending at the last completed one")
    s.add_argument("--seed", type=int, default=D.seed)
    y = p.add_argument_group("yfinance")
    y.add_argument("--backfill-days", type=float, default=D.backfill_days,
                   help="publish the last N days first (at most 29)")
    y.add_argument("--live", action="store_true", help="then poll a few seconds after every minute closes")
    y.add_argument("--prepost", action="store_true", help="include pre- and post-market bars")
    y.add_argument("--no-progress", action="store_true", help="no progress bar on backfill")


def _universe(args: argparse.Namespace) -> list[str] | None:
    if args.tickers:
        return universe.from_arg(args.tickers)
    if args.tickers_file:
        return universe.from_file(args.tickers_file)
    if args.source == "yfinance":
        return universe.sp500()
    if args.source == "synthetic":
        return synthetic_tickers(args.tickers_count)
    return None  # replay: whatever the files hold


def _replay_tickers(path: Path) -> list[str]:
    files = replay.list_files(path)
    if len(files) == 1 and path.is_file():
        return sorted(replay.read_file(files[0])["ticker"].unique().tolist())
    return sorted({replay.ticker_of(f) for f in files})


def options_from(args: argparse.Namespace) -> ProduceOptions:
    """The flags as the producers take them (once, here); ``--speed`` defaults to 60 with ``--as-if-live``."""
    speed = args.speed if args.speed is not None else (60.0 if args.as_if_live else 0.0)
    return ProduceOptions(source=args.source, limit=args.limit, speed=speed, path=args.path,
                          shift_to_now=args.shift_to_now, as_if_live=args.as_if_live,
                          live_sessions=args.live_sessions, lead_days=args.lead_days, resume=not args.no_resume,
                          seed=args.seed, minutes=args.minutes, backfill_days=args.backfill_days, live=args.live,
                          prepost=args.prepost, progress=not args.no_progress)


def run(args: argparse.Namespace) -> int:
    options = options_from(args)
    tickers = _universe(args)
    if options.source == "replay" and args.processes > 1 and tickers is None:
        if options.path is None:
            raise ConfigError(NO_PATH)
        tickers = _replay_tickers(options.path)
    t0 = time.monotonic()
    if args.processes <= 1:
        indices = list(range(len(tickers))) if tickers is not None else None
        stats: Stats = run_shard(options, tickers, indices, options.limit)
        errors: list[str] = []
    else:
        stats, errors = run_sharded(options, tickers or [], args.processes)
    dt = time.monotonic() - t0
    print(f"produce {options.source}: {stats.line()} in {dt:.1f} s ({stats.delivered / max(dt, 1e-9):,.0f} bars/s)",
          flush=True)
    for e in errors:
        print(f"produce: {e}", flush=True)
    if errors or not stats.ok:
        why = f"{stats.failed} deliveries failed" if stats.failed else f"{len(errors)} error(s), see above"
        print(f"produce: exit 1: {why}", flush=True)
        return 1
    return 0
