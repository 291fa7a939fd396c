"""The Faust worker's batch logic, without Faust: decode a batch, write it with one store call, find the
windows to announce (the steps are described in :mod:`streams.faust_app`, which runs this on the stream).

:class:`BatchProcessor` is what the worker, ``minutecast rebuild``'s tests and the fault tests' in-process
reference run share; importing this module needs neither faust nor a broker.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

import redis as redislib
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from minutecast.errors import ConfigError, Rejected
from minutecast.schemas import MAX_PAYLOAD_BYTES, Bar, DeadLetter, WindowReady, parse_bar_record
from minutecast.schemas.bar_wire import SOURCE_KEPT, canonical_pattern
from streams import failures
from streams.window_store import Gap, StateBehind, TickerResult, WindowStore

log = logging.getLogger("streams.faust_app")  # one logger name for the worker's lines


class Metrics:
    """Prometheus metrics of one worker, in their own registry (served on ``metrics_port``)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.bars_in = Counter("minutecast_stream_bars_in", "messages taken from the bar topic", registry=r)
        self.bars_written = Counter("minutecast_stream_bars_written", "valid bars applied to Redis", registry=r)
        self.windows_ready = Counter("minutecast_stream_windows_ready", "window-ready events published",
                                     registry=r)
        self.late = Counter("minutecast_stream_late_dropped", "bars older than the oldest of the retained bars",
                            registry=r)
        self.conflicts = Counter("minutecast_stream_conflicting_duplicates",
                                 "bars for a stored minute with different values (first kept)", registry=r)
        self.deadletters = Counter("minutecast_stream_deadletters", "messages sent to the dead-letter topic",
                                   ["reason"], registry=r)
        self.roundtrips = Counter("minutecast_stream_redis_roundtrips", "Redis round trips", registry=r)
        self.lag = Gauge("minutecast_stream_consumer_lag", "messages behind the high watermark",
                         ["partition"], registry=r)
        self.batch_seconds = Histogram("minutecast_stream_batch_seconds", "time to process one batch",
                                       registry=r, buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
        self.stalled = Gauge("minutecast_stream_stalled", "1 while a batch waits for Redis/Kafka to come back",
                             registry=r)
        self.stalled_seconds = Gauge("minutecast_stream_stalled_seconds", "how long the current stall has lasted",
                                     registry=r)
        self.retries = Counter("minutecast_stream_retries", "retries of a batch step while Redis/Kafka were "
                               "unavailable", ["what"], registry=r)
        self.repairs = Counter("minutecast_stream_repairs", "partitions found behind the bar topic in Redis (it "
                               "lost acknowledged writes) and repaired from Kafka", registry=r)
        self.batch_size = Histogram("minutecast_stream_batch_size", "messages per batch", registry=r,
                                    buckets=(1, 10, 100, 500, 1000, 2000, 5000, 10000))


class Record(Protocol):
    """The parts of a Kafka record the processor reads: Faust's own ``faust.types.Message`` (the worker
    hands those over as they are, no copy per record) and :class:`Message` (tests, rebuild) both have them."""

    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...


@dataclass
class Message:
    """The parts of a Kafka record the processor needs, as a plain value (tests and in-process runs)."""

    key: bytes | None
    value: bytes | None
    topic: str
    partition: int
    offset: int


@dataclass
class Outcome:
    """What one batch produced: records to publish, then announcements to store."""

    ready: list[WindowReady] = field(default_factory=list)
    deadletters: list[DeadLetter] = field(default_factory=list)
    announced: dict[str, tuple[int, str]] = field(default_factory=dict)
    bars: int = 0
    late: int = 0


# The canonical bar JSON our producers write (Bar.to_json, producers.bars.encode), generated from the one
# definition of the wire format (minutecast.schemas.bar_wire, which says what is canonical). Groups: ticker,
# date, hour, minute, open, high, low, close, volume, source, published_at (optional).
_CANONICAL = re.compile(canonical_pattern())
_DAYS: dict[bytes, int] = {}  # "YYYY-MM-DD" -> epoch s of its UTC midnight (a few per backfill day)


def fast_bar(key: bytes | None, value: bytes | None, now: float, allowed: frozenset[str] | None) -> Bar | None:
    """:func:`parse_bar_record` for a record in the canonical form (nearly all of them): the same Bar, at
    under half the cost (7.5 vs 17.9 us a bar measured; no dict, no ISO parser); None when it is not canonical or fails
    :meth:`Bar.validate` (the caller then runs the reference parser, which gives the rejection reason).
    Proven equal to the reference by tests/test_batch_decode.py."""
    if type(value) is not bytes or type(key) is not bytes or len(value) > MAX_PAYLOAD_BYTES:
        return None
    g = _CANONICAL.match(value)
    if g is None or g[1] != key:
        return None
    hour, minute = int(g[3]), int(g[4])
    day = _DAYS.get(g[2])
    if day is None:
        try:
            day = int(datetime.fromisoformat(g[2].decode()).replace(tzinfo=UTC).timestamp())
        except (ValueError, OverflowError):  # no such date: the reference says why
            return None
        if len(_DAYS) < 100_000:  # bounded: ~270 years of dates
            _DAYS[g[2]] = day
    if hour > 23 or minute > 59:
        return None
    pub = g[11]
    bar = Bar(key.decode(), day + 3600 * hour + 60 * minute, float(g[5]), float(g[6]), float(g[7]), float(g[8]),
              float(g[9]), g[10].decode()[:SOURCE_KEPT], None if pub is None else float(pub))
    try:
        return bar.validate(now, allowed)
    except Exception:  # noqa: BLE001 - Rejected, or anything else: the reference parser (in decode's guard) decides
        return None


def decode(messages: Sequence[Record], now: float | None = None,
           allowed: frozenset[str] | None = None) -> tuple[list[Bar], list[int], list[DeadLetter]]:
    """Parse every message: (valid bars, index of each bar's message, dead letters). Never raises.
    ``allowed``: the ticker allowlist (None: any ticker). Canonical records take :func:`fast_bar`, the
    rest the reference :func:`minutecast.schemas.parse_bar_record`."""
    now = time.time() if now is None else now
    bars: list[Bar] = []
    origin: list[int] = []
    dead: list[DeadLetter] = []
    for i, m in enumerate(messages):
        bar = fast_bar(m.key, m.value, now, allowed)
        if bar is not None:
            bars.append(bar)
            origin.append(i)
            continue
        try:
            bars.append(parse_bar_record(m.key, m.value, now, allowed))
            origin.append(i)
        except Rejected as err:
            dead.append(DeadLetter.of(err, m.value, "stream", topic=m.topic, partition=m.partition,
                                      offset=m.offset, key=m.key))
        except Exception as exc:  # noqa: BLE001 - decoders only reject (fuzzed); a bug must still not stall us
            bug = Rejected("wrong_type", f"unparseable: {exc!r}"[:200])
            dead.append(DeadLetter.of(bug, m.value, "stream", topic=m.topic, partition=m.partition,
                                      offset=m.offset, key=m.key))
    return bars, origin, dead


def spans(messages: Sequence[Record]) -> dict[int, tuple[int, int]]:
    """{partition: (first offset, last offset)} of a batch's records."""
    out: dict[int, tuple[int, int]] = {}
    for m in messages:
        a = out.get(m.partition)
        out[m.partition] = (m.offset, m.offset) if a is None else (min(a[0], m.offset), max(a[1], m.offset))
    return out


def readiness(results: dict[str, TickerResult],
              ready_at: float) -> tuple[list[WindowReady], dict[str, tuple[int, str]]]:
    """Window-ready events for tickers whose window at their newest bar (policy v2: ready once they have
    ``WINDOW`` slots; the store script says so, :class:`streams.window_store.Ready`) was not announced yet,
    or was announced at the same minute with another checksum (a bar filled in out of order changed it).
    (Slots only grow with bars, so the newest ready window of a ticker is always the one at its newest bar.)"""
    events: list[WindowReady] = []
    announced: dict[str, tuple[int, str]] = {}
    for ticker, res in results.items():
        rw = res.ready
        if rw is None:
            continue
        t, cs = rw.minute, rw.checksum
        if res.announced is not None and (t < res.announced or (t == res.announced and res.announced_sum == cs)):
            continue
        events.append(WindowReady(ticker, t, cs, rw.published_at, ready_at))
        announced[ticker] = (t, cs)
    return events, announced


# Test-only switch (never set it in a deployment): the worker silently loses the one bar named here, every
# copy of it, as if it had never arrived. The fault tests run a variant with it on to show that their checks
# fail when a single bar is lost. It takes effect only together with DROP_SWITCH_GUARD=1.
DROP_SWITCH = "MINUTECAST_TEST_DROP_BAR"  # "TICKER:MINUTE", MINUTE = the bar's epoch seconds (Bar.minute)
DROP_SWITCH_GUARD = "MINUTECAST_TEST_SWITCHES"


def drop_switch(environ: Mapping[str, str] | None = None) -> tuple[str, int] | None:
    """The (ticker, minute) ``MINUTECAST_TEST_DROP_BAR`` names, or None. Test-only (see :data:`DROP_SWITCH`):
    without ``MINUTECAST_TEST_SWITCHES=1`` as well the switch is refused (an error is logged, nothing is
    dropped); a malformed value with the guard set raises ConfigError."""
    env = os.environ if environ is None else environ
    raw = env.get(DROP_SWITCH, "").strip()
    if not raw:
        return None
    if env.get(DROP_SWITCH_GUARD, "").strip() != "1":
        log.error("%s is set but %s is not 1: the test-only switch is refused, no bar is dropped",
                  DROP_SWITCH, DROP_SWITCH_GUARD)
        return None
    ticker, _, minute = raw.rpartition(":")
    if not ticker or not minute.isdigit():
        raise ConfigError(f"{DROP_SWITCH} must be TICKER:EPOCH_SECONDS, got {raw[:60]!r}")
    log.warning("TEST SWITCH %s: the bar %s at %s will be dropped (every copy)", DROP_SWITCH, ticker, minute)
    return ticker, int(minute)


class BatchProcessor:
    """Decode -> store -> readiness for one batch; publishing is the caller's (Faust or a test)."""

    def __init__(self, store: WindowStore, metrics: Metrics | None = None,
                 allowed: frozenset[str] | None = None, drop: tuple[str, int] | None = None,
                 repair: Callable[[list[Gap]], int] | None = None) -> None:
        self.store = store
        self.metrics = metrics or Metrics()
        self.allowed = allowed  # ticker allowlist (None: any ticker); create_app sets it from the settings
        self.drop = drop  # test-only: the (ticker, minute) to lose (:func:`drop_switch`; create_app sets it)
        # Given (the worker: streams.repair.BarRepair), every store call checks and moves the applied
        # record (ns:stream:applied) and state found behind the topic is repaired before the batch; None
        # (in-process reference runs with made-up offsets): no record kept.
        self.repair = repair

    def process_isolating(self, messages: Sequence[Record]) -> Outcome:
        """:meth:`process`, but a batch the store's script fails on (a poison record, see
        :func:`streams.failures.kind`) is split in halves until the failing record is found; that record
        is dead-lettered as ``store_error`` and the rest applied. Other failures propagate."""
        try:
            return self.process(messages)
        except redislib.ResponseError as exc:
            if failures.kind(exc) != "poison":
                raise
            if len(messages) == 1:
                msg = messages[0]
                log.error("the window store refused offset %s:%s (%s): dead-lettered", msg.partition, msg.offset,
                          str(exc)[:200])
                self._apply([], messages)  # the record counts as applied (checked like any other)
                err = Rejected("store_error", str(exc)[:200])
                self.metrics.bars_in.inc()
                self.metrics.deadletters.labels("store_error").inc()
                return Outcome(deadletters=[DeadLetter.of(err, msg.value, "stream", topic=msg.topic,
                                                          partition=msg.partition, offset=msg.offset, key=msg.key)])
        half = len(messages) // 2
        a, b = self.process_isolating(messages[:half]), self.process_isolating(messages[half:])
        return Outcome(a.ready + b.ready, a.deadletters + b.deadletters, a.announced | b.announced,
                       a.bars + b.bars, a.late + b.late)

    def process(self, messages: Sequence[Record]) -> Outcome:
        m = self.metrics
        bars, origin, dead = decode(messages, allowed=self.allowed)
        if self.drop is not None:  # test-only switch: lose this bar without a trace
            keep = [i for i, b in enumerate(bars) if (b.ticker, b.minute) != self.drop]
            bars, origin = [bars[i] for i in keep], [origin[i] for i in keep]
        rt0 = self.store.roundtrips
        results, late, conflicts = self._apply(bars, messages)
        m.bars_in.inc(len(messages))  # after the write: a retried or split batch is counted once
        ready_at = time.time()  # the Redis write has returned (AOF everysec, see module docstring)
        for i in conflicts:
            msg = messages[origin[i]]
            b = bars[i]
            err = Rejected("conflicting_duplicate", f"{b.ticker} {b.minute} already stored with other values")
            dead.append(DeadLetter.of(err, msg.value, "stream", topic=msg.topic, partition=msg.partition,
                                      offset=msg.offset, key=msg.key))
        ready, announced = readiness(results, ready_at)
        m.bars_written.inc(len(bars) - len(late) - len(conflicts))
        m.late.inc(len(late))
        m.conflicts.inc(len(conflicts))
        m.roundtrips.inc(self.store.roundtrips - rt0)
        for d in dead:
            m.deadletters.labels(d.reason).inc()
        return Outcome(ready, dead, announced, len(bars), len(late))

    def _apply(self, bars: list[Bar], messages: Sequence[Record]) -> tuple[dict[str, TickerResult], list[int],
                                                                           list[int]]:
        """One store call; with a repair, checked against the applied record, repaired once if behind."""
        if self.repair is None:
            return self.store.apply(bars, messages=len(messages))
        offsets = spans(messages)
        try:
            return self.store.apply(bars, messages=len(messages), offsets=offsets)
        except StateBehind as behind:
            self.metrics.repairs.inc(self.repair(behind.gaps))
        return self.store.apply(bars, messages=len(messages), offsets=offsets)

    def commit_announced(self, outcome: Outcome) -> None:
        """After the ready events are delivered: remember them so they are not announced again."""
        rt0 = self.store.roundtrips
        self.store.mark_announced(outcome.announced)
        self.metrics.windows_ready.inc(len(outcome.ready))
        self.metrics.roundtrips.inc(self.store.roundtrips - rt0)
