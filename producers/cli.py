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
them, see :class:`producers.replay.Resume`) are skipped, so a killed replay restarts where it stopped;
``--no-resume`` replays from scratch.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
REPLAY_CHUNK = 5000  # bars per piece at --speed 0 when resuming (flush + watermark after each)


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
    r.add_argument("--live-sessions", type=int, default=1, help="--as-if-live: sessions played at pace (default 1)")
    r.add_argument("--lead-days", type=float, default=28.0,
                   help="--as-if-live: the live part starts this many days before now (the budget of a pace "
                        "above real time; bars are never in the future)")
    r.add_argument("--no-resume", action="store_true",
                   help="replay from scratch instead of skipping minutes at or below each ticker's Redis watermark")
    s = p.add_argument_group("synthetic")
    s.add_argument("--tickers-count", type=int, default=500, help="synthetic tickers S00000.. (unless --tickers)")
    s.add_argument("--minutes", type=int, default=390, help="regular-hours minutes ending at the last completed one")
    s.add_argument("--seed", type=int, default=0)
    y = p.add_argument_group("yfinance")
    y.add_argument("--backfill-days", type=float, default=0.0, help="publish the last N days first (at most 29)")
    y.add_argument("--live", action="store_true", help="then poll a few seconds after every minute closes")
    y.add_argument("--prepost", action="store_true", help="include pre- and post-market bars")
    y.add_argument("--no-progress", action="store_true", help="no progress bar on backfill")


def _universe(args: argparse.Namespace) -> list[str] | None:
    from producers import universe

    if args.tickers:
        return universe.from_arg(args.tickers)
    if args.tickers_file:
        return universe.from_file(args.tickers_file)
    if args.source == "yfinance":
        return universe.sp500()
    if args.source == "synthetic":
        from producers.synthetic import synthetic_tickers

        return synthetic_tickers(args.tickers_count)
    return None  # replay: whatever the files hold


def _replay_tickers(path: Path) -> list[str]:
    from producers import replay

    files = replay.list_files(path)
    if len(files) == 1 and path.is_file():
        return sorted(replay.read_file(files[0])["ticker"].unique().tolist())
    return sorted({replay.ticker_of(f) for f in files})


def run_shard(args: argparse.Namespace, tickers: list[str] | None, indices: list[int] | None,
              limit: int | None, throttle_state: tuple[Any, Any] | None = None) -> Any:
    """Run one producer (one process's share of the tickers). Returns its Stats."""
    from minutecast.settings import ProducerSettings
    from producers.publisher import Publisher

    settings = ProducerSettings()
    pub = Publisher(settings)
    pub.install_signal_handlers()
    from minutecast.metrics import serve
    from producers.metrics import registry_for

    # With --processes N each process tries the port; the first gets it, the others log that it is taken.
    serve(settings.metrics_host, settings.metrics_port, registry_for(pub))
    try:
        if args.source == "replay":
            _replay(args, pub, tickers, limit)
        elif args.source == "synthetic":
            _synthetic(args, pub, tickers or [], indices or [], limit)
        else:
            _yfinance(args, pub, tickers or [], settings, throttle_state)
    finally:
        pub.close()
    return pub.stats


def _replay(args: argparse.Namespace, pub: Any, tickers: list[str] | None, limit: int | None) -> None:
    from producers import replay

    if args.path is None:
        from minutecast.errors import ConfigError

        raise ConfigError("--source replay needs --path (a file or a directory)")
    frame = replay.load(args.path, tickers, limit)
    if getattr(args, "as_if_live", False):
        from minutecast.redis import wait_for_redis
        from producers.live import run_live

        run_live(pub, frame, wait_for_redis(pub.s.redis), sessions=args.live_sessions, speed=args.speed,
                 lead_days=args.lead_days, resume=not args.no_resume)
        return
    if args.shift_to_now:
        frame = replay.shift_to_now(frame)
    resume = None
    if not getattr(args, "no_resume", False):
        from minutecast.redis import wait_for_redis

        resume = replay.Resume(wait_for_redis(pub.s.redis), pub.s.namespace, frame["ticker"].unique().tolist())
        before = len(frame)
        frame = resume.skip(frame)
        if before > len(frame):
            log.info("replay: resuming, %d bars at or below the watermarks skipped", before - len(frame))
    log.info("replay: %d bars of %d tickers from %s at speed %s", len(frame), frame["ticker"].nunique(),
             args.path, args.speed or "max")
    # Resume flushes and moves the watermarks after every piece: smaller pieces = fewer re-sent bars after a crash.
    chunk = REPLAY_CHUNK if resume is not None else 100_000
    for piece in replay.paced(frame, args.speed, pub.stop_requested, chunk=chunk):
        failed_before = set(pub.failed_keys)
        pub.publish_frame(piece, "replay")
        if resume is not None:
            resume.commit(pub, piece, failed_before)
        if pub.stop_requested.is_set():
            break


def _synthetic(args: argparse.Namespace, pub: Any, tickers: list[str], indices: list[int],
               limit: int | None) -> None:
    from producers import replay
    from producers.synthetic import Synthetic, regular_minutes

    gen = Synthetic(tickers, indices, args.seed)
    minutes = regular_minutes(args.minutes)
    if limit is not None and tickers:
        minutes = minutes[: math.ceil(limit / len(tickers))]
    origin = (time.monotonic(), int(minutes[0])) if len(minutes) else None
    sent = 0
    for frame in gen.frames(minutes):
        if limit is not None:
            frame = frame.iloc[: max(0, limit - sent)]
        for piece in replay.paced(frame, args.speed, pub.stop_requested, origin=origin):
            sent += pub.publish_frame(piece, "synthetic")
        if pub.stop_requested.is_set() or (limit is not None and sent >= limit):
            break


def _yfinance(args: argparse.Namespace, pub: Any, tickers: list[str], settings: Any,
              throttle_state: tuple[Any, Any] | None) -> None:
    from minutecast.redis import wait_for_redis
    from producers.throttle import Throttle
    from producers.yfinance_source import YFinanceSource

    redis = wait_for_redis(settings.redis)
    throttle = Throttle(settings.yf_min_interval_s, settings.yf_max_backoff_s, settings.yf_max_retries,
                        shared=throttle_state)
    src = YFinanceSource(pub, redis, tickers, throttle=throttle, batch_size=settings.yf_batch_size,
                         prepost=args.prepost)
    if args.backfill_days > 0:
        src.backfill(args.backfill_days, progress=not args.no_progress)
    if args.live:
        src.live(settings.live_delay_s, settings.live_lookback_min)
    elif args.backfill_days <= 0:
        src.poll_once(settings.live_lookback_min)  # neither asked: one poll of the recent minutes


def run(args: argparse.Namespace) -> int:
    from producers.parallel import run_sharded
    from producers.publisher import Stats

    if args.speed is None:
        args.speed = 60.0 if getattr(args, "as_if_live", False) else 0.0
    tickers = _universe(args)
    if args.source == "replay" and args.processes > 1 and tickers is None:
        if args.path is None:
            from minutecast.errors import ConfigError

            raise ConfigError("--source replay needs --path (a file or a directory)")
        tickers = _replay_tickers(args.path)
    t0 = time.monotonic()
    if args.processes <= 1:
        indices = list(range(len(tickers))) if tickers is not None else None
        stats: Stats = run_shard(args, tickers, indices, args.limit)
        errors: list[str] = []
    else:
        stats, errors = run_sharded(args, tickers or [], args.processes)
    dt = time.monotonic() - t0
    print(f"produce {args.source}: {stats.line()} in {dt:.1f} s ({stats.delivered / max(dt, 1e-9):,.0f} bars/s)",
          flush=True)
    for e in errors:
        print(f"produce: {e}", flush=True)
    if errors or not stats.ok:
        why = f"{stats.failed} deliveries failed" if stats.failed else f"{len(errors)} error(s), see above"
        print(f"produce: exit 1: {why}", flush=True)
        return 1
    return 0
