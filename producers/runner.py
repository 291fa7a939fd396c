"""One producer: a share of the tickers from one source into Kafka (:func:`run_shard`).

``minutecast produce`` (:mod:`producers.cli`) runs one directly, or N of them in processes of their own
(:mod:`producers.parallel`). A replay resumes after its per-ticker watermarks in Redis
(:class:`producers.watermark.Watermarks`, moved only after the broker acked the bars, never past a bar whose
delivery failed: those are re-sent first), so a killed replay restarts where it stopped; ``--no-resume``
replays from scratch (failed deliveries are re-sent at the end). Its Redis client waits out a Redis
outage (:func:`minutecast.redis.connect` with ``wait``): the producer pauses, reports it, and goes on.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from minutecast.errors import ConfigError
from minutecast.metrics import serve
from minutecast.redis import wait_for_redis
from minutecast.settings import ProducerSettings
from producers import replay
from producers.delivery import DeliveryFailed, drain, resend
from producers.live import run_live
from producers.metrics import registry_for
from producers.publisher import Publisher, Stats
from producers.synthetic import Synthetic, regular_minutes
from producers.throttle import Throttle
from producers.watermark import Watermarks
from producers.yfinance_source import YFinanceSource

log = logging.getLogger(__name__)
REPLAY_CHUNK = 5000  # bars per piece at --speed 0 when resuming (flush + watermark after each)
NO_PATH = "--source replay needs --path (a file or a directory)"


@dataclass(frozen=True)
class ProduceOptions:
    """What one producer is asked to do: ``minutecast produce``'s flags, read once by :mod:`producers.cli`
    (whose argument defaults are these). Picklable: ``--processes N`` hands it to each process."""

    source: str  # yfinance | replay | synthetic
    limit: int | None = None  # stop after about this many bars in all (split across processes)
    speed: float = 0.0  # x real time between minutes; 0 = as fast as possible
    # replay
    path: Path | None = None
    shift_to_now: bool = False
    as_if_live: bool = False
    live_sessions: int = 1
    lead_days: float = 28.0
    resume: bool = True  # skip minutes at or below each ticker's Redis watermark
    # synthetic
    seed: int = 0
    minutes: int = 390
    # yfinance
    backfill_days: float = 0.0
    live: bool = False
    prepost: bool = False
    progress: bool = True


def run_shard(options: ProduceOptions, tickers: list[str] | None, indices: list[int] | None,
              limit: int | None, throttle_state: tuple[Any, Any] | None = None) -> Stats:
    """Run one producer (one process's share of the tickers). Returns its Stats."""
    settings = ProducerSettings()
    pub = Publisher(settings)
    pub.install_signal_handlers()
    # With --processes N each process tries the port; the first gets it, the others log that it is taken.
    serve(settings.metrics_host, settings.metrics_port, registry_for(pub))
    try:
        if options.source == "replay":
            _replay(options, pub, tickers, limit)
        elif options.source == "synthetic":
            _synthetic(options, pub, tickers or [], indices or [], limit)
        else:
            _yfinance(options, pub, tickers or [], settings, throttle_state)
    finally:
        pub.close()
    return pub.stats


def _replay(options: ProduceOptions, pub: Publisher, tickers: list[str] | None, limit: int | None) -> None:
    if options.path is None:
        raise ConfigError(NO_PATH)
    frame = replay.load(options.path, tickers, limit)
    if options.as_if_live:
        run_live(pub, frame, wait_for_redis(pub.s.redis, wait=True), sessions=options.live_sessions,
                 speed=options.speed, lead_days=options.lead_days, resume=options.resume)
        return
    if options.shift_to_now:
        frame = replay.shift_to_now(frame)
    resume = None
    if options.resume:
        resume = Watermarks(wait_for_redis(pub.s.redis, wait=True), pub.s.namespace, frame["ticker"].unique().tolist(),
                            label="replay")
        before = len(frame)
        frame = resume.above(frame)
        if before > len(frame):
            log.info("replay: resuming, %d bars at or below the watermarks skipped", before - len(frame))
    log.info("replay: %d bars of %d tickers from %s at speed %s", len(frame), frame["ticker"].nunique(),
             options.path, options.speed or "max")
    # The watermarks move after every piece (flushed first): smaller pieces = fewer re-sent bars after a crash.
    chunk = REPLAY_CHUNK if resume is not None else 100_000
    for piece in replay.paced(frame, options.speed, pub.stop_requested, chunk=chunk):
        if resume is not None:
            resume.send(pub, piece, "replay")  # re-sends failed bars, raises DeliveryFailed if they stay failed
        else:
            pub.publish_frame(piece, "replay")
        if pub.stop_requested.is_set():
            break
    if resume is None and drain(pub) == 0:  # no watermarks: re-send what failed once all reports are in
        left = resend(pub, frame, pub.take_failures(), "replay")
        if not left.empty:
            raise DeliveryFailed(f"{len(left)} bars still undelivered after every re-send")


def _synthetic(options: ProduceOptions, pub: Publisher, tickers: list[str], indices: list[int],
               limit: int | None) -> None:
    gen = Synthetic(tickers, indices, options.seed)
    minutes = regular_minutes(options.minutes)
    if limit is not None and tickers:
        minutes = minutes[: math.ceil(limit / len(tickers))]
    origin = (time.monotonic(), int(minutes[0])) if len(minutes) else None
    sent = 0
    for frame in gen.frames(minutes):
        if limit is not None:
            frame = frame.iloc[: max(0, limit - sent)]
        for piece in replay.paced(frame, options.speed, pub.stop_requested, origin=origin):
            sent += pub.publish_frame(piece, "synthetic")
        if pub.stop_requested.is_set() or (limit is not None and sent >= limit):
            break


def _yfinance(options: ProduceOptions, pub: Publisher, tickers: list[str], settings: ProducerSettings,
              throttle_state: tuple[Any, Any] | None) -> None:
    redis = wait_for_redis(settings.redis, wait=True)
    throttle = Throttle(settings.yf_min_interval_s, settings.yf_max_backoff_s, settings.yf_max_retries,
                        shared=throttle_state)
    src = YFinanceSource(pub, redis, tickers, throttle=throttle, batch_size=settings.yf_batch_size,
                         prepost=options.prepost, settle_s=settings.live_delay_s,
                         lookback_min=settings.live_lookback_min)
    if options.backfill_days > 0:
        src.backfill(options.backfill_days, progress=options.progress)
    if options.live:
        src.live(settings.live_delay_s, settings.live_lookback_min)
    elif options.backfill_days <= 0:
        src.poll_once(settings.live_lookback_min)  # neither asked: one poll of the recent minutes
